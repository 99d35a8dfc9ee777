"""Silero VAD for every channel of a process in one batch per tick, state kept per channel.

Why: one onnxruntime call per channel per 32 ms window costs about 4 ms of CPU per
channel-second, so one core serves ~250 channels; the same windows scored as one batch cost
~1.4 ms (docs/vad.md, docs/benchmarks.md). Issue 12 needs thousands of channels per server.

How: each channel `open`s a `VadChannel` with a `deliver` callback and `submit`s its audio as it
arrives. Completed 512-sample windows wait in the channel; at the next tick (a fixed grid of
`tick_s`; sooner once `max_pending` windows wait) the scorer takes every waiting window of every
channel and runs them through one shared `SileroOnnxModel` on its own thread: round r holds the
r-th waiting window of each channel that has one, so a channel's windows are still scored in order
with its own recurrent state (kept in slot arrays here, gathered and scattered per round). Back on
the event loop each channel's probabilities go to its `deliver`, in window order, exactly as an
inline `Vad.process` would have returned them (same network, same state; only float rounding of
a batched matrix product differs, tests/test_audio_vad_batch.py bounds it).

Added latency: a window waits for the next tick, at most `tick_s` (half of it on average), plus
the batch's own run time (the same CPU work the inline path does, spent once per tick instead of
once per window) and however late the event loop runs the tick.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from asr_stream.audio.vad import WINDOW_SAMPLES, SileroOnnxModel, SileroState, SpeechDetector

log = logging.getLogger(__name__)

#: Default tick: one Silero window (32 ms), so a channel fed in real time has about one window per batch.
TICK_S = 0.032
#: Windows waiting across all channels at which a batch starts without waiting for the tick.
MAX_PENDING = 4096
#: Batches of at most this many channels run on the event loop's thread: they take well under a
#: millisecond, less than handing them to the scorer's thread and back (bench/vad.py --live).
INLINE_CHANNELS = 8

Deliver = Callable[[np.ndarray], None]


class VadStopped(Exception):
    """The shared scorer stopped; the channel's later audio cannot be scored."""


class VadStream(Protocol):
    """What a channel's transcriber needs: submit audio; P(speech) per window reaches `deliver`, in order."""

    def submit(self, audio: np.ndarray) -> None: ...

    async def drain(self) -> None:
        """Return once every window completed by the audio submitted so far has been delivered."""
        ...

    def close(self) -> None:
        """No more audio (idempotent)."""
        ...


class VadSource(Protocol):
    """Something many channels score through (a `BatchedVad`): each `open`s its own stream."""

    def open(self, deliver: Deliver) -> VadStream: ...


class InlineVadStream:
    """One channel's own detector, called synchronously per submission (the unbatched path)."""

    def __init__(self, detector: SpeechDetector, deliver: Deliver) -> None:
        self._detector = detector
        self._deliver = deliver

    def submit(self, audio: np.ndarray) -> None:
        probs = self._detector.process(audio)
        if len(probs):
            self._deliver(probs)

    async def drain(self) -> None:
        return None  # everything was delivered inside submit()

    def close(self) -> None:
        return None


class VadChannel:
    """One channel's handle on a `BatchedVad`: its pending samples, its state slot, its callback."""

    def __init__(self, scorer: BatchedVad, slot: int, deliver: Deliver) -> None:
        self._scorer = scorer
        self.slot = slot
        self._deliver = deliver
        self._pending = np.zeros(0, np.float32)
        self._submitted_windows = 0  # windows completed by the audio submitted so far
        self._delivered_windows = 0
        self._drained: asyncio.Event = asyncio.Event()
        self._drained.set()
        self.closed = False
        self.error: BaseException | None = None

    def submit(self, audio: np.ndarray) -> None:
        self._raise_if_failed()
        if self.closed:
            raise VadStopped("this VAD channel is closed")
        waiting = self._pending.shape[0] // WINDOW_SAMPLES
        self._pending = np.concatenate((self._pending, np.asarray(audio, dtype=np.float32).ravel()))
        completed = self._pending.shape[0] // WINDOW_SAMPLES - waiting
        if completed:
            self._submitted_windows += completed
            self._drained.clear()
            self._scorer._windows_waiting(self, completed)

    async def drain(self) -> None:
        await self._drained.wait()
        self._raise_if_failed()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._scorer._release(self)
            self._drained.set()

    # -- the scorer's side ----------------------------------------------------------------------
    def take_windows(self) -> np.ndarray:
        """The completed windows not yet scored, [k, 512]; the incomplete tail stays."""
        complete = self._pending.shape[0] // WINDOW_SAMPLES
        windows = self._pending[: complete * WINDOW_SAMPLES].reshape(complete, WINDOW_SAMPLES)
        self._pending = self._pending[complete * WINDOW_SAMPLES :]
        return windows

    def deliver(self, probs: np.ndarray) -> None:
        self._delivered_windows += len(probs)
        try:
            if not self.closed and self.error is None:
                self._deliver(probs)
        except Exception as error:  # the channel's own failure: it learns on its next submit/drain
            log.exception("VAD delivery to a channel failed")
            self.error = error
        if self._delivered_windows >= self._submitted_windows:
            self._drained.set()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self._drained.set()

    def _raise_if_failed(self) -> None:
        if self.error is not None:
            raise self.error


@dataclass
class BatchedVadStats:
    """Counters for the bench and metrics: batches run, windows scored, rounds (model calls)."""

    batches: int = 0
    windows: int = 0
    rounds: int = 0


def score_rounds(model: SileroOnnxModel, state: SileroState, windows: list[np.ndarray]) -> tuple[list[np.ndarray], SileroState]:
    """Score `windows[i]` ([k_i, 512]) for channel i of `state`, in order; one model call per round.

    Round r holds the r-th window of every channel that has more than r: a channel's windows
    must run one after another (each needs the state the previous one left).
    """
    counts = np.array([len(w) for w in windows])
    probs = [np.empty(len(w), np.float32) for w in windows]
    recurrent, context = state.recurrent.copy(), state.context.copy()
    for r in range(int(counts.max(initial=0))):
        rows = np.flatnonzero(counts > r)
        batch = np.stack([windows[i][r] for i in rows])
        scored, after = model.run(batch, SileroState(recurrent[:, rows], context[rows]))
        recurrent[:, rows], context[rows] = after.recurrent, after.context
        for row, p in zip(rows, scored):
            probs[row][r] = p
    return probs, SileroState(recurrent, context)


class BatchedVad:
    """The shared scorer of one process: `start()`, `open()` per channel, `stop()` at shutdown."""

    def __init__(self, model: SileroOnnxModel | None = None, tick_s: float = TICK_S, max_pending: int = MAX_PENDING) -> None:
        if tick_s <= 0:
            raise ValueError("tick_s must be positive")
        self._model = model or SileroOnnxModel.shared()
        self.tick_s = tick_s
        self.max_pending = max_pending
        self._state = self._model.initial_state(0)
        self._free_slots: list[int] = []
        self._waiting: dict[VadChannel, None] = {}  # channels with windows to score, in arrival order
        self._pending_windows = 0
        self._work = asyncio.Event()
        self._full = asyncio.Event()
        self._executor: ThreadPoolExecutor | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._channels: set[VadChannel] = set()
        self.stats = BatchedVadStats()

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        # One thread: batches run one at a time, in order (a channel's state passes from one to the next).
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vad")
        self._task = asyncio.create_task(self._run(), name="batched-vad")

    async def stop(self) -> None:
        """Score and deliver what is waiting, then stop; channels still open fail with VadStopped.

        Cancelling `stop` cancels the scorer's task at once (a batch then running in the thread
        finishes there, undelivered).
        """
        if self._task is None:
            return
        self._stopping = True
        self._work.set()
        self._full.set()
        try:
            await self._task  # its last pass scores what is waiting
        finally:
            self._task = None
            for channel in list(self._channels):
                channel.fail(VadStopped("the shared VAD stopped"))
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None

    def open(self, deliver: Deliver) -> VadChannel:
        """A new channel with fresh Silero state; close it when the channel ends."""
        if self._task is None or self._stopping:
            raise VadStopped("the shared VAD is not running")
        channel = VadChannel(self, self._allocate_slot(), deliver)
        self._channels.add(channel)
        return channel

    @property
    def channels(self) -> int:
        return len(self._channels)

    # -- channels' side -------------------------------------------------------------------------
    def _allocate_slot(self) -> int:
        if not self._free_slots:
            used = self._state.context.shape[0]
            grown = self._model.initial_state(max(16, 2 * used))
            grown.recurrent[:, :used], grown.context[:used] = self._state.recurrent, self._state.context
            self._state = grown
            self._free_slots = list(range(grown.context.shape[0] - 1, used - 1, -1))
        slot = self._free_slots.pop()
        self._state.recurrent[:, slot] = 0
        self._state.context[slot] = 0
        return slot

    def _windows_waiting(self, channel: VadChannel, count: int) -> None:
        self._waiting[channel] = None
        self._pending_windows += count
        self._work.set()
        if self._pending_windows >= self.max_pending:
            self._full.set()

    def _release(self, channel: VadChannel) -> None:
        # A batch in flight may still hold this channel's row: its result is dropped (closed), and
        # a channel given this slot meanwhile starts from a zeroed state (_allocate_slot).
        self._channels.discard(channel)
        self._waiting.pop(channel, None)
        self._free_slots.append(channel.slot)

    # -- the batches ----------------------------------------------------------------------------
    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopping:
            await self._work.wait()
            # Ticks on a fixed grid: a window waits for the next grid point, on average half a tick.
            tick = loop.call_at(math.ceil(loop.time() / self.tick_s) * self.tick_s, self._full.set)
            await self._full.wait()
            tick.cancel()
            await self._batch()
        await self._batch()  # what arrived while the last batch ran

    async def _batch(self) -> None:
        channels = list(self._waiting)
        self._waiting.clear()
        self._pending_windows = 0
        self._work.clear()
        self._full.clear()
        if not channels:
            return
        windows = [channel.take_windows() for channel in channels]
        slots = np.array([channel.slot for channel in channels])
        state = SileroState(self._state.recurrent[:, slots], self._state.context[slots])
        loop = asyncio.get_running_loop()
        try:
            if len(windows) <= INLINE_CHANNELS:  # cheaper than the hop to the thread and back
                probs, after = score_rounds(self._model, state, windows)
            else:
                probs, after = await loop.run_in_executor(self._executor, score_rounds, self._model, state, windows)
        except Exception as error:  # the model failed: every channel in the batch learns why
            log.exception("batched VAD failed")
            for channel in channels:
                channel.fail(error)
            return
        self.stats.batches += 1
        self.stats.windows += sum(len(w) for w in windows)
        self.stats.rounds += max(len(w) for w in windows)
        live = [i for i, channel in enumerate(channels) if not channel.closed]
        self._state.recurrent[:, slots[live]] = after.recurrent[:, live]
        self._state.context[slots[live]] = after.context[live]
        for i in live:
            channels[i].deliver(probs[i])
