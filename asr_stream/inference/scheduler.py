"""Dynamic batching of transcription work across every channel of every call.

Why a scheduler: an engine call costs nearly the same for one utterance as for several (a GPU
batch, or a CPU encoder over a fixed 30 s window), so the daemon gathers requests from all calls
into batches. Its rules, in order of importance:

1. Finals before partials. A final is what downstream ticketing consumes; a partial is a preview.
2. A partial is only worth its latest version: a newer partial for the same segment replaces the
   queued older one, which is answered with `Shed`.
3. When the backlog predicts that a final would miss `final_deadline_s`, partials are shed (at
   submission and from the queue) and `saturated` turns on, so the SIP side answers new INVITEs
   with 503 + Retry-After before latency breaks. Finals are never shed: their number is bounded
   by the channels already admitted.
4. Every queue is bounded: past `max_queue` waiting requests, new partials are shed.

Batches only mix requests of the same bucket (e.g. the same encoder window length), as an engine
runs one input shape per call. The engine work itself runs in a thread pool, so the event loop
never blocks.

With `final_lane` (the default) finals have a worker and thread of their own and never wait for a
partial batch that is already running: on a CPU the two then share the cores for a while, which
costs the final less than waiting for the whole partial batch did (docs/benchmarks.md, "Partials
that scale"). The partial workers take partials only, and partials are then not shed to protect
finals (they do not delay them): they are paced by the channels instead (at most one in flight
each, transcript/partials.py), and only a full queue sheds them.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Generic, TypeVar

P = TypeVar("P")
R = TypeVar("R")


class Priority(IntEnum):
    FINAL = 0
    PARTIAL = 1


class Shed(Exception):
    """A partial request dropped because a newer one superseded it or the system is loaded."""


@dataclass
class _Job(Generic[P, R]):
    key: Hashable
    payload: P
    priority: Priority
    bucket: Hashable
    submitted: float
    future: asyncio.Future[R]


@dataclass(frozen=True)
class SchedulerSettings:
    """How the scheduler batches; the defaults suit one CPU engine (the embedded default).

    max_batch: requests per engine call (the engine's own maximum caps it)
    max_wait_s: how long the oldest request may wait for company before a smaller batch runs
    max_queue: waiting requests beyond which new partials are shed and saturation is signalled
    final_deadline_s: the end-of-speech -> final target that shedding and saturation protect
    threads: engine calls in flight at once (CPU: one engine call already uses every core given);
        with `final_lane`, the partial workers
    final_lane: one more worker only for finals, so a final never waits for a running partial batch
    final_max_wait_s: with `final_lane`, how long the oldest final waits for company (None: `max_wait_s`).
        Longer on a GPU: there a final batch costs nearly the same for 10 rows as for 60, and an early
        final (transcript/partials.py) is asked for ~300 ms before its segment closes, so a final
        batch that waits for more finals frees GPU time for partials at little cost to finals
    partial_nice: with `final_lane`, the partial workers' threads run this much nicer (Linux), so
        that on a busy CPU the kernel gives a final's thread the cores first (0: same priority, the
        default since finals were requested during the closing silence and the CPU encoder went
        int8: at 8 calls on 2 cores, 10 left finals 0.1 s faster at p95 but partials waiting behind
        them, partial gap p95 1.57 / 1.36 s vs 1.38 / 1.29 s at 0, docs/benchmarks.md)
    """

    max_batch: int = 8
    max_wait_s: float = 0.03
    max_queue: int = 256
    final_deadline_s: float = 1.5
    threads: int = 1
    final_lane: bool = True
    final_max_wait_s: float | None = None
    partial_nice: int = 0


def _renice_thread(nice: int) -> None:
    """Lower the calling thread's CPU priority by `nice` (Linux: a thread is a task with its own nice value)."""
    if nice and hasattr(os, "setpriority"):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), min(19, os.getpriority(os.PRIO_PROCESS, 0) + nice))


class SchedulerStopped(Exception):
    """The scheduler stopped (at its shutdown deadline) before this request ran."""


@dataclass
class SchedulerStats:
    """Counters for metrics and logs; `ema_batch_s` is the smoothed wall time of one batch
    (`ema_final_batch_s`: of one batch holding a final)."""

    batches: int = 0
    items: int = 0
    shed_partials: int = 0
    ema_batch_s: float = 0.0
    ema_final_batch_s: float = 0.0
    final_batches: int = 0
    batch_sizes: list[int] = field(default_factory=list)  # the last few, for metrics


class BatchScheduler(Generic[P, R]):
    """Batches `payload`s into calls of `run_batch(list[P]) -> list[R]` on worker threads."""

    def __init__(
        self,
        run_batch: Callable[[Sequence[P]], Sequence[R]],
        settings: SchedulerSettings = SchedulerSettings(),
        *,
        bucket: Callable[[P], Hashable] = lambda payload: None,
        on_wait: Callable[[Priority, float], None] = lambda priority, seconds: None,
    ) -> None:
        """`on_wait(priority, seconds)`: told, as each batch starts, how long each of its requests waited."""
        self._run_batch = run_batch
        self._on_wait = on_wait
        self.max_batch = settings.max_batch
        self.max_wait_s = settings.max_wait_s
        self.max_queue = settings.max_queue
        self.final_deadline_s = settings.final_deadline_s
        self._bucket = bucket
        self._threads = settings.threads
        self.final_lane = settings.final_lane
        final_wait_s = settings.final_max_wait_s if settings.final_max_wait_s is not None else self.max_wait_s
        self._queues: dict[Priority, list[_Job[P, R]]] = {Priority.FINAL: [], Priority.PARTIAL: []}
        self._partial_by_key: dict[Hashable, _Job[P, R]] = {}
        # Which priorities each kind of worker takes, and the event that wakes it.
        both = (Priority.FINAL, Priority.PARTIAL)
        self._lanes: list[tuple[Priority, ...]] = [(Priority.FINAL,), (Priority.PARTIAL,)] if self.final_lane else [both]
        self._wakeups = {lane: asyncio.Event() for lane in self._lanes}
        self._max_wait_s = {lane: final_wait_s if lane == (Priority.FINAL,) else self.max_wait_s for lane in self._lanes}
        self._idle = asyncio.Event()  # set while nothing is queued or running
        self._idle.set()
        self._in_flight = 0
        self._finals_in_flight = 0
        self._saturated = False
        self._partial_nice = settings.partial_nice if settings.final_lane else 0
        self._executors: dict[tuple[Priority, ...], ThreadPoolExecutor] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.stats = SchedulerStats()

    # -- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        workers = [lane for lane in self._lanes for _ in range(1 if lane == (Priority.FINAL,) else self._threads)]
        for lane in self._lanes:
            nice = self._partial_nice if lane == (Priority.PARTIAL,) else 0
            self._executors[lane] = ThreadPoolExecutor(
                max_workers=workers.count(lane), thread_name_prefix="engine", initializer=_renice_thread, initargs=(nice,)
            )
        self._tasks = [asyncio.create_task(self._worker(lane), name=f"scheduler-{i}") for i, lane in enumerate(workers)]

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Shed queued partials, finish queued finals within `timeout_s`, then stop the workers.

        Finals still waiting at the deadline fail with `SchedulerStopped`; an engine call already
        running is not waited for (it cannot be interrupted, and its thread ends with it).
        """
        for job in self._queues[Priority.PARTIAL]:
            self._shed(job)
        self._queues[Priority.PARTIAL].clear()
        self._partial_by_key.clear()
        self._update_idle()
        finished = True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            finished = False
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for job in self._queues[Priority.FINAL]:
            if not job.future.done():
                job.future.set_exception(SchedulerStopped())
        self._queues[Priority.FINAL].clear()
        for executor in self._executors.values():
            executor.shutdown(wait=finished, cancel_futures=True)

    # -- submission ----------------------------------------------------------------------
    async def submit(self, key: Hashable, payload: P, priority: Priority) -> R:
        """Queue one request and wait for its result. Partials may raise `Shed`."""
        loop = asyncio.get_running_loop()
        job: _Job[P, R] = _Job(key, payload, priority, self._bucket(payload), time.monotonic(), loop.create_future())
        if priority is Priority.PARTIAL:
            if self._shedding_partials() or self.queued() >= self.max_queue:
                self._shed(job)
                return await job.future
            older = self._partial_by_key.pop(key, None)
            if older is not None:  # still queued: `_take_batch` unmaps what it takes or drops
                self._queues[Priority.PARTIAL].remove(older)
                self._shed(older)
            self._partial_by_key[key] = job
        self._queues[priority].append(job)
        self._idle.clear()
        self._update_saturation()
        for lane, wakeup in self._wakeups.items():
            if priority in lane:
                wakeup.set()
        return await job.future

    def queued(self, priority: Priority | None = None) -> int:
        if priority is None:
            return sum(len(q) for q in self._queues.values())
        return len(self._queues[priority])

    # -- load prediction -----------------------------------------------------------------
    def predicted_final_wait_s(self) -> float:
        """How long a final submitted now would wait: batches ahead of it times batch time (in its own
        lane, only the finals' batches)."""
        if self.final_lane:
            return (self.queued(Priority.FINAL) // self.max_batch + 1 + self._finals_in_flight) * self.stats.ema_final_batch_s
        batches_ahead = self.queued(Priority.FINAL) // self.max_batch + 1 + self._in_flight
        return batches_ahead * self.stats.ema_batch_s

    @property
    def saturated(self) -> bool:
        """True while new calls should be refused (503) to protect the finals deadline."""
        return self._saturated

    # Thresholds as shares of the finals deadline: partials go first, new calls next, and
    # saturation clears only well below where it set, so admission does not flap.
    SHED_PARTIALS_AT = 0.75
    SATURATE_AT = 0.9
    CLEAR_AT = 0.6

    def _shedding_partials(self) -> bool:
        """Partials go when they would make a final late; in a lane of their own they cannot."""
        return not self.final_lane and self.predicted_final_wait_s() > self.SHED_PARTIALS_AT * self.final_deadline_s

    def _update_saturation(self) -> None:
        if not self.queued() and not self._in_flight:
            # No backlog: a slow engine alone is a capacity setting, not load. Refusing calls
            # here would never end, since nothing would run to bring the batch-time average down.
            self._saturated = False
            return
        wait = self.predicted_final_wait_s()
        if self._saturated:
            self._saturated = wait > self.CLEAR_AT * self.final_deadline_s
        else:
            self._saturated = wait > self.SATURATE_AT * self.final_deadline_s or self.queued() >= self.max_queue

    def _update_idle(self) -> None:
        if not self.queued() and not self._in_flight:
            self._idle.set()

    def _shed(self, job: _Job[P, R]) -> None:
        self.stats.shed_partials += 1
        if not job.future.done():
            job.future.set_exception(Shed(job.key))

    # -- batching ------------------------------------------------------------------------
    def _take_batch(self, lane: tuple[Priority, ...]) -> list[_Job[P, R]]:
        """The oldest highest-priority job's bucket among `lane`'s priorities, filled finals first, up to max_batch."""
        if self._shedding_partials():
            for job in self._queues[Priority.PARTIAL]:
                self._shed(job)
            self._queues[Priority.PARTIAL].clear()
            self._partial_by_key.clear()
        head = next((self._queues[priority][0] for priority in lane if self._queues[priority]), None)
        if head is None:
            return []
        batch: list[_Job[P, R]] = []
        for priority in lane:
            queue = self._queues[priority]
            keep = []
            for job in queue:
                if job.future.done():  # its caller stopped waiting (cancelled): it never runs
                    if self._partial_by_key.get(job.key) is job:
                        del self._partial_by_key[job.key]
                elif len(batch) < self.max_batch and job.bucket == head.bucket:
                    batch.append(job)
                    if priority is Priority.PARTIAL:
                        self._partial_by_key.pop(job.key, None)
                else:
                    keep.append(job)
            queue[:] = keep
        return batch

    async def _worker(self, lane: tuple[Priority, ...]) -> None:
        loop = asyncio.get_running_loop()
        wakeup = self._wakeups[lane]
        while True:
            await wakeup.wait()
            oldest = min((self._queues[priority][0].submitted for priority in lane if self._queues[priority]), default=None)
            if oldest is None:
                wakeup.clear()
                continue
            remaining = self._max_wait_s[lane] - (time.monotonic() - oldest)
            if sum(self.queued(priority) for priority in lane) < self.max_batch and remaining > 0:
                await asyncio.sleep(remaining)
            batch = self._take_batch(lane)
            if not batch:  # everything waiting was shed, or another worker of the lane took it
                self._update_idle()
                continue
            has_final = any(job.priority is Priority.FINAL for job in batch)
            self._in_flight += 1
            self._finals_in_flight += has_final
            started = time.monotonic()
            for job in batch:
                self._on_wait(job.priority, started - job.submitted)
            try:
                results = await loop.run_in_executor(self._executors[lane], self._run_batch, [job.payload for job in batch])
            except Exception as exc:  # the engine failed: every caller in the batch learns why
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(exc)
            else:
                for job, result in zip(batch, results, strict=True):
                    if not job.future.done():
                        job.future.set_result(result)
            finally:
                self._in_flight -= 1
                self._finals_in_flight -= has_final
            self._record(len(batch), time.monotonic() - started, has_final)
            self._update_idle()

    def _record(self, size: int, seconds: float, has_final: bool) -> None:
        stats = self.stats
        stats.batches += 1
        stats.items += size
        stats.ema_batch_s = seconds if stats.batches == 1 else 0.8 * stats.ema_batch_s + 0.2 * seconds
        if has_final:
            stats.final_batches += 1
            stats.ema_final_batch_s = seconds if stats.final_batches == 1 else 0.8 * stats.ema_final_batch_s + 0.2 * seconds
        stats.batch_sizes = ([*stats.batch_sizes, size])[-64:]
        self._update_saturation()
