"""The product as its users meet it: SIPp calls in, ordered transcript events out on Kafka.

Everything is real: the Tansu broker, SIPp streaming G.711 RTP of shared speech clips, Silero
VAD, Whisper tiny.en on ONNX Runtime, the daemon in this process (or as a subprocess, for
SIGTERM). Expectations follow docs/events.md.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import soundfile
import yaml
from kafka_fixtures import consume_all, durable_kafka_broker, kafka_broker, topic_name  # noqa: F401 (fixtures)

from asr_stream.app.config import load_config, split_hostport
from asr_stream.app.daemon import Daemon, ListenError
from asr_stream.devtools.local_broker import LocalBroker, free_tcp_port
from asr_stream.devtools.scoring import corpus_wer
from asr_stream.devtools.sipp import place_call
from asr_stream.transcript.events import load_schema

REPO = Path(__file__).resolve().parents[1]
SPEECH = REPO.parent / "shared" / "speech"
pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def clip(clip_id: str) -> tuple[Path, str]:
    rows = (json.loads(line) for line in (SPEECH / "manifest.jsonl").read_text().splitlines())
    row = next(r for r in rows if r["id"] == clip_id)
    return SPEECH / row["path_wav16k"], row["text"]


def daemon_config(tmp_path: Path, bootstrap: str, topic: str, **overrides: object) -> dict:
    port = free_tcp_port()
    config = {
        "sip": {"listen": "127.0.0.1:0"},
        "rtp": {"port_range": [port - port % 2, port - port % 2 + 200], "bind": "127.0.0.1"},
        "http": {"listen": f"127.0.0.1:{free_tcp_port()}"},
        "kafka": {"bootstrap_servers": bootstrap, "topic": topic, "spool_dir": str(tmp_path / "spool")},
        "model": "whisper-tiny.en",
        "engines_dir": str(REPO / "engines"),
    }
    for section, values in overrides.items():
        config[section] = {**config.get(section, {}), **values} if isinstance(values, dict) else values
    return config


async def running_daemon(tmp_path: Path, bootstrap: str, topic: str, publish_hooks=(), **overrides: object) -> Daemon:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(daemon_config(tmp_path, bootstrap, topic, **overrides)))
    daemon = Daemon(load_config(path, environ={}), publish_hooks=publish_hooks)
    await daemon.start()
    return daemon


def consume_calls(bootstrap: str, topic: str, calls: int, timeout_s: float = 60) -> list[dict]:
    """Every event of the topic until `calls` call.ended arrived, each checked against the schema."""

    def all_ended(records) -> bool:
        return sum(json.loads(record.value)["event"] == "call.ended" for record in records) >= calls

    events = [json.loads(record.value) for record in consume_all(bootstrap, topic, timeout_s=timeout_s, done=all_ended)]
    schema = load_schema()
    for event in events:
        jsonschema.validate(event, schema)
    return events


def assert_call_lifecycle(events: list[dict], call_id: str) -> list[dict]:
    """The call's events in order: started, segment events, ended. Returns its finals."""
    mine = [e for e in events if e["call_id"] == call_id]
    assert mine[0]["event"] == "call.started" and mine[-1]["event"] == "call.ended", [e["event"] for e in mine]
    assert all(e["event"].startswith("segment.") for e in mine[1:-1])
    finals = [e for e in mine if e["event"] == "segment.final"]
    assert len({f["segment_id"] for f in finals}) == len(finals), "a final was repeated"
    assert mine[-1]["final_segments"] == len(finals)
    indices = [int(f["segment_id"].rsplit("/", 1)[1]) for f in finals]
    assert indices == sorted(indices), "finals out of segment order"
    for final in finals:  # every partial of a segment comes before its final, with lower revisions
        partials = [e for e in mine if e["event"] == "segment.partial" and e["segment_id"] == final["segment_id"]]
        assert [p["revision"] for p in partials] == list(range(len(partials)))
        assert final["revision"] == len(partials)
        assert mine.index(final) > max((mine.index(p) for p in partials), default=-1)
    return finals


def without_redeliveries(events: list[dict]) -> tuple[list[dict], int]:
    """Apply the consumer rule of docs/events.md: a record whose identity was seen is a redelivery.

    Identity: (segment_id, revision) for segment events, (call_id, event) for call events. A
    redelivery must be identical to the first copy. Returns (first copies in order, redeliveries).
    """
    first: dict[tuple, dict] = {}
    unique = []
    for event in events:
        identity = (event["segment_id"], event["revision"]) if event["segment_id"] else (event["call_id"], event["event"])
        if identity in first:
            assert event == first[identity], f"two different records share the identity {identity}"
            continue
        first[identity] = event
        unique.append(event)
    return unique, len(events) - len(unique)


def joined_text(finals: list[dict]) -> str:
    return " ".join(f["text"] for f in finals)


#: The daemon in one process (workers: 1, the default), and SIP in one process with each call in one
#: of two ingest worker processes and the model in an inference process (workers: 2).
WORKERS = pytest.mark.parametrize("workers", [1, 2], ids=["one-process", "two-workers"])


@pytest.fixture(params=[1, 2], ids=["one-process", "two-workers"])
async def daemon(request, tmp_path, kafka_broker, topic_name) -> AsyncIterator[Daemon]:
    daemon = await running_daemon(tmp_path, kafka_broker.bootstrap_servers, topic_name, workers=request.param)
    try:
        yield daemon
    finally:
        await daemon.stop()


def target(daemon: Daemon) -> str:
    assert daemon.ingest is not None
    return f"127.0.0.1:{daemon.ingest.sip.port}"


async def test_a_call_becomes_ordered_events_with_accurate_finals(daemon, tmp_path, kafka_broker, topic_name):
    wav, reference = clip("en_ljspeech_LJ001-0003")  # 9.7 s
    await place_call(target(daemon), wav, tmp_path / "call", codec="PCMU", hangup_after_s=1.5)
    events = await asyncio.to_thread(consume_calls, kafka_broker.bootstrap_servers, topic_name, 1, 30)
    call_id = events[0]["call_id"]
    finals = assert_call_lifecycle(events, call_id)
    assert any(e["event"] == "segment.partial" for e in events), "no partial for a 9.7 s utterance"
    wer = corpus_wer([reference], [joined_text(finals)])
    print(f"\nfinals: {joined_text(finals)!r}\nWER {wer:.3f}; latency_ms {[f['latency_ms'] for f in finals]}")
    assert wer <= 0.25
    assert events[-1]["end_reason"] == "hangup"


async def test_two_concurrent_calls_never_mix(daemon, tmp_path, kafka_broker, topic_name):
    (wav_a, ref_a), (wav_b, ref_b) = clip("en_ljspeech_LJ001-0005"), clip("en_librivox_sense_and_sensibility_01_austen_64kb-0870")
    await asyncio.gather(
        place_call(target(daemon), wav_a, tmp_path / "a", codec="PCMU"),
        place_call(target(daemon), wav_b, tmp_path / "b", codec="PCMA"),
    )
    events = await asyncio.to_thread(consume_calls, kafka_broker.bootstrap_servers, topic_name, 2, 40)
    started = [e for e in events if e["event"] == "call.started"]
    assert len(started) == 2
    texts = {}
    for start in started:
        finals = assert_call_lifecycle(events, start["call_id"])
        texts[start["channels"][0]["codec"]] = joined_text(finals)
    assert corpus_wer([ref_a], [texts["PCMU"]]) <= 0.25
    assert corpus_wer([ref_b], [texts["PCMA"]]) <= 0.25


async def test_noise_and_silence_give_no_text(daemon, tmp_path, kafka_broker, topic_name):
    rng = np.random.default_rng(7)
    white = rng.standard_normal(16000 * 4)
    pink = np.fft.irfft(np.fft.rfft(white) / np.sqrt(np.arange(1, white.size // 2 + 2)))  # 1/f power
    noise = np.concatenate([np.zeros(16000 * 2), 0.05 * pink / np.abs(pink).max(), np.zeros(16000 * 2)])
    wav = tmp_path / "noise.wav"
    soundfile.write(wav, noise.astype(np.float32), 16000)
    await place_call(target(daemon), wav, tmp_path / "call")
    events = await asyncio.to_thread(consume_calls, kafka_broker.bootstrap_servers, topic_name, 1, 20)
    assert next(e["event"] for e in events) == "call.started" and events[-1]["event"] == "call.ended"
    assert not [e for e in events if e["event"] == "segment.final" and e["text"].strip()]


async def test_a_long_utterance_is_split_without_losing_words(tmp_path, kafka_broker, topic_name):
    wav, reference = clip("en8k_asterisk_conf-usermenu")  # 14 s of continuous IVR speech
    daemon = await running_daemon(
        tmp_path, kafka_broker.bootstrap_servers, topic_name, vad={"max_segment_ms": 5000, "split_search_ms": 2000}
    )
    try:
        await place_call(target(daemon), wav, tmp_path / "call")
    finally:
        await daemon.stop()
    events = await asyncio.to_thread(consume_calls, kafka_broker.bootstrap_servers, topic_name, 1, 30)
    finals = assert_call_lifecycle(events, events[0]["call_id"])
    assert len(finals) >= 3, [f["text"] for f in finals]
    for before, after in itertools.pairwise(finals):
        assert after["start_ms"] <= before["end_ms"] + 700, "a gap between split segments"
    wer = corpus_wer([reference], [joined_text(finals)])
    print(f"\n{len(finals)} finals: {joined_text(finals)!r}\nWER {wer:.3f}")
    assert wer <= 0.25


async def test_broker_outage_mid_call_loses_and_duplicates_nothing(tmp_path, durable_kafka_broker: LocalBroker, topic_name):
    wav, reference = clip("en8k_asterisk_demo-moreinfo")  # 14.7 s, several sentences
    outage = {"down": False, "published": 0}

    def count_during_outage(event) -> None:
        outage["published"] += outage["down"]

    daemon = await running_daemon(tmp_path, durable_kafka_broker.bootstrap_servers, topic_name, publish_hooks=(count_during_outage,))
    try:
        call = asyncio.create_task(place_call(target(daemon), wav, tmp_path / "call"))
        await asyncio.sleep(3)
        outage["down"] = True
        await asyncio.to_thread(durable_kafka_broker.stop)
        await asyncio.sleep(4)
        await asyncio.to_thread(durable_kafka_broker.start)
        outage["down"] = False
        await call
    finally:
        await daemon.stop()
    assert outage["published"] > 0, "no event was published while the broker was down"
    delivered = await asyncio.to_thread(consume_calls, durable_kafka_broker.bootstrap_servers, topic_name, 1, 40)
    events, redelivered = without_redeliveries(delivered)
    assert daemon.kafka is not None and redelivered <= daemon.kafka.failed, "more redeliveries than failed sends"
    assert daemon.kafka.dropped == 0 and daemon.kafka.spool_size == 0, "the sink dropped events or left them spooled"
    finals = assert_call_lifecycle(events, events[0]["call_id"])
    assert corpus_wer([reference], [joined_text(finals)]) <= 0.3


@WORKERS
def test_sigterm_during_calls_finalises_and_flushes_every_call(tmp_path, kafka_broker, topic_name, workers):
    """SIGTERM mid-speech of three calls: each ends with call.ended (shutdown), its finals exactly once; no process is left."""
    wav, _ = clip("en8k_asterisk_conf-usermenu")
    config = daemon_config(tmp_path, kafka_broker.bootstrap_servers, topic_name, workers=workers)
    sip_port = free_tcp_port()
    config["sip"]["listen"] = f"127.0.0.1:{sip_port}"
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    server = subprocess.Popen(
        [sys.executable, "-m", "asr_stream.cli", "serve", "--config", str(path)],
        cwd=REPO,
        env=os.environ | {"PYTHONUNBUFFERED": "1"},
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        children = wait_until_serving(server, workers)

        async def calls_then_terminate() -> None:
            calls = asyncio.create_task(place_call(f"127.0.0.1:{sip_port}", wav, tmp_path / "call", calls=3))
            await asyncio.sleep(6)  # mid-speech
            server.send_signal(signal.SIGTERM)
            await asyncio.gather(calls, return_exceptions=True)  # SIPp did not expect our BYE

        asyncio.run(calls_then_terminate())
        assert server.wait(timeout=60) == 0
    finally:
        if server.poll() is None:
            server.kill()
        server.stderr.close()
    assert not [pid for pid in children if process_alive(pid)], "a child process outlived the daemon"
    events = consume_calls(kafka_broker.bootstrap_servers, topic_name, 3, 30)
    call_ids = {e["call_id"] for e in events}
    assert len(call_ids) == 3
    for call_id in call_ids:
        finals = assert_call_lifecycle(events, call_id)
        assert finals and finals[-1]["text"].strip(), "the open segment was not finalised"
        assert [e for e in events if e["call_id"] == call_id][-1]["end_reason"] == "shutdown"


def wait_until_serving(server: subprocess.Popen, workers: int) -> list[int]:
    """Read the daemon's stderr until it is ready; with workers > 1, the child pids of its process-layout line."""
    for lines_read, line in enumerate(server.stderr, 1):  # bounded by the test timeout and the line count
        if workers == 1 and "asr-stream ready" in line:
            return []
        if "process layout" in line:
            layout = json.loads(line)["processes"]
            assert len(layout["worker"]) == workers and len(layout["inference"]) == 1, layout
            return layout["inference"] + layout["worker"]
        assert lines_read < 300, "the daemon never said it was ready"
    raise AssertionError(f"the daemon exited with {server.wait()} before it was ready")


def process_alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, dead but not yet reaped by whoever adopted it, counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


@WORKERS
async def test_a_stop_deadline_cuts_calls_short_but_each_still_ends(tmp_path, kafka_broker, topic_name, workers):
    """At the deadline, calls still transcribing are cancelled; each gets call.ended, from the spool if need be."""
    wav, _ = clip("en8k_asterisk_conf-usermenu")
    daemon = await running_daemon(tmp_path, kafka_broker.bootstrap_servers, topic_name, workers=workers)
    calls = asyncio.create_task(place_call(target(daemon), wav, tmp_path / "call", calls=2))
    await asyncio.sleep(5)  # mid-speech
    await daemon.stop(deadline_s=0.05)
    await asyncio.gather(calls, return_exceptions=True)
    assert not asyncio.all_tasks() - {asyncio.current_task(), calls}, "the daemon left tasks behind"
    successor = await running_daemon(tmp_path, kafka_broker.bootstrap_servers, topic_name)  # same spool: replays it
    try:
        events = await asyncio.to_thread(consume_calls, kafka_broker.bootstrap_servers, topic_name, 2, 30)
    finally:
        await successor.stop()
    for call_id in {e["call_id"] for e in events}:
        assert_call_lifecycle(events, call_id)
        assert [e for e in events if e["call_id"] == call_id][-1]["end_reason"] == "shutdown"


@WORKERS
async def test_a_start_that_fails_half_way_releases_what_it_started(tmp_path, kafka_broker, topic_name, workers):
    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    taken.bind(("127.0.0.1", 0))
    config = daemon_config(
        tmp_path, kafka_broker.bootstrap_servers, topic_name, sip={"listen": f"127.0.0.1:{taken.getsockname()[1]}"}, workers=workers
    )
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    daemon = Daemon(load_config(path, environ={}))
    before = set(threading.enumerate())
    try:
        with pytest.raises(ListenError, match=f"cannot listen for SIP on 127.0.0.1:{taken.getsockname()[1]}"):
            await daemon.start()
    finally:
        taken.close()
    assert daemon.kafka is not None and not daemon.kafka.alive, "the Kafka sink thread still runs"
    assert not [t for t in set(threading.enumerate()) - before if t.is_alive() and t.name.startswith(("kafka", "engine"))]
    assert not multiprocessing.active_children(), "the inference process or an ingest worker is still running"
    with socket.socket() as http:  # the HTTP listener is closed again
        http.bind(split_hostport(config["http"]["listen"]))
