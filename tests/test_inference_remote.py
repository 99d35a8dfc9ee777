"""The scheduler of another process: audio through shared memory, requests over a Unix socket.

Real sockets, real POSIX shared memory, a real BatchScheduler and, for restarts, real processes
killed with SIGKILL. The model is replaced by a function of the audio itself (its length and sum),
so the tests can tell that every request's samples arrived intact and went back to the right
caller; the real model runs through the same path in test_daemon_e2e.py and test_workers.py.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from asr_stream.app.logs import LogSettings
from asr_stream.app.workers.process import ChildProcess
from asr_stream.common.ipc import Link
from asr_stream.common.shm_arena import ALIGN_SAMPLES, ArenaAllocator, SharedArena
from asr_stream.inference.live import LiveResult, Utterance
from asr_stream.inference.remote import InferenceClient, InferenceServer, InferenceUnavailable
from asr_stream.inference.scheduler import BatchScheduler, Priority, SchedulerSettings, Shed

pytestmark = pytest.mark.timeout(120)


def fingerprint(audio: np.ndarray) -> str:
    return f"{audio.shape[0]}:{float(np.sum(audio, dtype=np.float64)):.4f}"


def heard(batch: Sequence[Utterance]) -> list[LiveResult]:
    """The 'model': each utterance's fingerprint; its hotword list as the language and its prefix and
    partial flag as the tokens, so that every field of the request is seen to cross intact."""
    return [LiveResult(fingerprint(u.audio), u.hotwords or "en", (*u.prefix, int(u.partial))) for u in batch]


@pytest.fixture
async def arena() -> AsyncIterator[SharedArena]:
    arena = SharedArena.create(f"asr-test-{os.getpid()}-{time.monotonic_ns()}", 16 * 2**20)
    try:
        yield arena
    finally:
        arena.destroy()


@pytest.fixture
def socket_path(tmp_path: Path) -> str:
    return str(tmp_path / "inference.sock")


# -- the allocator -----------------------------------------------------------------------------


def test_first_fit_reuses_the_lowest_hole_and_merges_neighbours() -> None:
    allocator = ArenaAllocator(1000 * ALIGN_SAMPLES)
    a, b, c = (allocator.allocate(100 * ALIGN_SAMPLES) for _ in range(3))
    assert (a, b, c) == (0, 100 * ALIGN_SAMPLES, 200 * ALIGN_SAMPLES)
    allocator.free(b)
    assert allocator.allocate(50 * ALIGN_SAMPLES) == b, "the hole b left is the lowest that fits"
    assert allocator.allocate(1) == b + 50 * ALIGN_SAMPLES, "sizes round up to the alignment"
    assert allocator.allocate(1000 * ALIGN_SAMPLES) is None
    for offset in (a, c, b, b + 50 * ALIGN_SAMPLES):
        allocator.free(offset)
    assert allocator.used == 0
    assert allocator.allocate(1000 * ALIGN_SAMPLES) == 0, "every hole merged back into one"


# -- client and server in one process ----------------------------------------------------------


@pytest.fixture
async def served(socket_path: str) -> AsyncIterator[BatchScheduler]:
    scheduler = BatchScheduler(heard, SchedulerSettings(max_batch=4))
    await scheduler.start()
    server = InferenceServer(scheduler, socket_path)
    await server.start()
    try:
        yield scheduler
    finally:
        await server.stop()
        await scheduler.stop()


async def test_audio_crosses_intact_and_every_answer_reaches_its_caller(served, arena, socket_path) -> None:
    client = InferenceClient(socket_path, arena, "worker-0")
    await client.start()
    try:
        await client.wait_connected()
        rng = np.random.default_rng(3)
        audios = [rng.standard_normal(int(n)).astype(np.float32) for n in rng.integers(1_000, 160_000, size=24)]
        answers = await asyncio.gather(
            *(
                client.submit(
                    ("call", i),
                    Utterance(audio, "hotline" if i % 2 else None, partial=not i % 3, prefix=tuple(range(i % 4))),
                    Priority.FINAL if i % 3 else Priority.PARTIAL,
                )
                for i, audio in enumerate(audios)
            )
        )
    finally:
        await client.stop()
    assert [answer.text for answer in answers] == [fingerprint(audio) for audio in audios]
    assert [answer.language for answer in answers] == ["hotline" if i % 2 else "en" for i in range(len(audios))]
    assert [answer.tokens for answer in answers] == [(*range(i % 4), int(not i % 3)) for i in range(len(audios))]
    assert served.stats.batches < len(audios), "requests of one client were batched together"
    assert client._allocator.used == 0, "every region was freed when its answer came back"


async def test_a_full_arena_sheds_partials_at_once_and_makes_finals_wait(socket_path) -> None:
    release = threading.Event()

    def held(batch: Sequence[Utterance]) -> list[LiveResult]:
        release.wait(10)
        return heard(batch)

    scheduler = BatchScheduler(held, SchedulerSettings(max_batch=1))
    await scheduler.start()
    server = InferenceServer(scheduler, socket_path)
    await server.start()
    small = SharedArena.create(f"asr-test-{os.getpid()}-small", 2**20)  # 262,144 samples
    client = InferenceClient(socket_path, small, "worker-0")
    await client.start()
    try:
        await client.wait_connected()
        first = asyncio.create_task(client.submit(("c", "a", 0), Utterance(np.ones(200_000, np.float32)), Priority.FINAL))
        await asyncio.sleep(0.2)
        with pytest.raises(Shed):
            await client.submit(("c", "a"), Utterance(np.ones(100_000, np.float32)), Priority.PARTIAL)
        second = asyncio.create_task(client.submit(("c", "a", 1), Utterance(np.full(100_000, 2, np.float32)), Priority.FINAL))
        await asyncio.sleep(0.3)
        assert not second.done(), "a final that does not fit waits for space"
        release.set()
        assert (await first).text == "200000:200000.0000"
        assert (await second).text == "100000:200000.0000"
        assert client.stats.shed_arena_full == 1
    finally:
        release.set()
        await client.stop()
        await server.stop()
        await scheduler.stop()
        small.destroy()


async def test_a_request_its_caller_gave_up_is_withdrawn_from_the_other_process(socket_path, arena) -> None:
    """Cancelled while queued behind a running batch: it never runs there, its region comes back free."""
    release = threading.Event()
    ran: list[str] = []

    def held(batch: Sequence[Utterance]) -> list[LiveResult]:
        release.wait(10)
        ran.extend(fingerprint(u.audio) for u in batch)
        return heard(batch)

    scheduler = BatchScheduler(held, SchedulerSettings(max_batch=1, max_wait_s=0.0))
    await scheduler.start()
    server = InferenceServer(scheduler, socket_path)
    await server.start()
    client = InferenceClient(socket_path, arena, "worker-0")
    await client.start()
    try:
        await client.wait_connected()
        first = asyncio.create_task(client.submit(("c", "a", 0), Utterance(np.ones(1000, np.float32)), Priority.FINAL))
        await asyncio.sleep(0.2)  # running, held
        gave_up = asyncio.create_task(client.submit(("c", "a", 1), Utterance(np.full(2000, 2, np.float32)), Priority.FINAL))
        await asyncio.sleep(0.2)  # queued in the other process
        gave_up.cancel()
        await asyncio.sleep(0.2)  # the cancel crosses the link
        release.set()
        assert (await first).text == "1000:1000.0000"
        assert (await client.submit(("c", "a", 2), Utterance(np.full(500, 3, np.float32)), Priority.FINAL)).text == "500:1500.0000"
    finally:
        release.set()
        await client.stop()
        await server.stop()
        await scheduler.stop()
    assert ran == ["1000:1000.0000", "500:1500.0000"], "the withdrawn request never ran"
    assert client._allocator.used == 0, "its region was freed with the server's answer"


# -- a server process that dies ----------------------------------------------------------------


@dataclass(frozen=True)
class ServerSpec:
    socket_path: str
    batch_s: float  # how long each batch takes: long enough to kill the process in the middle of one


async def serve_fingerprints(spec: ServerSpec, link: Link) -> int:
    """A child process: an InferenceServer over a scheduler whose 'model' is `heard`, slowed down."""

    def slow(batch: Sequence[Utterance]) -> list[LiveResult]:
        time.sleep(spec.batch_s)
        return heard(batch)

    scheduler = BatchScheduler(slow)
    await scheduler.start()
    server = InferenceServer(scheduler, spec.socket_path)
    await server.start()
    link.send("ready")
    async for _ in link.receive():
        pass
    await server.stop()
    await scheduler.stop(0)
    return 0


async def start_server(socket_path: str, batch_s: float) -> ChildProcess:
    child = ChildProcess("inference", serve_fingerprints, ServerSpec(socket_path, batch_s), LogSettings())
    link = await child.start()
    assert await anext(link.receive()) == "ready"
    return child


async def killed(child: ChildProcess) -> None:
    assert child.pid is not None
    os.kill(child.pid, signal.SIGKILL)
    await child.reap()


async def test_finals_are_sent_once_more_to_a_restarted_process_and_partials_shed(arena, socket_path) -> None:
    client = InferenceClient(socket_path, arena, "worker-0")
    await client.start()
    audio_1, audio_2 = np.linspace(0, 1, 16_000, dtype=np.float32), np.linspace(1, 2, 8_000, dtype=np.float32)
    first = await start_server(socket_path, batch_s=3.0)
    try:
        await client.wait_connected()
        final_1 = asyncio.create_task(client.submit(("c", "a", 0), Utterance(audio_1), Priority.FINAL))
        partial = asyncio.create_task(client.submit(("c", "b"), Utterance(audio_2), Priority.PARTIAL))
        await asyncio.sleep(0.5)  # the final is in the engine, the partial queued behind it
        await killed(first)
        with pytest.raises(Shed):
            await partial
        assert not final_1.done(), "a final waits for the next inference process"

        second = await start_server(socket_path, batch_s=3.0)
        await client.wait_connected()
        final_2 = asyncio.create_task(client.submit(("c", "a", 1), Utterance(audio_2), Priority.FINAL))
        await asyncio.sleep(0.5)  # the resent final_1 is in the engine (its second send), final_2 queued (its first)
        await killed(second)
        with pytest.raises(InferenceUnavailable):
            await final_1  # lost twice: not sent a third time
        assert not final_2.done()

        third = await start_server(socket_path, batch_s=0.0)
        assert (await asyncio.wait_for(final_2, 20)).text == fingerprint(audio_2)
        assert (client.stats.resent, client.stats.lost, client.stats.shed_unavailable) == (2, 1, 0)
        await killed(third)
    finally:
        await client.stop()
    assert client._allocator.used == 0
