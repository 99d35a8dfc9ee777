"""Transcribe batches of utterances with an installed Conformer-CTC model (engines/<name>/).

One engine call per batch: NeMo features per utterance, zero-padded into one [B, n_mels, T]
tensor with true lengths (the graph masks the padding, so no length buckets are needed), then
greedy CTC decoding. Times in the results are milliseconds from the start of each utterance.
Written against the Engine protocol only, shaped like WhisperRunner: the caller picks the backend.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from asr_stream.audio.features_nemo import batch_features, nemo_log_mel
from asr_stream.inference.conformer.frames import subsampled_lengths
from asr_stream.inference.conformer.manifest import FEATURES_INPUT, GRAPH_FILE, LENGTH_INPUT, TOKENIZER_FILE, ConformerManifest
from asr_stream.inference.conformer.tokenizer import SentencePieceTokenizer
from asr_stream.inference.ctc import TimedToken, TimedWord, greedy_ctc, group_words
from asr_stream.inference.engine import Engine
from asr_stream.inference.hotwords import ContextGraph, ctc_prefix_beam_search


@dataclass(frozen=True)
class ConformerSegment:
    """A span of text with times in seconds from the start of the utterance (as Whisper's segments)."""

    start: float
    end: float
    text: str


@dataclass(frozen=True)
class ConformerTranscript:
    """One utterance's result; `language` is the one declared when the model was added (or None)."""

    text: str
    tokens: list[TimedToken]
    words: list[TimedWord]
    language: str | None

    @property
    def segments(self) -> list[ConformerSegment]:
        """One segment from the first word's start to the last word's end (none without words):
        CTC has no sentence boundaries of its own, and its word times are kept in `words`."""
        if not self.words:
            return []
        return [ConformerSegment(self.words[0].start_ms / 1000, self.words[-1].end_ms / 1000, self.text)]


class ConformerRunner:
    """A loaded model; `transcribe_batch` is safe to call from one worker thread at a time (like its engine)."""

    def __init__(self, manifest: ConformerManifest, tokenizer: SentencePieceTokenizer, engine: Engine) -> None:
        self.manifest = manifest
        self.tokenizer = tokenizer
        self.engine = engine
        self._log_probs = engine.outputs[0].name  # by position: LOG_PROBS_OUTPUT in NeMo exports, whatever a re-export named it

    @classmethod
    def load(cls, engine_dir: Path, load_engine: Callable[[Path], Engine]) -> ConformerRunner:
        """Read engines/<name>/ and load its graph with `load_engine` (e.g. `OnnxRuntimeEngine.load`)."""
        engine_dir = Path(engine_dir)
        manifest = ConformerManifest.read(engine_dir)
        return cls(manifest, SentencePieceTokenizer(engine_dir / TOKENIZER_FILE), load_engine(engine_dir / GRAPH_FILE))

    @property
    def sample_rate(self) -> int:
        return self.manifest.features.sample_rate

    def transcribe_batch(self, audios: Sequence[np.ndarray], hotwords: ContextGraph | None = None) -> list[ConformerTranscript]:
        """Transcribe mono float32 waveforms at `sample_rate`, one result per waveform, in order,
        in engine calls of at most `engine.max_batch` utterances; `hotwords` switches from greedy
        decoding to the hotword prefix beam search."""
        step = self.engine.max_batch
        return [result for start in range(0, len(audios), step) for result in self._run(audios[start : start + step], hotwords)]

    def _run(self, audios: Sequence[np.ndarray], hotwords: ContextGraph | None) -> list[ConformerTranscript]:
        features, lengths = batch_features([nemo_log_mel(audio, self.manifest.features) for audio in audios])
        log_probs = self.engine.run({FEATURES_INPUT: features, LENGTH_INPUT: lengths})[self._log_probs]
        frames = subsampled_lengths(lengths, self.manifest.subsampling_factor)
        if hotwords is None:
            decoded = greedy_ctc(log_probs, frames, self.tokenizer.blank_id, self.manifest.frame_ms)
        else:
            blank, frame_ms = self.tokenizer.blank_id, self.manifest.frame_ms
            decoded = [ctc_prefix_beam_search(row[:length], blank, hotwords, frame_ms) for row, length in zip(log_probs, frames)]
        return [
            ConformerTranscript(
                text=self.tokenizer.decode([t.token_id for t in tokens]),
                tokens=tokens,
                words=group_words(tokens, self.tokenizer),
                language=self.manifest.language,
            )
            for tokens in decoded
        ]
