"""Per-channel streaming segmenter: VAD probabilities in, speech segments (with audio) out.

Every position is MEDIA time: samples at 16 kHz since the channel started (`*_ms` properties
convert), never the wall clock, so a segment maps back onto the call recording exactly.

Decisions are made per VAD window (32 ms) with hysteresis: a window at or above
`start_threshold` starts a candidate; the candidate becomes a segment once the voice has lasted
`min_speech_ms` without dropping below `stop_threshold`; an open segment closes after
`min_silence_ms` below `stop_threshold`. The segment's audio reaches `pre_speech_pad_ms` before
the onset and `post_speech_pad_ms` after the last voiced window, because Silero reacts a window
or two late and word edges are quiet. A segment reaching `max_segment_ms` is split at the quietest
window of its last `split_search_ms`, the next segment starting at the very same sample, so no
audio is lost at a forced cut.

For partial transcripts the daemon can read `Segmenter.open_audio()` whenever it likes (e.g.
once a second); `SegmentGrew` events carry the same view. `pending_close()` tells, during the
closing silence, which segment silence will close and with what audio, so that the final's
transcription can start before the close is certain. Audio is handed out as read-only views
of an append-only buffer: no copy per event, and the samples a view shows never change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from asr_stream.audio.features import SAMPLE_RATE
from asr_stream.audio.vad import WINDOW_SAMPLES, Vad


def samples_to_ms(samples: int) -> int:
    return samples * 1000 // SAMPLE_RATE


@dataclass(frozen=True)
class SegmenterConfig:
    """Segmentation settings; the defaults suit conversational telephone speech into Whisper.

    - start 0.5 / stop 0.35: Silero's own recommendation (stop = start - 0.15); the gap keeps a
      segment open through the dips inside words.
    - min_speech_ms 250: shorter bursts are clicks, coughs or "mm" and cost a model call each.
    - min_silence_ms 600: callers pause 300-500 ms between phrases; closing there would cut
      sentences into fragments Whisper transcribes worse.
    - pads 300 ms each: recovers the soft onset and trailing consonants Silero scores low.
    - max_segment_ms 20 s: with padding it stays well inside Whisper's 30 s window and bounds
      how late a final transcript can be.
    - split_search_ms 5 s: a forced cut looks this far back for a pause between words.
    """

    start_threshold: float = 0.5
    stop_threshold: float = 0.35
    min_speech_ms: int = 250
    min_silence_ms: int = 600
    pre_speech_pad_ms: int = 300
    post_speech_pad_ms: int = 300
    max_segment_ms: int = 20_000
    split_search_ms: int = 5_000

    def __post_init__(self) -> None:
        if not 0 <= self.stop_threshold <= self.start_threshold <= 1:
            raise ValueError("need 0 <= stop_threshold <= start_threshold <= 1")
        if self.post_speech_pad_ms > self.min_silence_ms:
            raise ValueError("post_speech_pad_ms must not exceed min_silence_ms (the pad must have arrived at close)")
        if not 0 < self.split_search_ms < self.max_segment_ms:
            raise ValueError("need 0 < split_search_ms < max_segment_ms")

    def windows(self, ms: int) -> int:
        """A duration in whole VAD windows, rounded up."""
        return -(-ms * SAMPLE_RATE // 1000 // WINDOW_SAMPLES)


@dataclass(frozen=True)
class SegmentOpened:
    seq: int
    start: int  # sample index since the channel started

    @property
    def start_ms(self) -> int:
        return samples_to_ms(self.start)


@dataclass(frozen=True)
class SegmentGrew:
    seq: int
    start: int
    audio: np.ndarray  # read-only view: the segment from `start` up to now

    @property
    def end(self) -> int:
        return self.start + self.audio.shape[0]


@dataclass(frozen=True)
class SegmentClosed:
    seq: int
    start: int
    end: int  # exclusive
    audio: np.ndarray  # read-only view of samples [start, end)
    reason: Literal["silence", "max_length", "end_of_stream"]

    @property
    def start_ms(self) -> int:
        return samples_to_ms(self.start)

    @property
    def end_ms(self) -> int:
        return samples_to_ms(self.end)


SegmentEvent = SegmentOpened | SegmentGrew | SegmentClosed


class _AppendOnlyAudio:
    """Samples [first, first + len) of a stream, in a buffer that doubles when full.

    Existing samples are never overwritten in place (dropping the head copies the tail to a new
    array), which is what makes handing out views safe.
    """

    def __init__(self) -> None:
        self._data = np.zeros(SAMPLE_RATE, np.float32)
        self._length = 0
        self.first = 0

    @property
    def end(self) -> int:
        return self.first + self._length

    def append(self, audio: np.ndarray) -> None:
        needed = self._length + audio.shape[0]
        if needed > self._data.shape[0]:
            grown = np.zeros(max(needed, 2 * self._data.shape[0]), np.float32)
            grown[: self._length] = self._data[: self._length]
            self._data = grown
        self._data[self._length : needed] = audio
        self._length = needed

    def view(self, start: int, end: int) -> np.ndarray:
        part = self._data[start - self.first : end - self.first]
        part.flags.writeable = False
        return part

    def drop_before(self, sample: int) -> None:
        keep = self.view(max(sample, self.first), self.end)
        self._data = np.concatenate((keep, np.zeros(max(SAMPLE_RATE, keep.shape[0]), np.float32)))
        self._length = keep.shape[0]
        self.first = max(sample, self.first)


class Segmenter:
    """Streaming segmenter for one channel; see the module docstring for the rules."""

    def __init__(self, config: SegmenterConfig = SegmenterConfig()) -> None:
        self.config = config
        self._min_speech = config.windows(config.min_speech_ms)
        self._min_silence = config.windows(config.min_silence_ms)
        self._pre_pad = config.pre_speech_pad_ms * SAMPLE_RATE // 1000
        self._post_pad = config.post_speech_pad_ms * SAMPLE_RATE // 1000
        self._max_samples = config.max_segment_ms * SAMPLE_RATE // 1000
        self._search_windows = config.windows(config.split_search_ms)
        self._audio = _AppendOnlyAudio()
        self._n_windows = 0  # windows decided so far; window k covers [512k, 512k + 512)
        self._seq = 0
        self._candidate: int | None = None  # first window of a voice run not yet long enough
        self._open_start: int | None = None  # start sample of the open segment
        self._last_voiced = 0  # end sample of the last window at or above stop_threshold
        self._last_end = 0  # end of the previous segment: the next one may not overlap it
        self._window_energy: list[float] = []  # per window of the open segment, for forced cuts
        self._energy_first_window = 0  # window index of _window_energy[0]

    @property
    def speech_end(self) -> int:
        """End sample of the newest window at or above `stop_threshold` (0 before any)."""
        return self._last_voiced

    def open_audio(self) -> np.ndarray | None:
        """Audio of the open segment so far (read-only view), or None between segments."""
        if self._open_start is None:
            return None
        return self._audio.view(self._open_start, self._audio.end)

    def pending_close(self) -> SegmentClosed | None:
        """The `SegmentClosed` that silence will produce if no voice comes back, once it is known.

        Known once the post-speech pad has arrived and every window up to it was judged silent:
        from then until the close (`min_silence_ms` after the last voiced window) the segment's end
        and audio can no longer change unless a voiced window reopens the question (or a forced cut
        at `max_segment_ms` comes first, which closes it elsewhere). None while speech goes on.
        """
        if self._open_start is None:
            return None
        end = self._last_voiced + self._post_pad
        if self._n_windows * WINDOW_SAMPLES < end:
            return None
        return SegmentClosed(self._seq, self._open_start, end, self._audio.view(self._open_start, end), "silence")

    def push(self, audio: np.ndarray, speech_probs: np.ndarray) -> list[SegmentEvent]:
        """Add the next samples and the VAD probabilities of the windows they completed.

        `speech_probs` is what `Vad.process(audio)` returned for the same samples: window k's
        probability may only arrive once its 512 samples have.
        """
        audio = np.asarray(audio, dtype=np.float32).ravel()
        self._audio.append(audio)
        if (self._n_windows + len(speech_probs)) * WINDOW_SAMPLES > self._audio.end:
            raise ValueError("a VAD probability arrived before the audio of its window")
        events: list[SegmentEvent] = []
        for prob in speech_probs:
            events += self._decide(float(prob))
        if self._open_start is not None and audio.shape[0]:
            events.append(SegmentGrew(self._seq, self._open_start, self._audio.view(self._open_start, self._audio.end)))
        self._forget_old_audio()
        return events

    def finish(self) -> list[SegmentEvent]:
        """End of the channel: close the open segment (trailing pad as far as audio exists)."""
        if self._open_start is None:
            return []
        return [self._close(min(self._last_voiced + self._post_pad, self._audio.end), "end_of_stream")]

    def _decide(self, prob: float) -> list[SegmentEvent]:
        k = self._n_windows
        self._n_windows += 1
        window_end = (k + 1) * WINDOW_SAMPLES
        voiced = prob >= self.config.stop_threshold
        if voiced:
            self._last_voiced = window_end
        if self._open_start is None:
            return self._decide_between_segments(k, prob, voiced)
        window = self._audio.view(window_end - WINDOW_SAMPLES, window_end)
        self._window_energy.append(float(np.dot(window, window)))
        silent_windows = (window_end - self._last_voiced) // WINDOW_SAMPLES
        if silent_windows >= self._min_silence:
            return [self._close(self._last_voiced + self._post_pad, "silence")]
        if window_end - self._open_start >= self._max_samples:
            return self._split()
        return []

    def _decide_between_segments(self, k: int, prob: float, voiced: bool) -> list[SegmentEvent]:
        if self._candidate is None and prob >= self.config.start_threshold:
            self._candidate = k
        elif self._candidate is not None and not voiced:
            self._candidate = None
        if self._candidate is None or k + 1 - self._candidate < self._min_speech:
            return []
        onset = self._candidate * WINDOW_SAMPLES
        self._candidate = None
        return [self._open(max(onset - self._pre_pad, self._last_end, self._audio.first))]

    def _open(self, start: int) -> SegmentOpened:
        self._seq += 1
        self._open_start = start
        # Energies of the windows already in the segment (pre-pad and the voiced run), so a
        # forced cut can consider any of them.
        first_window = start // WINDOW_SAMPLES
        windows = (self._audio.view(max(i * WINDOW_SAMPLES, start), (i + 1) * WINDOW_SAMPLES) for i in range(first_window, self._n_windows))
        self._window_energy = [float(np.dot(w, w)) for w in windows]
        self._energy_first_window = first_window
        return SegmentOpened(self._seq, start)

    def _close(self, end: int, reason: Literal["silence", "max_length", "end_of_stream"]) -> SegmentClosed:
        assert self._open_start is not None, "only an open segment can close"
        closed = SegmentClosed(self._seq, self._open_start, end, self._audio.view(self._open_start, end), reason)
        self._open_start = None
        self._last_end = end
        self._window_energy = []
        return closed

    def _split(self) -> list[SegmentEvent]:
        """Cut at the middle of the quietest window among the last `split_search_ms`."""
        assert self._open_start is not None, "only an open segment can be split"
        energies = self._window_energy[-self._search_windows :]
        quietest = len(self._window_energy) - len(energies) + int(np.argmin(energies))
        cut = (self._energy_first_window + quietest) * WINDOW_SAMPLES + WINDOW_SAMPLES // 2
        cut = max(cut, self._open_start + 1)
        closed = self._close(cut, "max_length")
        opened = self._open(cut)
        return [closed, opened]

    def _forget_old_audio(self) -> None:
        """Keep only what a future segment can still include: the open segment, or the pre-pad
        and candidate run before the next one."""
        if self._open_start is not None:
            keep_from = self._open_start
        else:
            keep_from = (self._candidate if self._candidate is not None else self._n_windows) * WINDOW_SAMPLES - self._pre_pad
            keep_from = max(keep_from, self._last_end)
        if keep_from - self._audio.first > 4 * SAMPLE_RATE:  # drop in big steps: each drop copies
            self._audio.drop_before(keep_from)


def segment_audio(audio: np.ndarray, config: SegmenterConfig = SegmenterConfig(), vad: Vad | None = None) -> list[SegmentClosed]:
    """All segments of one mono 16 kHz recording (the offline path)."""
    segmenter = Segmenter(config)
    events = segmenter.push(audio, (vad or Vad()).process(audio)) + segmenter.finish()
    return [event for event in events if isinstance(event, SegmentClosed)]
