"""The token list of a FunASR model: id <-> piece, text of a token sequence, SenseVoice's tags.

FunASR's runtime reads `tokens.json` (a JSON list; the index is the id); sherpa-onnx writes
`tokens.txt` with one "piece id" per line. Two vocabulary styles occur, told apart by the pieces:

- SentencePiece (SenseVoice, English Paraformer): a piece that starts a word carries U+2581,
  byte-fallback pieces are `<0xNN>`;
- FunASR's CharTokenizer (Chinese Paraformer): one piece per Chinese character, English words or
  BPE pieces where a trailing `@@` glues a piece to the next; English words are separated by
  spaces, Chinese characters are not (FunASR's `sentence_postprocess`).

Special pieces (`<blank>`, `<s>`, `</s>`, `<unk>`, and SenseVoice's `<|...|>` tags) never reach the text.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

WORD_BOUNDARY = "\u2581"
BPE_CONTINUATION = "@@"
_SPECIAL = re.compile(r"<\|[^|]*\|>|<blank>|<s>|</s>|<unk>|<pad>|<OOV>")
_BYTE = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_TAG = re.compile(r"<\|([^|]+)\|>")
_LATIN = re.compile(r"[A-Za-z0-9'\-.]+")


class TokenError(ValueError):
    """The token file is missing or not in either format; the message names the file."""


def read_tokens(path: Path) -> list[str]:
    """Pieces by id from `tokens.json` (FunASR) or `tokens.txt` ("piece id" per line, sherpa-onnx)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise TokenError(f"{path}: cannot read ({error})") from None
    if Path(path).suffix == ".json":
        try:
            listed = json.loads(text)
        except ValueError as error:
            raise TokenError(f"{path}: not JSON ({error})") from None
        if not isinstance(listed, list) or not listed or not all(isinstance(piece, str) for piece in listed):
            raise TokenError(f"{path}: expected a JSON list of token strings")
        return listed
    pieces: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        piece, _, token_id = line.rstrip("\n").rpartition(" ")
        if not token_id.isdigit() or int(token_id) != len(pieces):
            raise TokenError(f"{path}:{number}: expected '<piece> {len(pieces)}'")
        pieces.append(piece)
    if not pieces:
        raise TokenError(f"{path}: no tokens")
    return pieces


class TokenTable:
    """A model's vocabulary: decoding ids to text, looking pieces up, SenseVoice's tag ids."""

    def __init__(self, pieces: Sequence[str]) -> None:
        self.pieces = tuple(pieces)
        self.ids = {piece: token_id for token_id, piece in enumerate(self.pieces)}
        self.sentencepiece = any(piece.startswith(WORD_BOUNDARY) for piece in self.pieces)
        self._special = [bool(_SPECIAL.fullmatch(piece)) for piece in self.pieces]

    @classmethod
    def read(cls, path: Path) -> TokenTable:
        return cls(read_tokens(path))

    def __len__(self) -> int:
        return len(self.pieces)

    def is_special(self, token_id: int) -> bool:
        return self._special[token_id]

    def tag(self, token_id: int) -> str | None:
        """ "zh" for `<|zh|>`: the name inside a SenseVoice tag, else None."""
        match = _TAG.fullmatch(self.pieces[token_id])
        return match.group(1) if match else None

    def spellings(self, term: str) -> list[list[int]]:
        """Token sequences the model may emit for `term` (empty if its vocabulary cannot write it).

        Greedy longest match over the vocabulary, as a model's own segmentation is not at hand
        (FunASR exports ship the token list, not always the BPE model). For SentencePiece
        vocabularies both the word-initial form (U+2581 in front) and the mid-sentence form are
        given, and for Chinese also one piece per character: inside a sentence written without
        spaces the model may cut the term either way, and each form is one more trie path.
        """
        if self.sentencepiece:
            words = term.split()
            forms = [WORD_BOUNDARY + WORD_BOUNDARY.join(words), WORD_BOUNDARY.join(words)]
            candidates = [self._longest_match(form) for form in forms]
            candidates.append(self._per_character(forms[1]))
        else:
            candidates = [self._char_tokenizer_spelling(term)]
        unique = {tuple(spelling) for spelling in candidates if spelling}
        return [list(spelling) for spelling in sorted(unique)]

    def _longest_match(self, text: str) -> list[int] | None:
        ids, position = [], 0
        while position < len(text):
            for end in range(len(text), position, -1):
                token_id = self.ids.get(text[position:end])
                if token_id is not None and not self._special[token_id]:
                    ids.append(token_id)
                    position = end
                    break
            else:
                return None
        return ids

    def _per_character(self, text: str) -> list[int] | None:
        ids = [self.ids.get(character) for character in text]
        return None if None in ids else ids  # type: ignore[return-value]

    def _char_tokenizer_spelling(self, term: str) -> list[int] | None:
        """Chinese characters one by one, Latin words whole (as FunASR's CharTokenizer splits on spaces), lower case as trained."""
        ids: list[int] = []
        for unit in re.findall(r"[A-Za-z0-9'\-.]+|\S", term):
            token_id = self.ids.get(unit) if unit in self.ids else self.ids.get(unit.lower())
            if token_id is None:
                return None
            ids.append(token_id)
        return ids

    def decode(self, token_ids: Sequence[int]) -> str:
        """The text of a token sequence, special pieces dropped."""
        pieces = [self.pieces[token_id] for token_id in token_ids if not self._special[token_id]]
        return _sentencepiece_text(pieces) if self.sentencepiece else _char_text(pieces)


def _sentencepiece_text(pieces: Sequence[str]) -> str:
    """SentencePiece detokenisation: U+2581 is a space, `<0xNN>` pieces are raw UTF-8 bytes."""
    data = bytearray()
    for piece in pieces:
        byte = _BYTE.fullmatch(piece)
        data += bytes([int(byte.group(1), 16)]) if byte else piece.replace(WORD_BOUNDARY, " ").encode("utf-8")
    return data.decode("utf-8", errors="replace").strip()


def _char_text(pieces: Sequence[str]) -> str:
    """FunASR CharTokenizer text: `@@` glues a piece to the next; Latin words are spaced, Chinese characters are not."""
    text, glue, previous_latin = "", False, False
    for piece in pieces:
        continues = piece.endswith(BPE_CONTINUATION)
        word = piece.removesuffix(BPE_CONTINUATION)
        latin = bool(_LATIN.fullmatch(word))
        if latin and previous_latin and not glue:
            text += " "
        text += word
        glue, previous_latin = continues, latin
    return text.strip()
