"""The daemon's admission hook under a retry storm: refusals are answered, their log lines throttled.

Issue 11: every refused INVITE was a WARNING line of its own, so a gateway retrying against a
saturated (or still starting) node wrote a line per attempt, with the peer's Call-ID in full.
"""

from __future__ import annotations

import logging

import pytest

from asr_stream.app.config import load_config
from asr_stream.app.daemon import Daemon
from asr_stream.ingest.types import CallInfo, ChannelInfo, Party


def invite(number: int, peer: str, call_id_length: int = 40) -> CallInfo:
    return CallInfo(
        call_id=f"{number}-".ljust(call_id_length, "x"),
        caller=Party("sip:caller@gw.example"),
        callee=Party("sip:hotline@asr.example"),
        channels=(ChannelInfo(index=0, label="caller", codec="PCMU", clock_rate=8000),),
        source="sip",
        peer=(peer, 5060),
    )


def test_refusals_from_one_gateway_are_one_line_with_the_call_id_clipped(caplog: pytest.LogCaptureFixture) -> None:
    daemon = Daemon(load_config(None, environ={}))  # not started: it refuses every call
    with caplog.at_level(logging.WARNING, logger="asr_stream.app.daemon"):
        retry_afters = [daemon._admit(invite(number, "10.0.0.1", call_id_length=30_000)) for number in range(200)]
        daemon._admit(invite(0, "10.0.0.2"))  # another gateway gets its own line
    assert retry_afters == [daemon.config.settings.sip.retry_after_s] * 200
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 2, lines
    assert "10.0.0.1" in lines[0] and "10.0.0.2" in lines[1]
    assert all(len(line) < 400 for line in lines)
