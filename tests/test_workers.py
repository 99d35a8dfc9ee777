"""A multi-process daemon (workers: 2) when its processes die: real processes killed with SIGKILL.

- An ingest worker killed mid-call: its call ends with call.ended reason error (with the finals the
  main process had published) and a BYE to the caller; the call on the other worker goes on
  untouched; the worker is started again and takes calls.
- The inference process killed mid-call: /readyz fails until a new one has loaded the model; the
  call loses nothing (finals wait for the new process, or are sent to it again).
- The main process killed: no child process outlives it.
- re-INVITEs go to the worker that owns the call, and its refusal comes back as 488.

SIPp, the Tansu broker, Whisper tiny.en and Silero VAD are real, as in test_daemon_e2e.py.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

import aiohttp
import pytest
import yaml
from kafka_fixtures import kafka_broker, topic_name  # noqa: F401 (fixtures)
from prometheus_client.parser import text_string_to_metric_families
from test_daemon_e2e import (
    REPO,
    assert_call_lifecycle,
    clip,
    consume_calls,
    daemon_config,
    joined_text,
    process_alive,
    running_daemon,
    target,
    wait_until_serving,
)

from asr_stream.devtools.scoring import corpus_wer
from asr_stream.devtools.sipp import SippError, place_call, run_sipp

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]
SIPP_SCENARIOS = REPO / "tests" / "sipp"


async def scrape(daemon, path: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.get(f"http://{daemon.config.settings.http.listen}{path}") as response:
        return response.status, await response.text()


def sample(text: str, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return s.value
    return None


async def until(condition: Callable[[], bool | Awaitable[bool]], timeout_s: float, what: str) -> None:
    """Poll `condition` (plain or async) every 100 ms until it holds; fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


async def test_a_killed_worker_ends_its_call_with_error_and_the_other_call_goes_on(tmp_path, kafka_broker, topic_name):
    clips = [clip("en8k_asterisk_conf-usermenu"), clip("en8k_asterisk_demo-moreinfo")]  # 14 s, 14.7 s
    started: list[str] = []
    daemon = await running_daemon(
        tmp_path,
        kafka_broker.bootstrap_servers,
        topic_name,
        publish_hooks=(lambda event: started.append(event.call_id) if event.event == "call.started" else None,),
        workers=2,
    )
    try:
        [first_worker, second_worker] = daemon.child_pids()["worker"]
        calls = [asyncio.create_task(place_call(target(daemon), wav, tmp_path / f"call-{i}")) for i, (wav, _) in enumerate(clips)]
        await until(lambda: len(started) == 2, 20, "both calls to start")
        await asyncio.sleep(4)  # mid-speech: some finals are out, more to come
        os.kill(first_worker, signal.SIGKILL)
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        failed = [outcome for outcome in outcomes if isinstance(outcome, SippError)]
        assert len(failed) == 1, outcomes  # the caller on the killed worker got our BYE
        assert 'Reason: Q.850;cause=16;text="media_failure"' in str(failed[0])
        # Which call the killed worker had depends on which INVITE came first: the other one lived.
        [(survivor, (_, reference))] = [(run, clips[i]) for i, run in enumerate(outcomes) if not isinstance(run, BaseException)]

        events = await asyncio.to_thread(consume_calls, kafka_broker.bootstrap_servers, topic_name, 2, 40)
        ended = {e["call_id"]: e for e in events if e["event"] == "call.ended"}
        assert sorted(e["end_reason"] for e in ended.values()) == ["error", "hangup"]
        for call_id in ended:
            assert_call_lifecycle(events, call_id)  # in order, and final_segments == the finals published
        assert ended[survivor.call_id]["end_reason"] == "hangup"
        finals = assert_call_lifecycle(events, survivor.call_id)
        assert corpus_wer([reference], [joined_text(finals)]) <= 0.3, "the call on the other worker lost something"

        async def restarted() -> bool:
            pids = daemon.child_pids()["worker"]
            return len(pids) == 2 and first_worker not in pids

        await until(restarted, 30, "the killed worker to be restarted")
        assert second_worker in daemon.child_pids()["worker"]
        metrics = (await scrape(daemon, "/metrics"))[1]
        assert sample(metrics, "asr_process_restarts_total", role="worker") == 1
        assert sample(metrics, "asr_calls_ended_total", reason="error") == 1
        # The restarted worker (the least loaded, first in order) takes the next call.
        # 3.3 s; WER 0 at every alignment tried (tiny.en repeats some clips whole, e.g. LJ001-0011, at some)
        wav_c, ref_c = clip("en_librivox_sense_and_sensibility_01_austen_64kb-0930")
        await place_call(target(daemon), wav_c, tmp_path / "c", codec="PCMA")
    finally:
        await daemon.stop()
    events = await asyncio.to_thread(consume_calls, kafka_broker.bootstrap_servers, topic_name, 3, 30)
    third = [e for e in events if e["call_id"] not in ended]
    finals = assert_call_lifecycle(third, third[0]["call_id"])
    assert third[-1]["end_reason"] == "hangup" and corpus_wer([ref_c], [joined_text(finals)]) <= 0.3


async def test_a_killed_inference_process_fails_readiness_until_restarted_and_the_call_loses_nothing(tmp_path, kafka_broker, topic_name):
    wav, reference = clip("en8k_asterisk_demo-moreinfo")  # 14.7 s, several sentences
    daemon = await running_daemon(tmp_path, kafka_broker.bootstrap_servers, topic_name, workers=2)
    try:
        assert (await scrape(daemon, "/readyz"))[0] == 200
        [inference] = daemon.child_pids()["inference"]
        call = asyncio.create_task(place_call(target(daemon), wav, tmp_path / "call"))
        await asyncio.sleep(4)  # mid-speech
        os.kill(inference, signal.SIGKILL)

        async def not_ready() -> bool:
            status, body = await scrape(daemon, "/readyz")
            return status == 503 and json.loads(body)["checks"]["model_loaded"] is False

        await until(not_ready, 5, "/readyz to fail")
        await until(lambda: daemon.inference.ready, 60, "a new inference process")
        assert (await scrape(daemon, "/readyz"))[0] == 200
        assert daemon.child_pids()["inference"] != [inference]
        await call  # the caller noticed nothing
        events = await asyncio.to_thread(consume_calls, kafka_broker.bootstrap_servers, topic_name, 1, 40)
        metrics = (await scrape(daemon, "/metrics"))[1]
    finally:
        await daemon.stop()
    finals = assert_call_lifecycle(events, events[0]["call_id"])
    assert events[-1]["end_reason"] == "hangup"
    wer = corpus_wer([reference], [joined_text(finals)])
    print(f"\nfinals after the restart: {joined_text(finals)!r} WER {wer:.3f}")
    assert wer <= 0.3, "finals were lost with the inference process"
    assert sample(metrics, "asr_process_restarts_total", role="inference") == 1
    assert sample(metrics, "asr_processes_up", role="inference") == 1


async def test_reinvites_are_applied_or_refused_by_the_worker_that_owns_the_call(tmp_path, kafka_broker, topic_name):
    """Hold, resume and a codec change reach the worker (200 with the right direction); a clock-rate
    change is refused there and the refusal comes back as 488."""
    daemon = await running_daemon(tmp_path, kafka_broker.bootstrap_servers, topic_name, workers=2)
    try:
        for scenario in ("hold_resume.xml", "reinvite_clock_change.xml"):
            workdir = tmp_path / scenario
            workdir.mkdir()
            run = await run_sipp(target(daemon), ["-sf", str(SIPP_SCENARIOS / scenario)], workdir, timeout_s=20)
            assert run.returncode == 0, run.explain()
        assert "SIP/2.0 488 Not Acceptable Here (" in run.messages
    finally:
        await daemon.stop()
    events = await asyncio.to_thread(consume_calls, kafka_broker.bootstrap_servers, topic_name, 2, 30)
    assert [e["end_reason"] for e in events if e["event"] == "call.ended"] == ["hangup", "hangup"]


def test_no_child_process_outlives_a_killed_main_process(tmp_path, kafka_broker, topic_name):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(daemon_config(tmp_path, kafka_broker.bootstrap_servers, topic_name, workers=2)))
    server = subprocess.Popen(
        [sys.executable, "-m", "asr_stream.cli", "serve", "--config", str(path)],
        cwd=REPO,
        env=os.environ | {"PYTHONUNBUFFERED": "1"},
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        children = wait_until_serving(server, workers=2)
        assert all(process_alive(pid) for pid in children)
        server.send_signal(signal.SIGKILL)
        server.wait(timeout=10)
        deadline = time.monotonic() + 10
        while (alive := [pid for pid in children if process_alive(pid)]) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive, f"children {alive} outlived the main process"
    finally:
        if server.poll() is None:
            server.kill()
        server.stderr.close()
