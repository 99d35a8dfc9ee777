"""SentencePiece tokenizer of a NeMo BPE/unigram CTC model.

NeMo's CTC vocabulary is the SentencePiece vocabulary in its own order (ids 0..V-1) with the CTC
blank appended as id V, so SentencePiece ids pass straight through; only the blank is ours.
"""

from __future__ import annotations

from pathlib import Path

import sentencepiece

# SentencePiece marks the start of a word with this meta-symbol (U+2581) at the front of a piece.
WORD_BOUNDARY = "\u2581"


class SentencePieceTokenizer:
    """A loaded SentencePiece model: id <-> piece, detokenisation, word boundaries."""

    def __init__(self, model_path: Path) -> None:
        self._processor = sentencepiece.SentencePieceProcessor(model_file=str(model_path))
        self._starts_word = [self._processor.id_to_piece(i).startswith(WORD_BOUNDARY) for i in range(self.vocab_size)]

    @property
    def vocab_size(self) -> int:
        """Pieces in the model; the CTC blank is this id."""
        return self._processor.get_piece_size()

    @property
    def blank_id(self) -> int:
        return self.vocab_size

    def encode(self, text: str) -> list[int]:
        return self._processor.encode(text)

    def spellings(self, term: str) -> list[list[int]]:
        """The model's pieces for a hotword (one spelling), none if it needs the unknown piece."""
        ids = self.encode(term)
        return [] if not ids or self._processor.unk_id() in ids else [ids]

    def decode(self, ids: list[int]) -> str:
        """Text of a sequence of piece ids (blank must already be removed)."""
        return self._processor.decode(ids)

    def piece(self, token_id: int) -> str:
        return self._processor.id_to_piece(token_id)

    def starts_word(self, token_id: int) -> bool:
        """Whether the piece opens a new word (carries the U+2581 prefix)."""
        return self._starts_word[token_id]
