"""WhisperRunner: 16 kHz audio in, text, tokens, segments and language out, through any two Engines.

By default every window is the full 30 s Whisper was trained on (shorter audio is zero-padded):
feeding tiny.en the unpadded mel of a short chunk was measured to loop or stop early on a third
of real clips (NOTES.md). `windows_s` opts into shorter, still padded windows ("buckets") for
short audio, because the encoder's cost grows with the window, not with the speech; a bucket's
output that trips the loop guard is decoded again from the full window (docs/whisper-windows.md
has the measurements and the decision).
Audio longer than a window is processed window by window; all utterances of a batch advance
together, so B calls cost one encoder run and one decoder run per step, not B.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from asr_stream.audio.features import N_SAMPLES, SAMPLE_RATE, log_mel_spectrogram
from asr_stream.inference.engine import Engine
from asr_stream.inference.models import PreparedModel
from asr_stream.inference.whisper.decode import Hypothesis, WhisperDecoder
from asr_stream.inference.whisper.dims import WhisperDims
from asr_stream.inference.whisper.graphs import DECODER, ENCODER, KV_BATCH_AXIS
from asr_stream.inference.whisper.segments import Segment, split_segments
from asr_stream.inference.whisper.tokenizer import WhisperTokenizer


@dataclass(frozen=True)
class Transcript:
    """One utterance's result. `language` is None only for empty audio on a multilingual model."""

    text: str
    tokens: list[int]
    segments: list[Segment]
    language: str | None


FULL_WINDOW_S = N_SAMPLES // SAMPLE_RATE
# The live daemon's windows, and the models measured to keep their accuracy in them on the 39
# held-out English clips (docs/whisper-windows.md): tiny.en's WER was 0.037 vs 0.040 with the full
# window, for about half the CPU time; base's rose to 0.056 from 0.032, so it keeps 30 s.
LIVE_WINDOWS_S: tuple[int, ...] = (10, 20, 30)
LIVE_MARGIN_S = 1.0
BUCKETED_MODELS = frozenset({"whisper-tiny.en"})


def live_windows(model: str) -> tuple[tuple[int, ...], float]:
    """(windows_s, margin_s) for the live daemon: the buckets where measured to keep accuracy, else the full window."""
    return (LIVE_WINDOWS_S, LIVE_MARGIN_S) if model in BUCKETED_MODELS else ((FULL_WINDOW_S,), 0.0)


class WhisperRunner:
    def __init__(
        self,
        encoder: Engine,
        decoder: WhisperDecoder,
        dims: WhisperDims,
        windows_s: Sequence[int] = (FULL_WINDOW_S,),
        margin_s: float = 0.0,
    ) -> None:
        """`windows_s`: the window lengths (seconds) a batch may be encoded in, ending with the full 30 s.

        A batch uses the smallest window >= its longest audio + `margin_s`; the full window is
        also the fallback for a bucket whose output looks broken, so it must be the last entry.
        """
        if not windows_s or list(windows_s) != sorted(set(windows_s)) or windows_s[-1] != FULL_WINDOW_S or windows_s[0] <= 0:
            raise ValueError(f"windows_s must be increasing positive seconds ending with {FULL_WINDOW_S}, not {tuple(windows_s)}")
        self.encoder = encoder
        self.decoder = decoder
        self.dims = dims
        self.tokenizer = decoder.tokenizer
        self.windows_s = tuple(windows_s)
        self.margin_s = margin_s

    def window_for(self, audio_seconds: float) -> int:
        """The smallest window (s) that holds `audio_seconds` plus the margin; the full window at most."""
        return next((window for window in self.windows_s if window >= audio_seconds + self.margin_s), FULL_WINDOW_S)

    @classmethod
    def from_prepared(
        cls,
        prepared: PreparedModel,
        load_engine: Callable[[Path], Engine],
        windows_s: Sequence[int] = (FULL_WINDOW_S,),
        margin_s: float = 0.0,
    ) -> WhisperRunner:
        """Load both graphs with `load_engine` (e.g. `OnnxRuntimeEngine.load`) and the model's tokenizer and rules."""
        tokenizer = WhisperTokenizer.from_file(prepared.tokenizer_path, prepared.dims.is_multilingual)
        decoder = load_engine(prepared.graph_path(DECODER))
        whisper_decoder = WhisperDecoder(decoder, tokenizer, prepared.suppress_ids, prepared.suppress_ids_begin, prepared.dims.n_text_ctx)
        return cls(load_engine(prepared.graph_path(ENCODER)), whisper_decoder, prepared.dims, windows_s, margin_s)

    def encode(self, windows: Sequence[np.ndarray], window_s: int = FULL_WINDOW_S) -> np.ndarray:
        """Cross-attention K/V of up to `max_batch` pieces of audio, each zero-padded to `window_s` seconds."""
        n_samples = window_s * SAMPLE_RATE
        mel = np.stack([log_mel_spectrogram(window, n_mels=self.dims.n_mels, n_samples=n_samples) for window in windows])
        return self.encoder.run({"mel": mel})["cross_kv"]

    def transcribe_batch(self, audios: Sequence[np.ndarray], language: str | None = None, timestamps: bool = False) -> list[Transcript]:
        """Transcribe mono 16 kHz float32 utterances together.

        `language` fixes the language of a multilingual model; None detects it from each
        utterance's first window. English-only models always report "en".
        """
        if language is not None and not self.tokenizer.supports(language):
            raise ValueError(f"this model cannot transcribe language {language!r}")
        english_only = None if self.tokenizer.multilingual else "en"
        languages: list[str | None] = [english_only or language for _ in audios]
        positions = [0] * len(audios)
        tokens: list[list[int]] = [[] for _ in audios]
        segments: list[list[Segment]] = [[] for _ in audios]
        # Each round consumes at least one timestamp step (20 ms) of every pending utterance.
        max_rounds = max((len(audio) for audio in audios), default=0) // 320 + 1
        for _ in range(max_rounds):
            pending = [i for i, audio in enumerate(audios) if positions[i] < len(audio)]
            if not pending:
                break
            for start in range(0, len(pending), self.encoder.max_batch):
                self._decode_round(
                    pending[start : start + self.encoder.max_batch], audios, positions, languages, tokens, segments, timestamps
                )
        return [
            Transcript(text=self.tokenizer.decode(tokens[i]).strip(), tokens=tokens[i], segments=segments[i], language=languages[i])
            for i in range(len(audios))
        ]

    def _decode_round(
        self,
        rows: list[int],
        audios: Sequence[np.ndarray],
        positions: list[int],
        languages: list[str | None],
        tokens: list[list[int]],
        segments: list[list[Segment]],
        timestamps: bool,
    ) -> None:
        """Decode the next window of each utterance in `rows` and advance their positions."""
        windows = [np.asarray(audios[i][positions[i] : positions[i] + N_SAMPLES], dtype=np.float32) for i in rows]
        window_seconds = [len(window) / SAMPLE_RATE for window in windows]
        window_s = self.window_for(max(window_seconds))
        cross_kv = self.encode(windows, window_s)
        undetected = [k for k, i in enumerate(rows) if languages[i] is None]
        if undetected:
            detected = self.decoder.detect_languages(np.take(cross_kv, undetected, axis=KV_BATCH_AXIS))
            for k, language in zip(undetected, detected):
                languages[rows[k]] = language
        row_languages = [languages[i] for i in rows]
        assert all(row_languages), "every row has a fixed or detected language by now"
        if window_s == FULL_WINDOW_S:
            hypotheses = self.decoder.decode(cross_kv, row_languages, window_seconds, timestamps)
        else:
            hypotheses = self._decode_bucket(windows, cross_kv, row_languages, window_seconds, timestamps)
        for i, window, seconds, hypothesis in zip(rows, windows, window_seconds, hypotheses):
            full_window = len(window) == N_SAMPLES and positions[i] + N_SAMPLES < len(audios[i])
            window_segments, consumed = split_segments(hypothesis.tokens, self.tokenizer, positions[i] / SAMPLE_RATE, seconds, full_window)
            tokens[i] += [token for segment in window_segments for token in segment.tokens]
            segments[i] += [segment for segment in window_segments if segment.text.strip()]
            positions[i] += max(1, round(consumed * SAMPLE_RATE))

    def _decode_bucket(
        self, windows: list[np.ndarray], cross_kv: np.ndarray, languages: list[str], window_seconds: list[float], timestamps: bool
    ) -> list[Hypothesis]:
        """Greedy decoding of a short window; rows whose output looks broken start over from the full window.

        The full window, not temperature sampling, is the first remedy: a short window is what
        made tiny.en loop or stop early (NOTES.md). The full-window decode keeps the loop guard's
        sampling retries.
        """
        first_pass = self.decoder.decode_greedy(cross_kv, languages, window_seconds, timestamps)
        broken = [k for k, hypothesis in enumerate(first_pass) if hypothesis is None]
        retried: dict[int, Hypothesis] = {}
        if broken:
            full_kv = self.encode([windows[k] for k in broken])
            retried = dict(
                zip(broken, self.decoder.decode(full_kv, [languages[k] for k in broken], [window_seconds[k] for k in broken], timestamps))
            )
        return [hypothesis or retried[k] for k, hypothesis in enumerate(first_pass)]
