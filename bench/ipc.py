"""What crossing processes costs with `workers: N > 1`: per transcription request, per event, per channel-second.

Run by hand:  .venv/bin/python bench/ipc.py [--requests 400] [--events 20000]

1. A transcription request's round trip, sequentially, for segments of 1, 5, 10 and 20 s of
   audio, three ways, each against a real `BatchScheduler` whose "model" answers at once (so only
   the path is measured; `max_wait_s` 0, so no request waits for company):
   - in-process: `scheduler.submit` in this process (what `workers: 1` does);
   - shared memory: `InferenceClient` here -> `InferenceServer` in a spawned child process (what
     `workers: N` does): the audio is written into this process's arena and read out of it there;
   - pickled arrays: the same `Link` framing, with the audio pickled into the request (the design
     not taken), to an echo child: transport only, no scheduler, so a lower bound for that design.
   Wall time per request, and CPU per request in this process and in the child (/proc).
2. An event (a partial of about 12 words) sent from a child to this process over a `Link`, as an
   ingest worker sends every event to the main process: CPU per event on each side.
3. Per channel-second, the overhead of a channel that speaks all the time: one request per second
   (a partial every `partial_interval_s` = 1 s; a final per segment replaces one) of the mean
   audio an open segment holds, plus one event per second.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import numpy as np

from asr_stream.app.logs import LogSettings
from asr_stream.app.workers.process import ChildMain, ChildProcess
from asr_stream.common.ipc import Link, Request
from asr_stream.common.shm_arena import SharedArena
from asr_stream.inference.live import LiveResult, Utterance
from asr_stream.inference.remote import InferenceClient, InferenceServer
from asr_stream.inference.scheduler import BatchScheduler, Priority, SchedulerSettings
from asr_stream.transcript.events import SegmentPartial

SECONDS = (1, 5, 10, 20)
RATE = 16_000
INSTANT = SchedulerSettings(max_wait_s=0.0)


def answer_at_once(batch: Sequence[Utterance]) -> list[LiveResult]:
    return [LiveResult(str(utterance.audio.shape[0]), "en") for utterance in batch]


CPU_TIME = "cpu"  # a request the children answer with their own process CPU time (µs resolution, unlike /proc's ticks)


@dataclass(frozen=True)
class ServerSpec:
    socket_path: str


async def serve_instantly(spec: ServerSpec, link: Link) -> int:
    """Child: an InferenceServer over a scheduler whose model answers at once."""
    scheduler = BatchScheduler(answer_at_once, INSTANT)
    await scheduler.start()
    server = InferenceServer(scheduler, spec.socket_path)
    await server.start()
    link.send("ready")
    async for message in link.receive():
        if isinstance(message, Request):
            link.reply(message, time.process_time())
    await server.stop()
    await scheduler.stop(0)
    return 0


async def echo_arrays(spec: object, link: Link) -> int:
    """Child: answers every request (which carries a pickled array) with its length."""
    link.send("ready")
    async for message in link.receive():
        if isinstance(message, Request):
            link.reply(message, time.process_time() if isinstance(message.body, str) else len(message.body))
    return 0


async def send_events(count: int, link: Link) -> int:
    """Child: sends `count` partial events, as an ingest worker publishes them, then its CPU time."""
    await anext(link.receive())  # go
    started = time.process_time()
    event = SegmentPartial(
        call_id="1f3a9c2e-5d4b-4e7a-9c1d-2b8e6f0a7c3d@gw1.example",
        model="whisper-base",
        engine="torch",
        language="en",
        channel="caller",
        index=3,
        revision=2,
        text="I would like to report a broken street light on the corner of Main Street",
        start_ms=41_200,
        end_ms=44_900,
        latency_ms=310,
    )
    for _ in range(count):  # as a worker publishes: send, no wait
        link.send(event)
    link.send(("done", time.process_time() - started))
    async for _ in link.receive():
        pass
    return 0


async def spawned(main: ChildMain, spec: object) -> tuple[ChildProcess, Link]:
    child = ChildProcess("bench-child", main, spec, LogSettings(level="WARNING"))
    link = await child.start()
    return child, link


@dataclass
class Measured:
    wall_us: float
    here_cpu_us: float
    child_cpu_us: float


async def timed(requests: int, child: Link | None, one: Callable[[], Awaitable[object]]) -> Measured:
    for _ in range(20):  # warm up: first pickles, page faults of the arena
        await one()
    laps = []
    cpu_child = await child.request(CPU_TIME) if child else 0.0
    cpu_here = time.process_time()
    for _ in range(requests):
        started = time.perf_counter()
        await one()
        laps.append(time.perf_counter() - started)
    here = (time.process_time() - cpu_here) / requests
    child_cpu = (await child.request(CPU_TIME) - cpu_child) / requests if child else 0.0
    return Measured(1e6 * statistics.median(laps), 1e6 * here, 1e6 * child_cpu)


async def requests_bench(requests: int) -> dict[int, dict[str, Measured]]:
    results: dict[int, dict[str, Measured]] = {seconds: {} for seconds in SECONDS}
    audio = {seconds: Utterance(np.random.default_rng(seconds).standard_normal(seconds * RATE).astype(np.float32)) for seconds in SECONDS}

    scheduler = BatchScheduler(answer_at_once, INSTANT)
    await scheduler.start()
    for seconds in SECONDS:
        results[seconds]["in-process"] = await timed(requests, None, partial(scheduler.submit, ("c", 0), audio[seconds], Priority.FINAL))
    await scheduler.stop()

    with tempfile.TemporaryDirectory(prefix="asr-ipc-") as rundir:
        path = str(Path(rundir) / "inference.sock")
        child, link = await spawned(serve_instantly, ServerSpec(path))
        assert await anext(link.receive()) == "ready"
        arena = SharedArena.create(f"asr-bench-{os.getpid()}", 64 * 2**20)
        client = InferenceClient(path, arena, "bench")
        await client.start()
        await client.wait_connected()
        for seconds in SECONDS:
            results[seconds]["shared memory"] = await timed(
                requests, link, partial(client.submit, ("c", 0), audio[seconds], Priority.FINAL)
            )
        await client.stop()
        arena.destroy()
        link.close()
        await child.reap()

    child, link = await spawned(echo_arrays, None)
    assert await anext(link.receive()) == "ready"
    for seconds in SECONDS:
        results[seconds]["pickled arrays"] = await timed(requests, link, partial(link.request, audio[seconds].audio))
    link.close()
    await child.reap()
    return results


async def events_bench(count: int) -> tuple[float, float]:
    """CPU µs per event: in the sending child, and here (receiving and unpickling)."""
    child, link = await spawned(send_events, count)
    received = 0
    started = time.process_time()
    link.send("go")
    sender_cpu = 0.0
    async for message in link.receive():
        if isinstance(message, tuple):
            sender_cpu = message[1]
            break
        received += 1
    here = time.process_time() - started
    link.close()
    await child.reap()
    assert received == count
    return 1e6 * sender_cpu / count, 1e6 * here / count


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if "model name" in line), "?")
    load = " ".join(f"{value:.2f}" for value in os.getloadavg())
    return f'"{model}", {len(os.sched_getaffinity(0))} cores, Python {platform.python_version()}, load average {load}'


async def main(args: argparse.Namespace) -> int:
    print(f"machine: {machine()}\ndate: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC", flush=True)
    results = await requests_bench(args.requests)
    print("\n| audio | path | wall µs (median) | CPU µs here | CPU µs in the other process | CPU µs total |")
    print("|---:|---|---:|---:|---:|---:|")
    for seconds, paths in results.items():
        for path, m in paths.items():
            print(
                f"| {seconds} s | {path} | {m.wall_us:.0f} | {m.here_cpu_us:.0f} | {m.child_cpu_us:.0f} | {m.here_cpu_us + m.child_cpu_us:.0f} |"
            )
    send_us, receive_us = await events_bench(args.events)
    print(f"\nevent (segment.partial) worker -> main: {send_us:.1f} µs CPU to send, {receive_us:.1f} µs to receive ({args.events} events)")
    print("\nper channel-second of a channel that speaks all the time (1 request + 1 event per second), IPC overhead over in-process:")
    for seconds, paths in results.items():
        shm, local = paths["shared memory"], paths["in-process"]
        overhead_us = (shm.here_cpu_us + shm.child_cpu_us) - (local.here_cpu_us + local.child_cpu_us) + send_us + receive_us
        print(f"  open segments of {seconds:>2} s on average: {overhead_us / 1000:.3f} ms CPU per channel-second")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400, help="requests per path and audio length")
    parser.add_argument("--events", type=int, default=20000)
    sys.exit(asyncio.run(main(parser.parse_args())))
