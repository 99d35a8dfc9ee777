"""The ingest worker processes of a multi-process daemon, as the `MediaHost` of the SIP side.

SIP stays in the main process; each call is assigned whole to one of N worker processes
(`app.workers.ingest`), the least loaded that has free RTP ports (every worker owns a disjoint
slice of `rtp.port_range`), and every later step of the call is forwarded to that worker. The
workers' events come back over their control links and are published by the main process
(`publish`: Kafka, live feed, metrics) in the order each worker sent them, so a call's events
keep their order end to end.

A worker that dies takes its calls' media with it. The pool then publishes `call.ended` with
reason `error` for each of its calls that had started (with the number of finals the main
process had seen), asks the SIP side to hang each call up (BYE), and starts the worker again
(at once, then with back-off if it keeps dying, `restarts.Backoff`); the other workers' calls
are untouched. While a worker is down it is simply not assigned calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from asr_stream.app.config import Settings
from asr_stream.app.logs import LogSettings
from asr_stream.app.metrics import DaemonMetrics
from asr_stream.app.workers.ingest import WorkerSpec, serve_calls
from asr_stream.app.workers.messages import (
    CloseCall,
    ConfirmCall,
    HangUp,
    MetricsReport,
    OpenCall,
    Opened,
    Publish,
    Stop,
    UpdateCall,
    WorkerReady,
)
from asr_stream.app.workers.process import EXIT_GRACE_S, ChildProcess
from asr_stream.app.workers.restarts import Backoff
from asr_stream.common.ipc import Link, LinkClosed
from asr_stream.common.shm_arena import SharedArena
from asr_stream.errors import OperatorError
from asr_stream.ingest.media import HangUp as HangUpCall
from asr_stream.ingest.media import IngestConfig, IngestEvent
from asr_stream.ingest.types import EndReason
from asr_stream.rtp.ports import PortsExhausted
from asr_stream.sip.call import Call, LocalMedia
from asr_stream.sip.call import EndReason as SipEndReason
from asr_stream.transcript.events import CallEnded, CallStarted, SegmentFinal, TranscriptEvent

log = logging.getLogger(__name__)

#: Shared memory per worker for the audio of its requests in flight: 1,048 s of 16 kHz float32,
#: about 4 s for each of 250 channels. Pages are touched only up to the peak in use.
ARENA_BYTES = 64 * 2**20


class WorkerStartFailed(OperatorError):
    """An ingest worker could not start; the message says which and why."""


def split_port_range(low: int, high: int, parts: int) -> list[tuple[int, int]]:
    """`parts` disjoint slices of an RTP port range, each a whole number of (even RTP, odd RTCP) pairs."""
    first = low + low % 2
    pairs = len(range(first, high, 2))  # as rtp.ports.PortAllocator counts them
    bounds = [first + 2 * (pairs * i // parts) for i in range(parts + 1)]
    return [(start, end - 1) for start, end in itertools.pairwise(bounds)]


def arena_name(index: int, generation: int) -> str:
    return f"asr-{os.getpid()}-w{index}-{generation}"


@dataclass
class _Call:
    """What the main process knows of a call assigned to a worker."""

    call: Call
    worker: _Worker
    confirmed: bool = False
    closed: bool = False  # SIP ended it (CloseCall sent)
    started: CallStarted | None = None  # its call.started was published
    started_at: float = 0.0
    finals: int = 0
    ended: bool = False  # its call.ended was published


class _Worker:
    """One worker slot: its port slice, and the process currently filling it (restarted in place)."""

    def __init__(self, index: int, ports: tuple[int, int]) -> None:
        self.index = index
        self.ports = ports
        self.name = f"worker-{index}"
        self.generation = 0
        self.child: ChildProcess | None = None
        self.arena: SharedArena | None = None
        self.ready = False
        self.free_pairs = 0
        self.open_channels = 0
        self.follower: asyncio.Task[None] | None = None
        self.backoff = Backoff()


class WorkerPool:
    """N ingest worker processes behind the `MediaHost` protocol; see the module docstring."""

    def __init__(
        self,
        config: IngestConfig,
        hang_up: HangUpCall,
        *,
        count: int,
        settings: Settings,
        config_source: str,
        inference_socket: str,
        language: str | None,
        hotword_lists: frozenset[str],
        publish: Callable[[TranscriptEvent], None],
        metrics: DaemonMetrics,
        logs: LogSettings,
    ) -> None:
        self._hang_up = hang_up
        self._publish = publish
        self._metrics = metrics
        self._logs = logs
        self._spec = functools.partial(
            WorkerSpec,
            settings=settings,
            config_source=config_source,
            inference_socket=inference_socket,
            language=language,
            hotword_lists=hotword_lists,
        )
        slices = split_port_range(config.rtp_port_min, config.rtp_port_max, count)
        self._workers = [_Worker(index, ports) for index, ports in enumerate(slices)]
        self._calls: dict[str, _Call] = {}
        self._tasks: set[asyncio.Task[None]] = set()  # hang-ups and restarts
        self._closed = asyncio.Event()
        self._stopping = False
        self.restarts = 0

    # -- lifecycle -------------------------------------------------------------------------
    def pids(self) -> list[int]:
        return [worker.child.pid for worker in self._workers if worker.ready and worker.child is not None and worker.child.pid]

    @property
    def port_slices(self) -> list[tuple[int, int]]:
        return [worker.ports for worker in self._workers]

    @property
    def open_calls(self) -> int:
        """Calls assigned to a worker and not yet ended by SIP."""
        return sum(not record.closed for record in self._calls.values())

    @property
    def workers_up(self) -> int:
        return sum(worker.ready for worker in self._workers)

    async def start(self) -> None:
        """Start every worker and wait until each is ready; if one cannot start, stop the others."""
        try:
            await asyncio.gather(*(self._start(worker) for worker in self._workers))
        except BaseException:
            await self.stop(0.0)
            raise

    async def stop(self, deadline_s: float) -> None:
        """After SIP ended every call: let the workers finish their calls' finals within `deadline_s`, then reap them."""
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*(self._stop(worker, deadline_s) for worker in self._workers))

    async def _stop(self, worker: _Worker, deadline_s: float) -> None:
        child = worker.child
        if child is not None and child.link is not None and worker.ready:
            with contextlib.suppress(LinkClosed, TimeoutError):
                await asyncio.wait_for(child.link.request(Stop(deadline_s)), deadline_s + EXIT_GRACE_S)
        if worker.follower is not None:  # it ends at the child's end of stream, once all it sent is published
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(worker.follower), EXIT_GRACE_S)
        if child is not None:
            await child.reap()  # killed if it is still there; its link closes, so the follower ends too
        if worker.follower is not None:
            await worker.follower
        self._release(worker)

    # -- MediaHost ---------------------------------------------------------------------------
    async def open_call(self, call: Call) -> Sequence[LocalMedia]:
        channels = len(call.channels)
        tried: set[int] = set()
        while (worker := self._least_loaded(channels, tried)) is not None:
            tried.add(worker.index)
            worker.open_channels += channels  # counted before the answer, so concurrent INVITEs spread
            try:
                opened: Opened = await self._link(worker).request(OpenCall(call))
            except (PortsExhausted, LinkClosed):  # out of ports after all, or died meanwhile: try another
                worker.open_channels -= channels
                worker.free_pairs = 0
                continue
            except BaseException:
                worker.open_channels -= channels
                raise
            worker.free_pairs = opened.rtp_port_pairs_free
            self._calls[call.call_id] = _Call(call, worker)
            return opened.media
        raise PortsExhausted("no ingest worker has a free RTP port pair for every channel")

    async def update_call(self, call: Call) -> None:
        record = self._calls.get(call.call_id)
        if record is not None and record.worker.ready and not record.closed:
            with contextlib.suppress(LinkClosed):  # its worker died: the call is being ended anyway
                await self._link(record.worker).request(UpdateCall(call))
            record.call = call

    async def confirm_call(self, call: Call) -> None:
        record = self._calls.get(call.call_id)
        if record is not None and not record.closed:
            record.confirmed = True
            self._send(record.worker, ConfirmCall(call))

    async def close_call(self, call: Call, reason: SipEndReason) -> None:
        record = self._calls.get(call.call_id)
        if record is None or record.closed:
            return
        record.closed = True
        worker = record.worker
        worker.open_channels -= len(call.channels)
        worker.free_pairs += len(call.channels)
        self._send(worker, CloseCall(call, reason))
        if not record.confirmed:  # never started: no event of it will come
            del self._calls[call.call_id]

    async def events(self) -> AsyncIterator[IngestEvent]:
        """None: the pool's calls are transcribed in the workers, which publish through `publish`."""
        await self._closed.wait()
        nothing: tuple[IngestEvent, ...] = ()
        for event in nothing:  # ends without an event once SIP has ended every call
            yield event

    async def close(self) -> None:
        self._closed.set()

    @property
    def rtp_port_pairs_free(self) -> int:
        return sum(worker.free_pairs for worker in self._workers if worker.ready)

    @property
    def rtp_ports_exhausted(self) -> bool:
        return self.rtp_port_pairs_free == 0

    # -- workers -----------------------------------------------------------------------------
    def _least_loaded(self, channels: int, tried: set[int]) -> _Worker | None:
        fit = [w for w in self._workers if w.ready and w.index not in tried and w.free_pairs >= channels]
        return min(fit, key=lambda w: (w.open_channels, w.index), default=None)

    def _link(self, worker: _Worker) -> Link:
        assert worker.child is not None and worker.child.link is not None
        return worker.child.link

    def _send(self, worker: _Worker, message: object) -> None:
        if worker.ready:
            with contextlib.suppress(LinkClosed):  # it died: `_lost` takes care of the call
                self._link(worker).send(message)

    async def _start(self, worker: _Worker) -> None:
        """Start a process in `worker`'s slot with a fresh arena, and wait until it is ready."""
        worker.generation += 1
        worker.arena = SharedArena.create(arena_name(worker.index, worker.generation), ARENA_BYTES)
        spec = self._spec(index=worker.index, rtp_ports=worker.ports, arena=worker.arena.name)
        child = ChildProcess(worker.name, serve_calls, spec, self._logs)
        worker.child = child
        try:
            link = await child.start()
            async for message in link.receive():
                if isinstance(message, WorkerReady):
                    worker.free_pairs = message.rtp_port_pairs_free
                    worker.ready = True
                    worker.backoff.started()
                    worker.follower = asyncio.create_task(self._follow(worker), name=f"{worker.name}-follower")
                    return
            raise WorkerStartFailed(f"{worker.name} (pid {child.pid}) exited while starting (its log says why)")
        except BaseException:
            await child.reap(0 if self._stopping else EXIT_GRACE_S)
            self._release(worker)
            raise

    def _release(self, worker: _Worker) -> None:
        worker.ready = False
        if worker.arena is not None:
            worker.arena.destroy()
            worker.arena = None

    async def _follow(self, worker: _Worker) -> None:
        """Handle the worker's messages until its link ends; then it is gone."""
        link = self._link(worker)
        async for message in link.receive():
            if isinstance(message, Publish):
                self._published(message.event)
            elif isinstance(message, HangUp):
                self._spawn(self._end_call(message.call_id, message.reason))
            elif isinstance(message, MetricsReport):
                self._metrics.children.update(worker.name, message.families)
                if message.rtp_port_pairs_free is not None:
                    worker.free_pairs = message.rtp_port_pairs_free
        self._lost(worker)

    def _published(self, event: TranscriptEvent) -> None:
        record = self._calls.get(event.call_id)
        if record is not None:
            if isinstance(event, CallStarted):
                record.started, record.started_at = event, time.monotonic()
            elif isinstance(event, SegmentFinal):
                record.finals += 1
            elif isinstance(event, CallEnded):
                record.ended = True
                if record.closed:
                    del self._calls[event.call_id]
        self._publish(event)

    def _lost(self, worker: _Worker) -> None:
        """The worker's link ended: end what it left behind; restart it unless the pool is stopping."""
        worker.ready = False
        self._metrics.children.retire(worker.name)
        reason = EndReason.SHUTDOWN if self._stopping else EndReason.ERROR
        orphans = [record for record in self._calls.values() if record.worker is worker]
        if orphans or not self._stopping:
            log.error("%s (pid %s) is gone with %d calls", worker.name, worker.child.pid if worker.child else None, len(orphans))
        for record in orphans:
            del self._calls[record.call.call_id]
            if record.started is not None and not record.ended:
                self._publish(
                    CallEnded(
                        call_id=record.call.call_id,
                        model=record.started.model,
                        engine=record.started.engine,
                        language=record.started.language,
                        end_reason=reason,
                        duration_ms=int((time.monotonic() - record.started_at) * 1000),
                        final_segments=record.finals,
                    )
                )
            if not record.closed:
                self._spawn(self._end_call(record.call.call_id, SipEndReason.MEDIA_FAILURE))
        worker.open_channels = 0
        if not self._stopping:
            self._spawn(self._restart(worker))

    async def _restart(self, worker: _Worker) -> None:
        assert worker.child is not None
        status = await worker.child.reap()
        self._release(worker)
        log.info("%s ended with status %s: restarting it", worker.name, status)
        while True:
            await asyncio.sleep(worker.backoff.delay())
            try:
                await self._start(worker)
            except WorkerStartFailed as error:
                log.error("%s", error)
                continue
            self.restarts += 1
            log.info("%s restarted (pid %s)", worker.name, worker.child.pid)
            return

    async def _end_call(self, call_id: str, reason: SipEndReason) -> None:
        await self._hang_up(call_id, reason)

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        if self._stopping:  # SIP has stopped and nothing is restarted any more
            coroutine.close()
            return
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
