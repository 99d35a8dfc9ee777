"""SentencePiece wrapper, on a tokenizer trained here (in well under a second) on the clip transcripts.

`train_tokenizer` is also the tokenizer of the export and importer tests: no public NeMo
tokenizer is in reach, and a real trained model exercises the same code paths.
"""

from __future__ import annotations

import json
from pathlib import Path

from asr_stream.inference.conformer import export
from asr_stream.inference.conformer.tokenizer import WORD_BOUNDARY, SentencePieceTokenizer

SPEECH = Path(__file__).resolve().parents[1].parent / "shared" / "speech"
VOCAB_SIZE = 96


def english_transcripts() -> list[str]:
    """Lower-cased English references, as NeMo's English tokenizers are lower-case."""
    rows = [json.loads(line) for line in (SPEECH / "manifest.jsonl").read_text().splitlines()]
    return [row["text"].lower() for row in rows if row["lang"] == "en"]


def train_tokenizer(directory: Path, vocab_size: int = VOCAB_SIZE) -> Path:
    return export.train_tokenizer(directory, english_transcripts(), vocab_size)


def test_round_trip_on_transcripts(tmp_path: Path) -> None:
    tokenizer = SentencePieceTokenizer(train_tokenizer(tmp_path))
    assert (tokenizer.vocab_size, tokenizer.blank_id) == (VOCAB_SIZE, VOCAB_SIZE)
    for text in english_transcripts():
        ids = tokenizer.encode(text)
        assert max(ids) < tokenizer.blank_id
        assert tokenizer.decode(ids) == " ".join(text.split())  # SentencePiece folds runs of spaces


def test_word_starts_follow_the_boundary_marker(tmp_path: Path) -> None:
    tokenizer = SentencePieceTokenizer(train_tokenizer(tmp_path))
    ids = tokenizer.encode("press the pound key")
    word_starts = [tokenizer.piece(i) for i in ids if tokenizer.starts_word(i)]
    assert len(word_starts) == 4
    assert all(piece.startswith(WORD_BOUNDARY) for piece in word_starts)
