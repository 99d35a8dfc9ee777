"""The batch scheduler of another process: requests over a Unix socket, audio through shared memory.

With `workers: N > 1` one inference process owns the model and its `BatchScheduler`, and every
ingest worker (and the main process, for WebRTC sessions) transcribes through an
`InferenceClient`, which is a `TranscriptionQueue` like the scheduler itself, so the per-channel
code cannot tell the difference. `InferenceServer`, in the inference process, submits each request
to the scheduler under the client's name, so batching, finals first, partial replacement and
shedding work across all clients exactly as within one process.

Audio never travels in a pickle: the client writes it into its own `SharedArena` and sends
(offset, count); the server reads it from the arena, which it attached to by name when the client
said hello; the client frees the region when the answer comes back. When the arena is
full, a partial is shed at once (it would be superseded within a second anyway) and a final
waits for space.

Restarts: if the inference process dies, the client keeps its finals (their audio is still in
the arena), reconnects when a new process listens, and sends each again: a request is sent at most
twice, so a segment that kills the process cannot do it forever. Partials in flight are answered
`Shed`, as are partials submitted while no process is there.

A caller that stops waiting (a partial of a segment that closed, an early final the caller's
voice called off) cancels its request over the link: the server withdraws it from the scheduler,
so a queued one never runs, and answers `Shed` so the client frees its region.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from asr_stream.common.ipc import Link, LinkClosed
from asr_stream.common.shm_arena import ArenaAllocator, SharedArena
from asr_stream.inference.live import LiveResult, Utterance
from asr_stream.inference.scheduler import Priority, SchedulerStopped, Shed

log = logging.getLogger(__name__)

#: How often a client without a server tries to connect (the server binds once its model is loaded).
RECONNECT_INTERVAL_S = 0.1
#: Times one request may be sent: the first time, and once more to a restarted inference process.
MAX_SENDS = 2


class InferenceUnavailable(RuntimeError):
    """The request was lost with the inference process twice (or the client stopped)."""


# -- wire messages (small: the audio stays in shared memory) ------------------------------------
@dataclass(frozen=True, slots=True)
class Hello:
    client: str
    arena: str


@dataclass(frozen=True, slots=True)
class Welcome:
    """The server attached the client's arena: requests may be sent (and counted) from now on."""


@dataclass(frozen=True, slots=True)
class Transcribe:
    """One `Utterance`: its audio at (offset, count) of the client's arena, and its other (small) fields."""

    id: int
    key: Hashable
    priority: Priority
    offset: int
    count: int
    hotwords: str | None = None
    partial: bool = False
    prefix: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Cancel:
    """The caller of request `id` stopped waiting: withdraw it if it has not run yet."""

    id: int


@dataclass(frozen=True, slots=True)
class Heard:
    """The answer: a `LiveResult`'s fields."""

    id: int
    text: str
    language: str | None
    tokens: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class NotHeard:
    id: int
    shed: bool  # True: a partial the scheduler shed; False: it failed, `error` says why
    error: str = ""


class _Queue(Protocol):
    async def submit(self, key: Hashable, payload: Utterance, priority: Priority) -> LiveResult: ...


# -- the inference process's side ---------------------------------------------------------------
class InferenceServer:
    """Accepts clients on `path` and submits their requests to `scheduler` (one per connection)."""

    def __init__(self, scheduler: _Queue, path: str | Path) -> None:
        self._scheduler = scheduler
        self._path = str(path)
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        _remove(self._path)  # left by a predecessor that was killed
        self._server = await asyncio.start_unix_server(self._serve, self._path)

    async def stop(self) -> None:
        """Stop accepting and drop every connection (their requests still queued are cancelled)."""
        if self._server is not None:
            self._server.close()
        for task in self._connections:
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        _remove(self._path)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = asyncio.current_task()
        assert connection is not None
        self._connections.add(connection)
        link = Link(reader, writer)
        arena: SharedArena | None = None
        client = "?"
        requests: set[asyncio.Task[None]] = set()
        submissions: dict[int, asyncio.Future[LiveResult]] = {}  # by request id, while in the scheduler
        try:
            async for message in link.receive():
                if isinstance(message, Hello):
                    client, arena = message.client, SharedArena.attach(message.arena)
                    link.send(Welcome())
                elif isinstance(message, Transcribe) and arena is not None:
                    task = asyncio.create_task(self._answer(link, arena, client, message, submissions))
                    requests.add(task)
                    task.add_done_callback(requests.discard)
                elif isinstance(message, Cancel) and message.id in submissions:
                    submissions[message.id].cancel()
        except FileNotFoundError:  # the client's owner removed its arena: the client is gone
            log.warning("inference client %s: its audio arena is gone", client)
        finally:
            for task in requests:
                task.cancel()
            await asyncio.gather(*requests, return_exceptions=True)
            link.close()
            if arena is not None:
                arena.close()
            self._connections.discard(connection)

    async def _answer(
        self, link: Link, arena: SharedArena, client: str, request: Transcribe, submissions: dict[int, asyncio.Future[LiveResult]]
    ) -> None:
        # Copied out at once (a memcpy: about a thousandth of what the features cost): no view of the
        # arena outlives this line, so a client's arena can always be unmapped when it goes away.
        audio = arena.view(request.offset, request.count).copy()
        utterance = Utterance(audio, request.hotwords, partial=request.partial, prefix=request.prefix)
        submission = submissions[request.id] = asyncio.ensure_future(
            self._scheduler.submit((client, request.key), utterance, request.priority)
        )
        try:
            result = await submission
            answer: Heard | NotHeard = Heard(request.id, result.text, result.language, tuple(result.tokens))
        except asyncio.CancelledError:
            answering = asyncio.current_task()
            if not submission.cancelled() or (answering is not None and answering.cancelling()):
                raise  # the connection is going away, not just this request
            answer = NotHeard(request.id, shed=True)  # the client cancelled it: its region can be freed
        except Shed:
            answer = NotHeard(request.id, shed=True)
        except Exception as error:  # the engine failed or the scheduler stopped: the client learns why
            answer = NotHeard(request.id, shed=False, error=f"{type(error).__name__}: {error}")
        finally:
            submissions.pop(request.id, None)
        with contextlib.suppress(LinkClosed):
            link.send(answer)


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


# -- a client's side ----------------------------------------------------------------------------
@dataclass
class _Pending:
    request: Transcribe
    future: asyncio.Future[LiveResult]
    sends: int = 0


@dataclass
class ClientStats:
    """Counters of one client, for its process's metrics."""

    requests: int = 0
    resent: int = 0  # sent again to a restarted inference process
    shed_arena_full: int = 0
    shed_unavailable: int = 0  # partials while no inference process was connected
    lost: int = 0  # finals that failed because the process died with them twice


class InferenceClient:
    """A `TranscriptionQueue` backed by the inference process; see the module docstring."""

    def __init__(self, path: str | Path, arena: SharedArena, name: str) -> None:
        self._path = str(path)
        self._arena = arena
        self._allocator = ArenaAllocator(arena.samples)
        self.name = name
        self._ids = itertools.count()
        self._pending: dict[int, _Pending] = {}
        self._link: Link | None = None
        self._space = asyncio.Event()  # set whenever a region was freed
        self._connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopped = False
        self.stats = ClientStats()

    async def wait_connected(self) -> None:
        await self._connected.wait()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"inference-client {self.name}")

    async def stop(self) -> None:
        """Disconnect; requests still waiting, and any submitted later, fail with SchedulerStopped."""
        self._stopped = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for pending in list(self._pending.values()):
            self._settle(pending, SchedulerStopped())

    async def submit(self, key: Hashable, payload: Utterance, priority: Priority) -> LiveResult:
        """Transcribe `payload` (16 kHz float32 audio, its hotword list); partials may raise `Shed`, like the scheduler's."""
        audio = np.asarray(payload.audio, dtype=np.float32).ravel()
        if self._stopped:
            raise SchedulerStopped()
        if priority is Priority.PARTIAL and self._link is None:
            self.stats.shed_unavailable += 1
            raise Shed(key)
        offset = self._allocator.allocate(audio.shape[0])
        while offset is None:
            if priority is Priority.PARTIAL:
                self.stats.shed_arena_full += 1
                raise Shed(key)
            self._space.clear()
            await self._space.wait()
            if self._stopped:
                raise SchedulerStopped()
            offset = self._allocator.allocate(audio.shape[0])
        self._arena.write(offset, audio)
        future: asyncio.Future[LiveResult] = asyncio.get_running_loop().create_future()
        request = Transcribe(next(self._ids), key, priority, offset, audio.shape[0], payload.hotwords, payload.partial, payload.prefix)
        pending = _Pending(request, future)
        self._pending[pending.request.id] = pending
        self.stats.requests += 1
        if self._link is not None:
            self._send(self._link, pending)
        # Not shielded: a cancelled caller cancels the future and withdraws the request, but the
        # region stays taken until the answer comes back, since the inference process may be
        # reading it right now.
        future.add_done_callback(lambda done: self._withdraw(pending) if done.cancelled() else None)
        return await future

    # -- connection ----------------------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            try:
                link = await Link.connect(self._path)
            except OSError:  # no inference process listening (yet, or again)
                await asyncio.sleep(RECONNECT_INTERVAL_S)
                continue
            try:
                link.send(Hello(self.name, self._arena.name))
                async for message in link.receive():
                    if isinstance(message, Welcome):
                        self._welcomed(link)
                    else:
                        self._answered(message)
            except LinkClosed:  # it went away while we said hello
                pass
            finally:
                await link.aclose()
            if self._link is None:  # a process dying, or not yet serving, accepted and dropped us
                await asyncio.sleep(RECONNECT_INTERVAL_S)
            self._disconnected()  # not when stopped: stop() settles what is pending

    def _welcomed(self, link: Link) -> None:
        """The server is there: send what is pending (again, for what a dead predecessor had)."""
        for pending in sorted(self._pending.values(), key=lambda p: p.request.id):
            if pending.future.cancelled():  # its caller stopped waiting while no process was there
                self._settle(pending, Shed(pending.request.key))
                continue
            if pending.sends:
                self.stats.resent += 1
            self._send(link, pending)
        self._link = link
        self._connected.set()

    def _disconnected(self) -> None:
        """The process went away after welcoming us: partials are shed, finals wait to be sent once more."""
        if self._link is None:
            return
        self._link = None
        self._connected.clear()
        retry = 0
        for pending in list(self._pending.values()):
            if pending.future.done() or pending.request.priority is Priority.PARTIAL:
                self._settle(pending, Shed(pending.request.key))
            elif pending.sends >= MAX_SENDS:
                self.stats.lost += 1
                self._settle(pending, InferenceUnavailable(f"the inference process ended {MAX_SENDS} times with this request"))
            else:
                retry += 1
        log.warning("%s: inference process lost; %d finals will be sent again", self.name, retry)

    def _withdraw(self, pending: _Pending) -> None:
        """Its caller stopped waiting: tell the server, unless the answer is in or the request was never sent."""
        if self._link is None or pending.request.id not in self._pending or not pending.sends:
            return
        with contextlib.suppress(LinkClosed):
            self._link.send(Cancel(pending.request.id))

    def _send(self, link: Link, pending: _Pending) -> None:
        try:
            link.send(pending.request)
        except LinkClosed:  # the process is going away; `_disconnected` decides what happens to it
            return
        pending.sends += 1

    def _answered(self, message: object) -> None:
        if not isinstance(message, Heard | NotHeard):
            return
        pending = self._pending.get(message.id)
        if pending is None:
            return
        if isinstance(message, Heard):
            self._settle(pending, LiveResult(message.text, message.language, message.tokens))
        elif message.shed:
            self._settle(pending, Shed(pending.request.key))
        else:
            self._settle(pending, RuntimeError(message.error))

    def _settle(self, pending: _Pending, outcome: LiveResult | BaseException) -> None:
        """Free the request's region and give its caller the outcome (unless it stopped waiting)."""
        del self._pending[pending.request.id]
        self._allocator.free(pending.request.offset)
        self._space.set()
        if pending.future.done():
            return
        if isinstance(outcome, BaseException):
            pending.future.set_exception(outcome)
        else:
            pending.future.set_result(outcome)
