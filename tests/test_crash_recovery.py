"""A daemon killed mid-call (SIGKILL, as the OOM killer does) and started again on the same spool.

Issue 11: consumers saw `call.started` without `call.ended`, forever. Everything is real: SIPp
streams speech into `asr-stream serve` (a subprocess), the broker (Tansu on S3 storage, so it
can be stopped without losing what it acknowledged) goes away mid-call so that finals pile up in
the spool, the daemon is killed, the broker comes back, the daemon is started again.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
import yaml
from kafka_fixtures import consume_all, durable_kafka_broker, topic_name  # noqa: F401 (fixtures)
from test_daemon_e2e import REPO, clip, consume_calls, daemon_config, without_redeliveries

from asr_stream.devtools.local_broker import LocalBroker, free_tcp_port
from asr_stream.devtools.sipp import place_call
from asr_stream.sinks.journal import JOURNAL_NAME, OpenCallJournal
from asr_stream.sinks.spool import Spool, read_frames

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def long_speech(tmp_path: Path) -> Path:
    """Three clips back to back (about 40 s): the call must outlive the whole scenario."""
    parts = [
        soundfile.read(clip(name)[0], dtype="float32")
        for name in ("en8k_asterisk_demo-moreinfo", "en8k_asterisk_conf-usermenu", "en8k_asterisk_vm-opts-full")
    ]
    assert {rate for _, rate in parts} == {16000}
    path = tmp_path / "long.wav"
    soundfile.write(path, np.concatenate([samples for samples, _ in parts]), 16000)
    return path


class Serve:
    """`asr-stream serve` as a subprocess, its log in a file (a pipe nobody reads could block it)."""

    def __init__(self, config: Path, log: Path) -> None:
        self.log = log
        with log.open("a") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "asr_stream.cli", "serve", "--config", str(config)],
                cwd=REPO,
                env=os.environ | {"PYTHONUNBUFFERED": "1"},
                stderr=stderr,
            )

    def wait_ready(self, timeout_s: float = 90) -> None:
        deadline = time.monotonic() + timeout_s
        while "asr-stream ready" not in self.log.read_text(errors="replace"):
            assert self.process.poll() is None, f"serve exited: {self.log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, "serve did not get ready"
            time.sleep(0.1)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=60)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()


def spooled_events(spool_dir: Path) -> list[dict]:
    """What the spool holds right now, read without touching it (the daemon is still writing)."""
    events = []
    for segment in sorted(spool_dir.glob("*.seg")):
        with segment.open("rb") as file:
            events += [json.loads(record.value) for record, _ in read_frames(file, 0)]
    return events


def finals_of(events: list[dict], call_id: str) -> set[str]:
    return {e["segment_id"] for e in events if e["event"] == "segment.final" and e["call_id"] == call_id}


async def wait_until(condition, timeout_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not await asyncio.to_thread(condition):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)


async def test_sigkill_mid_call_then_restart_ends_the_call_lost_with_every_kept_final(
    tmp_path: Path, durable_kafka_broker: LocalBroker, topic_name: str
) -> None:
    bootstrap = durable_kafka_broker.bootstrap_servers
    config = daemon_config(tmp_path, bootstrap, topic_name, kafka={"request_timeout_ms": 1000, "delivery_timeout_ms": 2000})
    config["sip"]["listen"] = f"127.0.0.1:{free_tcp_port()}"
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    spool_dir = Path(config["kafka"]["spool_dir"])

    first = Serve(config_path, tmp_path / "first.log")
    call = None
    try:
        await asyncio.to_thread(first.wait_ready)
        call = asyncio.create_task(place_call(config["sip"]["listen"], long_speech(tmp_path), tmp_path / "call"))

        def first_final_acknowledged() -> list[dict]:
            records = consume_all(bootstrap, topic_name, timeout_s=40, done=lambda rs: any(b'"segment.final"' in r.value for r in rs))
            return [json.loads(record.value) for record in records]

        acknowledged = await asyncio.to_thread(first_final_acknowledged)
        [call_id] = {e["call_id"] for e in acknowledged}
        acknowledged_finals = finals_of(acknowledged, call_id)
        assert acknowledged_finals, "no final was acknowledged before the outage"

        await asyncio.to_thread(durable_kafka_broker.stop, 0.5)
        await wait_until(lambda: finals_of(spooled_events(spool_dir), call_id), 40, "a final to be spooled during the outage")
        assert first.stop(signal.SIGKILL) == -signal.SIGKILL
        assert not call.done(), "the call must still be up when the daemon is killed"
    finally:
        if call is not None:
            call.cancel()
            await asyncio.gather(call, return_exceptions=True)
        first.stop(signal.SIGKILL)
    spooled_finals = finals_of([json.loads(record.value) for record in Spool(spool_dir).peek(100_000)], call_id)
    assert spooled_finals

    await asyncio.to_thread(durable_kafka_broker.start)
    second = Serve(config_path, tmp_path / "second.log")
    try:
        await asyncio.to_thread(second.wait_ready)
        delivered = await asyncio.to_thread(consume_calls, bootstrap, topic_name, 1, 60)  # validated against the schema
    finally:
        assert second.stop() == 0
    assert "1 calls were left open by the previous run" in (tmp_path / "second.log").read_text()

    events, _ = without_redeliveries(delivered)  # the documented dedupe rule
    mine = [e for e in events if e["call_id"] == call_id]
    assert [e["event"] for e in mine].count("call.started") == 1 and mine[0]["event"] == "call.started"
    ended = mine[-1]
    assert (ended["event"], ended["end_reason"]) == ("call.ended", "lost")
    assert [e["event"] for e in mine].count("call.ended") == 1
    finals = [e for e in mine if e["event"] == "segment.final"]
    assert len({f["segment_id"] for f in finals}) == len(finals), "a final arrived twice with different content"
    assert acknowledged_finals | spooled_finals <= {f["segment_id"] for f in finals}, "a final kept before the crash is missing"
    # final_segments counts what the journal saw kept: at least that many arrive (docs/events.md).
    assert 0 < ended["final_segments"] <= len(finals) <= ended["final_segments"] + 1
    assert ended["duration_ms"] == max(f["end_ms"] for f in finals) or len(finals) == ended["final_segments"] + 1
    assert OpenCallJournal(spool_dir / JOURNAL_NAME).open() == [], "the lost call stays open in the journal"


def test_an_unusable_spool_directory_is_one_line_and_exit_2(tmp_path: Path) -> None:
    """The journal opens at start, in kafka.spool_dir: a path that cannot be a directory is an operator mistake."""
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    config = daemon_config(tmp_path, "127.0.0.1:9", "unused")
    config["kafka"]["spool_dir"] = str(blocker / "spool")
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    serve = subprocess.run(
        [sys.executable, "-m", "asr_stream.cli", "serve", "--config", str(config_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert serve.returncode == 2 and "Traceback" not in serve.stderr, serve.stderr
    [line] = [line for line in serve.stderr.splitlines() if "open-calls journal" in line]
    assert str(blocker) in line
