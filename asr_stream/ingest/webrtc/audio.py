"""One received WebRTC audio track as a call channel: decoded frames -> contiguous 16 kHz `AudioFrame`s.

Telephony channels get gap-free PCM from our own jitter buffer (`rtp.receiver`). aiortc's track
instead yields decoded `av.AudioFrame`s whose `pts` is the sender's RTP timestamp (rebased by
aiortc to its first packet), and a lost or discarded packet is simply missing. This module
restores the contract `ingest.types.CallChannel.frames()` has for calls, so the daemon cannot tell the two
apart: frames contiguous from sample 0, positioned by the sender's clock, every gap as silence.

Sample 0 is the session's first decoded sample. A WHIP sender cannot transmit before ICE and DTLS
complete, so unlike a SIP call there is no audio between "answered" and "first packet" to
account for, and a wall-clock lead-in would only add the handshake and aiortc's jitter-buffer
prefetch (4 frames) as a fake offset.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import av
import numpy as np

from asr_stream.ingest.resample import StreamResampler
from asr_stream.ingest.types import SAMPLE_RATE, AudioFrame, ChannelInfo

log = logging.getLogger(__name__)

# aiortc's decoders (Opus, G.711) are all configured to output signed 16-bit PCM.
_PCM_FORMATS = frozenset({"s16", "s16p"})
_INT16_SCALE = 1.0 / 32768.0


def mono_pcm(frame: av.AudioFrame) -> np.ndarray:
    """A decoded frame as float32 mono in [-1, 1): channels averaged (a browser mic is mono in stereo Opus)."""
    if frame.format.name not in _PCM_FORMATS:
        raise ValueError(f"expected s16 PCM from aiortc's decoder, got {frame.format.name}")
    pcm = frame.to_ndarray()  # packed: (1, samples * channels) interleaved; planar: (channels, samples)
    if not frame.format.is_planar:
        pcm = pcm.reshape(-1, len(frame.layout.channels)).T
    return pcm.mean(axis=0, dtype=np.float32) * np.float32(_INT16_SCALE)


class WebRtcChannelAudio:
    """The channel of a WHIP session: `.info` and `.frames()`, like a telephony channel (`CallChannel`).

    The session's receive loop calls `push` per decoded frame and `end` once; the consumer
    iterates `frames()` once. At most `max_queued_frames` wait for the consumer: beyond that the
    oldest are dropped (counted in `dropped_frames`) and `frames()` yields silence in their
    place, so a stalled consumer costs bounded memory and never shifts the timeline.
    """

    def __init__(self, session_id: str, info: ChannelInfo, *, max_queued_frames: int, max_gap_s: float) -> None:
        self.session_id = session_id
        self.info = info
        self.dropped_frames = 0
        self._queue: asyncio.Queue[AudioFrame | None] = asyncio.Queue(max_queued_frames)
        self._max_gap_s = max_gap_s
        self._resampler: StreamResampler | None = None  # made on the first frame, at the decoder's rate
        self._origin_pts = 0
        self._skew = 0  # input samples removed from the timeline by sender clock jumps
        self._consumed = 0  # input samples (decoder rate) placed on the timeline so far
        self._position = 0  # output samples (16 kHz) emitted so far

    def push(self, frame: av.AudioFrame) -> None:
        """Place one decoded frame at its `pts`: silence before it if packets were lost, overlap trimmed."""
        if frame.pts is None or frame.time_base is None:
            raise ValueError("aiortc delivered an audio frame without a timestamp")
        rate = frame.sample_rate
        if self._resampler is None:
            # One codec per session (our answer names exactly one), so the decoder's rate is fixed.
            self._resampler = StreamResampler(rate, SAMPLE_RATE)
            self._origin_pts = frame.pts
        start = round((frame.pts - self._origin_pts) * frame.time_base * rate) - self._skew
        gap = start - self._consumed
        if abs(gap) > self._max_gap_s * rate:
            # Longer than the session's inactivity timeout: the sender's clock jumped (a restart,
            # a muted track resuming with a new base), not time that passed. Splice, don't fill.
            log.info("WHIP %s: sender clock jumped by %.1f s; continuing without a gap", self.session_id, gap / rate)
            self._skew += gap
            gap = 0
        samples = mono_pcm(frame)
        if gap > 0:
            samples = np.concatenate((np.zeros(gap, np.float32), samples))
        elif gap < 0:
            samples = samples[-gap:]  # a late or duplicate frame overlapping audio already placed
        if samples.shape[0] == 0:
            return
        self._consumed += samples.shape[0]
        self._emit(self._resampler.process(samples))

    def end(self) -> None:
        """No more frames: emit the resampler's tail, then end `frames()`."""
        if self._resampler is not None:
            self._emit(self._resampler.flush())
        self._put(None)

    def frames(self) -> AsyncIterator[AudioFrame]:
        """Contiguous 16 kHz frames from sample 0 until the session ends; iterate once."""
        return self._frames()

    async def _frames(self) -> AsyncIterator[AudioFrame]:
        position = 0
        while (frame := await self._queue.get()) is not None:
            if frame.start_sample > position:  # frames dropped while this consumer lagged
                yield AudioFrame(position, np.zeros(frame.start_sample - position, np.float32))
            yield frame
            position = frame.end_sample

    def _emit(self, samples: np.ndarray) -> None:
        if samples.shape[0]:
            self._put(AudioFrame(self._position, samples))
            self._position += samples.shape[0]

    def _put(self, item: AudioFrame | None) -> None:
        if self._queue.full():
            self._queue.get_nowait()
            self.dropped_frames += 1
        self._queue.put_nowait(item)
