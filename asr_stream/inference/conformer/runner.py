"""Transcribe batches of utterances with an installed Conformer-CTC model (engines/<name>/).

One engine call per batch: NeMo features per utterance, zero-padded into one [B, n_mels, T]
tensor with true lengths (the graph masks the padding, so no length buckets are needed), then
greedy CTC decoding. Times in the results are milliseconds from the start of each utterance.
Written against the Engine protocol only: the caller picks the backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Self

import numpy as np

from asr_stream.audio.features_nemo import batch_features, nemo_log_mel
from asr_stream.inference.conformer.ctc import TimedToken, TimedWord, greedy_ctc, group_words
from asr_stream.inference.conformer.frames import subsampled_lengths
from asr_stream.inference.conformer.manifest import GRAPH_FILE, TOKENIZER_FILE, ConformerManifest
from asr_stream.inference.conformer.tokenizer import SentencePieceTokenizer
from asr_stream.inference.engine import Engine, Profile


@dataclass(frozen=True)
class ConformerTranscript:
    """What one utterance produced."""

    text: str
    tokens: list[TimedToken]
    words: list[TimedWord]


class ConformerRunner:
    """A loaded model; `transcribe_batch` is safe to call from one worker thread at a time (like its engine)."""

    def __init__(self, manifest: ConformerManifest, tokenizer: SentencePieceTokenizer, engine: Engine) -> None:
        self.manifest = manifest
        self.tokenizer = tokenizer
        self.engine = engine
        self._log_probs = engine.outputs[0].name  # NeMo names it `logprobs`; the first output either way

    @classmethod
    def load(cls, engine_dir: Path, backend: type[Engine], profile: Profile | None = None) -> Self:
        """Read engines/<name>/ and load its graph with `backend` (e.g. OnnxRuntimeEngine)."""
        engine_dir = Path(engine_dir)
        manifest = ConformerManifest.read(engine_dir)
        return cls(manifest, SentencePieceTokenizer(engine_dir / TOKENIZER_FILE), backend.load(engine_dir / GRAPH_FILE, profile))

    @property
    def sample_rate(self) -> int:
        return self.manifest.features.sample_rate

    def transcribe_batch(self, audios: list[np.ndarray]) -> list[ConformerTranscript]:
        """Transcribe mono float32 waveforms at `sample_rate`, one result per waveform, in order."""
        if not audios:
            return []
        features, lengths = batch_features([nemo_log_mel(audio, self.manifest.features) for audio in audios])
        log_probs = self.engine.run({"audio_signal": features, "length": lengths})[self._log_probs]
        frames = subsampled_lengths(lengths, self.manifest.subsampling_factor)
        decoded = greedy_ctc(log_probs, frames, self.tokenizer.blank_id, self.manifest.frame_ms)
        return [
            ConformerTranscript(self.tokenizer.decode([t.token_id for t in tokens]), tokens, group_words(tokens, self.tokenizer))
            for tokens in decoded
        ]
