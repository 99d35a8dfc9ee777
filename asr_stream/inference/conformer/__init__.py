"""inference/conformer: NeMo-compatible Conformer-CTC (SentencePiece, greedy CTC)."""
