"""Real Kafka-protocol brokers for tests: import the fixtures into a test module or conftest.

    from kafka_fixtures import kafka_broker, consume_all   # tests/ is on sys.path under pytest

`kafka_broker` is an in-memory Tansu (fast, loses data when stopped); `durable_kafka_broker`
stores into an S3 bucket served by moto on 127.0.0.1, so it can be stopped and restarted
mid-test without losing what it acknowledged.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord

from asr_stream.devtools.local_broker import LOCALHOST, LocalBroker, free_tcp_port

# Tansu waits for connected clients before it exits on SIGTERM; tests close theirs first, so a
# short deadline only matters when a test failed half-way.
STOP_DEADLINE_S = 3.0


@pytest.fixture
def kafka_broker() -> Iterator[LocalBroker]:
    broker = LocalBroker()
    broker.start()
    try:
        yield broker
    finally:
        broker.stop(timeout_s=STOP_DEADLINE_S)


@pytest.fixture
def durable_kafka_broker() -> Iterator[LocalBroker]:
    pytest.importorskip("moto.server")
    with s3_backed_broker() as broker:
        yield broker


@contextmanager
def s3_backed_broker() -> Iterator[LocalBroker]:
    """A started Tansu storing into a bucket of its own on a moto S3 server, both on 127.0.0.1
    (also for bench/broker_crash.py)."""
    import boto3
    from moto.server import ThreadedMotoServer

    s3 = ThreadedMotoServer(ip_address=LOCALHOST, port=free_tcp_port(), verbose=False)
    s3.start()
    # moto keeps its S3 state per process, not per server: each broker gets a bucket of its own.
    bucket = f"tansu-{uuid.uuid4().hex[:8]}"
    try:
        host, port = s3.get_host_and_port()
        credentials = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "eu-west-2"}
        endpoint = f"http://{host}:{port}"
        boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id="test",
            aws_secret_access_key="test",
            region_name="eu-west-2",
        ).create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "eu-west-2"})
        broker = LocalBroker(storage_url=f"s3://{bucket}/", env=credentials | {"AWS_ENDPOINT": endpoint, "AWS_ALLOW_HTTP": "true"})
        broker.start()
        try:
            yield broker
        finally:
            broker.stop(timeout_s=STOP_DEADLINE_S)
    finally:
        s3.stop()


@pytest.fixture
def topic_name() -> str:
    return f"transcripts-{uuid.uuid4().hex[:8]}"


def consume_all(
    bootstrap_servers: str,
    topic: str,
    expected: int = 0,
    timeout_s: float = 20.0,
    done: Callable[[list[ConsumerRecord]], bool] | None = None,
) -> list[ConsumerRecord]:
    """Read a topic from the beginning until `expected` records arrived (or `done(records)` holds)
    or the time is up.

    Partitions are assigned by hand (no consumer group): Tansu's group join is slow and its
    describe_groups fails, and a test has no use for either. Reading a little past the end
    lets a duplicate show up instead of hiding behind the count.
    """
    finished = done or (lambda records: len(records) >= expected)
    consumer = KafkaConsumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False, request_timeout_ms=5000)
    try:
        deadline = time.monotonic() + timeout_s
        partitions: set[int] | None = None
        while not partitions and time.monotonic() < deadline:
            partitions = consumer.partitions_for_topic(topic)
            time.sleep(0.05)
        assert partitions, f"topic {topic} never appeared"
        consumer.assign([TopicPartition(topic, partition) for partition in sorted(partitions)])
        consumer.seek_to_beginning()
        records: list[ConsumerRecord] = []
        settle_until = float("inf")
        while time.monotonic() < min(deadline, settle_until):
            for batch in consumer.poll(timeout_ms=200).values():
                records.extend(batch)
            if finished(records) and settle_until == float("inf"):
                settle_until = time.monotonic() + 0.5
        return records
    finally:
        consumer.close()
