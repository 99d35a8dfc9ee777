"""Transcribe batches of utterances with an installed Conformer-CTC model (engines/<name>/).

One engine call per batch: NeMo features per utterance, zero-padded into one [B, n_mels, T]
tensor with true lengths (the graph masks the padding, so no length buckets are needed), then
greedy CTC decoding. Times in the results are milliseconds from the start of each utterance.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from asr_stream.audio.features_nemo import batch_features, nemo_log_mel
from asr_stream.inference.conformer.ctc import TimedToken, TimedWord, greedy_ctc, group_words
from asr_stream.inference.conformer.frames import subsampled_lengths
from asr_stream.inference.conformer.manifest import GRAPH_NAME, TOKENIZER_NAME, ConformerManifest
from asr_stream.inference.conformer.session import open_graph
from asr_stream.inference.conformer.tokenizer import SentencePieceTokenizer


@dataclass(frozen=True)
class ConformerTranscript:
    """What one utterance produced."""

    text: str
    tokens: list[TimedToken]
    words: list[TimedWord]


class ConformerRunner:
    """Loads engines/<name>/ once; `transcribe_batch` is safe to call from one worker thread at a time."""

    def __init__(self, engine_dir: Path) -> None:
        engine_dir = Path(engine_dir)
        self.manifest = ConformerManifest.read(engine_dir)
        self.tokenizer = SentencePieceTokenizer(engine_dir / TOKENIZER_NAME)
        self._graph = open_graph(engine_dir / GRAPH_NAME)

    @property
    def sample_rate(self) -> int:
        return self.manifest.features.sample_rate

    def transcribe_batch(self, audios: list[np.ndarray]) -> list[ConformerTranscript]:
        """Transcribe mono float32 waveforms at `sample_rate`, one result per waveform, in order."""
        if not audios:
            return []
        features, lengths = batch_features([nemo_log_mel(audio, self.manifest.features) for audio in audios])
        log_probs = self._graph.run({"audio_signal": features, "length": lengths})
        frames = subsampled_lengths(lengths, self.manifest.subsampling_factor)
        decoded = greedy_ctc(log_probs, frames, self.tokenizer.blank_id, self.manifest.frame_ms)
        return [
            ConformerTranscript(self.tokenizer.decode([t.token_id for t in tokens]), tokens, group_words(tokens, self.tokenizer))
            for tokens in decoded
        ]
