"""WhisperRunner: 16 kHz audio in, text, tokens, segments and language out, on any backend.

By default every window is the full 30 s Whisper was trained on (shorter audio is zero-padded):
feeding tiny.en the unpadded mel of a short chunk was measured to loop or stop early on a third
of real clips (NOTES.md). `windows_s` opts into shorter, still padded windows ("buckets") for
short audio, because the encoder's cost grows with the window, not with the speech; a bucket's
output that trips the loop guard is decoded again from the full window (docs/whisper-windows.md
has the measurements and the decision).
Audio longer than a window is processed window by window; all utterances of a batch advance
together, so B calls cost one encoder run and one decoder run per step, not B.

Features, windows, language detection, the loop guard and the full-window retry live here and in
`decode.py`, once: a backend only supplies a `WhisperCompute` (engine_compute.py for ONNX Runtime
and TensorRT, torch_backend.py for PyTorch), whose encoded batches stay opaque to this module.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from asr_stream.audio.features import N_SAMPLES, SAMPLE_RATE
from asr_stream.inference.engine import Engine
from asr_stream.inference.live import LiveResult, Utterance
from asr_stream.inference.models import PreparedModel, WhisperSpec
from asr_stream.inference.whisper.decode import DecodedWindow, Encoded, WhisperCompute, WhisperDecoder
from asr_stream.inference.whisper.engine_compute import EngineCompute
from asr_stream.inference.whisper.graphs import DECODER, ENCODER
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


# Partials are previews: a shorter window for short open segments, measured on the shared clips
# for its cost and for the partials' agreement with the final (docs/benchmarks.md, "Partials that
# scale"); a broken one is dropped, never retried in the full window.
LIVE_PARTIAL_WINDOWS_S: tuple[int, ...] = (5, 10, 20, 30)


def live_partial_windows(model: str) -> tuple[int, ...]:
    """The windows live partials of `model` may be encoded in."""
    return LIVE_PARTIAL_WINDOWS_S


def _check_windows(windows_s: Sequence[int]) -> tuple[int, ...]:
    if not windows_s or list(windows_s) != sorted(set(windows_s)) or windows_s[-1] != FULL_WINDOW_S or windows_s[0] <= 0:
        raise ValueError(f"windows_s must be increasing positive seconds ending with {FULL_WINDOW_S}, not {tuple(windows_s)}")
    return tuple(windows_s)


class WhisperRunner:
    def __init__(
        self,
        decoder: WhisperDecoder,
        windows_s: Sequence[int] = (FULL_WINDOW_S,),
        margin_s: float = 0.0,
        partial_windows_s: Sequence[int] | None = None,
    ) -> None:
        """`windows_s`: the window lengths (seconds) a batch may be encoded in, ending with the full 30 s.

        A batch uses the smallest window >= its longest audio + `margin_s`; the full window is
        also the fallback for a bucket whose output looks broken, so it must be the last entry.
        `partial_windows_s`: the windows live partials may use instead (None: the same); a partial
        is a preview, so a broken one is dropped rather than retried in the full window.
        """
        self.windows_s = _check_windows(windows_s)
        self.partial_windows_s = _check_windows(partial_windows_s) if partial_windows_s is not None else self.windows_s
        self.decoder = decoder
        self.compute: WhisperCompute = decoder.compute
        self.dims = decoder.dims
        self.tokenizer = decoder.tokenizer
        self.margin_s = margin_s

    @classmethod
    def for_spec(
        cls,
        spec: WhisperSpec,
        compute: WhisperCompute,
        windows_s: Sequence[int] = (FULL_WINDOW_S,),
        margin_s: float = 0.0,
        *,
        partial_windows_s: Sequence[int] | None = None,
    ) -> WhisperRunner:
        """A runner of model `spec` (its tokenizer and suppress rules) on `compute`."""
        tokenizer = WhisperTokenizer.from_file(spec.tokenizer_path, spec.dims.is_multilingual)
        decoder = WhisperDecoder(compute, tokenizer, spec.suppress_ids, spec.suppress_ids_begin, spec.dims)
        return cls(decoder, windows_s, margin_s, partial_windows_s)

    @classmethod
    def from_prepared(
        cls,
        prepared: PreparedModel,
        load_engine: Callable[[Path], Engine],
        windows_s: Sequence[int] = (FULL_WINDOW_S,),
        margin_s: float = 0.0,
        *,
        partial_windows_s: Sequence[int] | None = None,
        encoder: str = ENCODER,
        decoder: str = DECODER,
    ) -> WhisperRunner:
        """Load the `encoder` and `decoder` graphs (the exports, or ENCODER_CPU and DECODER_CPU for ONNX
        Runtime) with `load_engine` (e.g. `OnnxRuntimeEngine.load`)."""
        compute = EngineCompute(
            load_engine(prepared.graph_path(encoder)), load_engine(prepared.graph_path(decoder)), prepared.dims.n_text_ctx
        )
        return cls.for_spec(prepared, compute, windows_s, margin_s, partial_windows_s=partial_windows_s)

    def prompted(self, previous_text: Sequence[int]) -> WhisperRunner:
        """The same model on the same compute (whose `exclusive` it shares), each window prompted with `previous_text` (hotwords)."""
        return WhisperRunner(self.decoder.with_previous_text(previous_text), self.windows_s, self.margin_s, self.partial_windows_s)

    def window_for(self, audio_seconds: float) -> int:
        """The smallest window (s) that holds `audio_seconds` plus the margin; the full window at most."""
        return next((window for window in self.windows_s if window >= audio_seconds + self.margin_s), FULL_WINDOW_S)

    def partial_window_for(self, audio_seconds: float) -> int:
        """The window a live partial of `audio_seconds` is encoded in (see `partial_windows_s`)."""
        return next((window for window in self.partial_windows_s if window >= audio_seconds + self.margin_s), FULL_WINDOW_S)

    def live_window_for(self, request: Utterance) -> int:
        return self.partial_window_for(request.seconds) if request.partial else self.window_for(request.seconds)

    def transcribe_live(self, requests: Sequence[Utterance], language: str | None = None) -> list[LiveResult]:
        """Partials and finals of live segments (inference/live.py): windows by kind, forced prefixes honoured.

        Rows are decoded in groups of one kind, and of one prefix length unless the compute takes
        ragged prefixes (decode.py); every group shares the batch's one encoder run. Audio longer than one window
        takes the offline path (`transcribe_batch`), without a prefix.
        """
        english_only = None if self.tokenizer.multilingual else "en"
        results: dict[int, LiveResult] = {}
        long = [i for i, request in enumerate(requests) if len(request.audio) > N_SAMPLES]
        if long:
            for i, transcript in zip(long, self.transcribe_batch([requests[i].audio for i in long], language)):
                results[i] = LiveResult(transcript.text, transcript.language, tuple(transcript.tokens))
        short = [i for i in range(len(requests)) if i not in results]
        with self.compute.exclusive():
            for start in range(0, len(short), self.compute.max_batch):
                rows = short[start : start + self.compute.max_batch]
                decoded = self._live_round([requests[i] for i in rows], english_only or language)
                results.update(zip(rows, decoded))
        return [results[i] for i in range(len(requests))]

    def _live_round(self, requests: list[Utterance], language: str | None) -> list[LiveResult]:
        audios = [np.asarray(request.audio, dtype=np.float32) for request in requests]
        seconds = [request.seconds for request in requests]
        window_s = max(self.live_window_for(request) for request in requests)
        encoded = self.encode(audios, window_s)
        languages = self._languages(encoded, [language] * len(requests))
        groups: dict[tuple[bool, int], list[int]] = {}
        for row, request in enumerate(requests):
            groups.setdefault((request.partial, 0 if self.compute.ragged_prefixes else len(request.prefix)), []).append(row)
        results: list[LiveResult | None] = [None] * len(requests)
        for (partial, _), rows in groups.items():
            group = encoded if len(rows) == len(requests) else self.compute.select(encoded, rows)
            group_languages = [languages[row] for row in rows]
            group_seconds = [seconds[row] for row in rows]
            prefix = [requests[row].prefix for row in rows]
            if partial:
                decoded: Sequence[DecodedWindow | None] = self.decoder.decode_greedy(
                    group, group_languages, group_seconds, False, prefix, trim_loops=True
                )
            elif window_s == FULL_WINDOW_S:
                decoded = self.decoder.decode(group, group_languages, group_seconds, False, prefix=prefix)
            else:
                decoded = self._decode_bucket([audios[row] for row in rows], group, group_languages, group_seconds, False, prefix)
            for row, window in zip(rows, decoded):
                tokens = (*requests[row].prefix, *window.tokens) if window is not None else ()
                # A loop's first pass is shown but not agreed on: forced into later partials, an early
                # wrong word stayed until the final (churn of stable text 0.001 -> 0.034 on the clips).
                agreeable = () if window is None or window.looped else tokens
                results[row] = LiveResult(self.tokenizer.decode(list(tokens)).strip(), languages[row], agreeable)
        return [result for result in results if result is not None]

    def features(self, windows: Sequence[np.ndarray], window_s: int = FULL_WINDOW_S) -> Any:
        """Log-mel [B, n_mels, 100 x window_s] of pieces of audio, each zero-padded to `window_s` seconds,
        computed where the backend encodes (host arrays, or a tensor already on the GPU)."""
        return self.compute.features(windows, window_s * SAMPLE_RATE, self.dims.n_mels)

    def encode(self, windows: Sequence[np.ndarray], window_s: int = FULL_WINDOW_S) -> Encoded:
        """Up to `compute.max_batch` pieces of audio, encoded in windows of `window_s` seconds."""
        return self.compute.encode(self.features(windows, window_s))

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
        with self.compute.exclusive():
            for _ in range(max_rounds):
                pending = [i for i, audio in enumerate(audios) if positions[i] < len(audio)]
                if not pending:
                    break
                for start in range(0, len(pending), self.compute.max_batch):
                    self._decode_round(
                        pending[start : start + self.compute.max_batch], audios, positions, languages, tokens, segments, timestamps
                    )
        return [
            Transcript(text=self.tokenizer.decode(tokens[i]).strip(), tokens=tokens[i], segments=segments[i], language=languages[i])
            for i in range(len(audios))
        ]

    def decode_features(
        self, mel: np.ndarray, audio_seconds: Sequence[float], languages: Sequence[str | None] | None = None
    ) -> list[DecodedWindow]:
        """Decode full 30 s log-mel windows [B <= max_batch, n_mels, 3000] computed beforehand.

        For benchmarks that time the model rather than the host's feature extraction; the same
        language detection and loop guard as `transcribe_batch`, no timestamps.
        """
        english_only = None if self.tokenizer.multilingual else "en"
        wanted = [english_only or language for language in (languages or [None] * len(mel))]
        with self.compute.exclusive():
            encoded = self.compute.encode(mel)
            return self.decoder.decode(encoded, self._languages(encoded, wanted), audio_seconds, timestamps=False)

    def _languages(self, encoded: Encoded, languages: Sequence[str | None]) -> list[str]:
        """The given language of each row, or the one detected from its encoding where none is given."""
        undetected = [row for row, language in enumerate(languages) if language is None]
        detected = dict(zip(undetected, self.decoder.detect_languages(self.compute.select(encoded, undetected)) if undetected else []))
        return [language or detected[row] for row, language in enumerate(languages)]

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
        encoded = self.encode(windows, window_s)
        row_languages = self._languages(encoded, [languages[i] for i in rows])
        for i, language in zip(rows, row_languages):
            languages[i] = language
        if window_s == FULL_WINDOW_S:
            decoded = self.decoder.decode(encoded, row_languages, window_seconds, timestamps)
        else:
            decoded = self._decode_bucket(windows, encoded, row_languages, window_seconds, timestamps)
        for i, window, seconds, result in zip(rows, windows, window_seconds, decoded):
            full_window = len(window) == N_SAMPLES and positions[i] + N_SAMPLES < len(audios[i])
            window_segments, consumed = split_segments(result.tokens, self.tokenizer, positions[i] / SAMPLE_RATE, seconds, full_window)
            tokens[i] += [token for segment in window_segments for token in segment.tokens]
            segments[i] += [segment for segment in window_segments if segment.text.strip()]
            positions[i] += max(1, round(consumed * SAMPLE_RATE))

    def _decode_bucket(
        self,
        windows: list[np.ndarray],
        encoded: Encoded,
        languages: list[str],
        window_seconds: list[float],
        timestamps: bool,
        prefix: Sequence[Sequence[int]] | None = None,
    ) -> list[DecodedWindow]:
        """Greedy decoding of a short window; rows whose output looks broken start over from the full window.

        The full window, not temperature sampling, is the first remedy: a short window is what
        made tiny.en loop or stop early (NOTES.md). The full-window decode keeps the loop guard's
        sampling retries.
        """
        first_pass = self.decoder.decode_greedy(encoded, languages, window_seconds, timestamps, prefix)
        broken = [k for k, result in enumerate(first_pass) if result is None]
        retried: dict[int, DecodedWindow] = {}
        if broken:
            full = self.encode([windows[k] for k in broken])
            retry_prefix = [prefix[k] for k in broken] if prefix is not None else None
            retry = self.decoder.decode(
                full, [languages[k] for k in broken], [window_seconds[k] for k in broken], timestamps, prefix=retry_prefix
            )
            retried = dict(zip(broken, retry))
        return [result or retried[k] for k, result in enumerate(first_pass)]
