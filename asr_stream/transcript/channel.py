"""Live transcription of one channel: 16 kHz audio in, partial and final events out.

Per channel the audio goes through its own VAD state and segmenter; the model work goes through
the shared `BatchScheduler`, which batches it with every other channel's. The VAD is either the
channel's own detector, called inline on every frame, or a stream of a `BatchedVad` shared by every
channel of the process (the daemon's default), which scores all channels' windows in one batch per
tick and hands the probabilities back up to one tick later; the segmenter takes the audio at once
and the probabilities when they come, so both give the same segments.

While a segment is open it gets partials at low priority as `PartialPolicy` says (transcript/
partials.py: paced by time and by new speech, at most one in flight per channel, the agreed
tokens forced as the decoder's prefix); when it closes, its final goes in at high priority.
Finals are emitted strictly in segment order even if batches finish out of order.

Early finals (`PartialPolicy.early_final`, on by default): a segment closes after `min_silence_ms`
(600 ms) of silence, but its audio is settled as soon as the post-speech pad (300 ms) has arrived
silent (`Segmenter.pending_close`). The final's request goes in then, so the model works during
the rest of the closing silence instead of after it; if the caller speaks on, the request is
cancelled (a queued one never runs) and the segment's final is asked again when it really closes.
The final text is the same either way: the same audio, the same request.

Latency is measured from the wall time at which the end of speech arrived (a final: the segment's
end less its post-speech pad; a partial: the newest audio it covers) to the moment the event is
emitted. It therefore includes the segmenter's wait for closing silence (`min_silence_ms`), then
queueing, batching and the model: what a consumer waiting for the words actually experiences.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from asr_stream.audio.features import SAMPLE_RATE
from asr_stream.audio.segmenter import SegmentClosed, Segmenter, SegmenterConfig, SegmentEvent, SegmentOpened, samples_to_ms
from asr_stream.audio.vad import SpeechDetector, Vad
from asr_stream.audio.vad_batch import InlineVadStream, VadSource
from asr_stream.inference.live import Utterance
from asr_stream.inference.scheduler import Priority, Shed
from asr_stream.transcript.events import SegmentFinal, SegmentPartial
from asr_stream.transcript.partials import PartialPolicy
from asr_stream.transcript.script import ScriptConverter
from asr_stream.transcript.state import Labels, SegmentTranscript

log = logging.getLogger(__name__)


SegmentEventSink = Callable[[SegmentPartial | SegmentFinal], None]

_NO_AUDIO = np.zeros(0, np.float32)
_NO_PROBS = np.zeros(0, np.float32)


class Heard(Protocol):
    """What the model answers (`inference.live.LiveResult`); `tokens` empty for models without a forced prefix."""

    @property
    def text(self) -> str: ...

    @property
    def language(self) -> str | None: ...

    @property
    def tokens(self) -> Sequence[int]: ...


class TranscriptionQueue(Protocol):
    """Where a channel sends audio to be transcribed: the daemon's `BatchScheduler`, shared by every channel."""

    async def submit(self, key: Hashable, payload: Utterance, priority: Priority) -> Heard: ...


@dataclass
class _EarlyFinal:
    """The final requested during a segment's closing silence, for the close it expects."""

    expected: SegmentClosed
    answer: asyncio.Task[Heard]

    def matches(self, closed: SegmentClosed) -> bool:
        return (closed.seq, closed.start, closed.end) == (self.expected.seq, self.expected.start, self.expected.end)

    def drop(self) -> None:
        """Cancel it (a queued request never runs); an answer or failure already in is discarded."""
        if self.answer.done():
            if not self.answer.cancelled():
                self.answer.exception()  # retrieved, so asyncio does not log it as lost
        else:
            self.answer.cancel()


@dataclass
class _OpenSegment:
    transcript: SegmentTranscript
    start: int  # media sample
    last_partial_at: float  # wall (monotonic) time of the last partial's submission, or of the opening
    last_partial_speech_end: int  # the segmenter's speech end at that moment


class ChannelTranscriber:
    """Feed it the channel's audio in media order; it emits events through `emit`."""

    def __init__(
        self,
        *,
        labels: Labels,
        channel: str,
        scheduler: TranscriptionQueue,
        emit: SegmentEventSink,
        segmenter_config: SegmenterConfig = SegmenterConfig(),
        partials: PartialPolicy = PartialPolicy(),
        vad: SpeechDetector | None = None,
        shared_vad: VadSource | None = None,
        clock: Callable[[], float] = time.monotonic,
        script: ScriptConverter | None = None,
        hotwords: str | None = None,
        on_endpoint: Callable[[float], None] = lambda seconds: None,
    ) -> None:
        """`vad`: this channel's own detector (default: a Silero `Vad`); `shared_vad`: score through a
        scorer shared with other channels instead (at most one of the two). `script`: the Chinese
        script of partials and finals (default: Simplified, `text.chinese_script`). `hotwords`: the
        named hotword list the call uses (None: the default list). `on_endpoint(seconds)`: told, as
        each final is emitted, the time since the segmenter decided to close its segment (the
        endpoint -> final latency, without the closing silence that `latency_ms` includes)."""
        if vad is not None and shared_vad is not None:
            raise ValueError("give a channel its own vad or a shared_vad, not both")
        self.labels = labels
        self.channel = channel
        self._scheduler = scheduler
        self._emit = emit
        self._segmenter = Segmenter(segmenter_config)
        self._post_pad_samples = segmenter_config.post_speech_pad_ms * SAMPLE_RATE // 1000
        self._vad = (
            shared_vad.open(self._on_speech_probs) if shared_vad is not None else InlineVadStream(vad or Vad(), self._on_speech_probs)
        )
        self._partials = partials
        self._clock = clock
        self._script = script or ScriptConverter()
        self._hotwords = hotwords
        self._on_endpoint = on_endpoint
        self._early: _EarlyFinal | None = None
        self._open: _OpenSegment | None = None
        self._partial_task: asyncio.Task[None] | None = None
        self._last_final: asyncio.Task[None] | None = None
        self._received = 0  # samples received so far
        self._received_at = clock()  # wall (monotonic) time at which sample `_received` arrived
        self.finals_emitted = 0

    # -- input -------------------------------------------------------------------------
    def feed(self, audio: np.ndarray) -> None:
        """Take the next samples of the channel (16 kHz float32, contiguous media time)."""
        audio = np.asarray(audio, dtype=np.float32).ravel()
        self._received += audio.shape[0]
        self._received_at = self._clock()
        self._handle(self._segmenter.push(audio, _NO_PROBS))
        self._vad.submit(audio)  # its probabilities reach _on_speech_probs now (inline) or within a tick (shared)
        self._maybe_partial()

    def _on_speech_probs(self, probs: np.ndarray) -> None:
        self._handle(self._segmenter.push(_NO_AUDIO, probs))
        if self._partials.early_final:
            self._request_early_final()

    async def finish(self) -> None:
        """The channel ended: close the open segment and wait until every final is out."""
        try:
            await self._vad.drain()  # the last windows' probabilities, before the segmenter closes
        finally:
            self._vad.close()
        self._handle(self._segmenter.finish())
        if self._partial_task is not None:
            self._partial_task.cancel()
        if self._last_final is not None:
            await self._last_final

    def close(self) -> None:
        """Stop without finalising (the call was cancelled): give up the VAD stream and the partial in flight."""
        self._vad.close()
        if self._partial_task is not None:
            self._partial_task.cancel()
        if self._early is not None:
            self._early.drop()
            self._early = None

    # -- segments ----------------------------------------------------------------------
    def _handle(self, events: list[SegmentEvent]) -> None:
        for event in events:
            if isinstance(event, SegmentOpened):
                transcript = SegmentTranscript(self.labels, self.channel, event.seq, event.start_ms)
                self._open = _OpenSegment(transcript, event.start, last_partial_at=self._clock(), last_partial_speech_end=event.start)
            elif isinstance(event, SegmentClosed):
                if self._open is None or self._open.transcript.index != event.seq:
                    continue
                transcript, self._open = self._open.transcript, None
                if self._partial_task is not None:
                    self._partial_task.cancel()  # a preview of a closed segment would be dropped: do not compute it
                early, self._early = self._early, None
                if early is not None and early.matches(event):
                    answer: Awaitable[Heard] = early.answer
                else:
                    if early is not None:
                        early.drop()
                    answer = self._request_final(transcript, event)
                self._last_final = asyncio.create_task(self._final(transcript, event, answer, self._clock(), self._last_final))

    def _request_early_final(self) -> None:
        """Ask for the final of a segment in its closing silence, once its audio is settled; drop
        that request when the caller speaks on (its expected close will not come)."""
        closing = self._segmenter.pending_close()
        if self._early is not None and (closing is None or not self._early.matches(closing)):
            self._early.drop()
            self._early = None
        if closing is None or self._early is not None or self._open is None:
            return
        self._early = _EarlyFinal(closing, asyncio.create_task(self._request_final(self._open.transcript, closing)))

    def _maybe_partial(self) -> None:
        segment = self._open
        if segment is None or (self._partial_task is not None and not self._partial_task.done()):
            return
        speech_end = self._segmenter.speech_end
        if not self._partials.due(
            self._clock(), segment.last_partial_at, speech_end / SAMPLE_RATE, segment.last_partial_speech_end / SAMPLE_RATE
        ):
            return
        audio = self._segmenter.open_audio()
        if audio is None:
            return
        segment.last_partial_at, segment.last_partial_speech_end = self._clock(), speech_end
        prefix = segment.transcript.committed if self._partials.reuse_prefix else ()
        request = Utterance(np.array(audio), self._hotwords, partial=True, prefix=prefix)
        self._partial_task = asyncio.create_task(self._partial(segment.transcript, request, self._received))

    async def _partial(self, transcript: SegmentTranscript, request: Utterance, end_sample: int) -> None:
        key = (self.labels.call_id, self.channel)
        try:
            heard = await self._scheduler.submit(key, request, Priority.PARTIAL)
        except Shed:
            return
        except Exception:
            log.exception("partial transcription failed", extra={"call_id": self.labels.call_id})
            return
        text = self._script.convert(heard.text, heard.language)
        event = transcript.partial(text, samples_to_ms(end_sample), heard.language, self._latency_ms(end_sample), heard.tokens)
        if event is not None:
            self._emit(event)

    async def _request_final(self, transcript: SegmentTranscript, closed: SegmentClosed) -> Heard:
        prefix = transcript.committed if self._partials.final_prefix else ()
        request = Utterance(np.array(closed.audio), self._hotwords, prefix=prefix)
        return await self._scheduler.submit((self.labels.call_id, self.channel, closed.seq), request, Priority.FINAL)

    async def _final(
        self,
        transcript: SegmentTranscript,
        closed: SegmentClosed,
        answer: Awaitable[Heard],
        closed_at: float,
        previous: asyncio.Task[None] | None,
    ) -> None:
        try:
            hypothesis = await answer
            text, language = self._script.convert(hypothesis.text, hypothesis.language), hypothesis.language
        except Exception:
            log.exception("final transcription failed", extra={"call_id": self.labels.call_id})
            text, language = "", None
        if previous is not None:
            await previous  # keep finals in segment order
        if not text.strip() and transcript.revision < 0:
            return  # noise that the model heard as nothing: no consumer saw this segment
        speech_end = max(closed.start, closed.end - self._post_pad_samples)
        self._emit(transcript.final(text, closed.end_ms, language, self._latency_ms(speech_end)))
        self._on_endpoint(self._clock() - closed_at)
        self.finals_emitted += 1

    def _latency_ms(self, media_sample: int) -> int:
        """Now minus the wall time at which `media_sample` arrived (estimated from the last frame)."""
        arrived_at = self._received_at - (self._received - media_sample) / SAMPLE_RATE
        return round((self._clock() - arrived_at) * 1000)
