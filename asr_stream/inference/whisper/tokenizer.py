"""Whisper's tokenizer: the `tokenizers` library on the model's tokenizer.json, plus Whisper's special ids.

Timestamp tokens are not in tokenizer.json: they are every id after `<|notimestamps|>`, one per
20 ms of the 30 s window, so they are computed here rather than looked up.
"""

from __future__ import annotations

import re
from pathlib import Path

from tokenizers import Tokenizer

SECONDS_PER_TIMESTAMP = 0.02
_LANGUAGE_TOKEN = re.compile(r"<\|([a-z]{2,3})\|>")


class WhisperTokenizer:
    def __init__(self, tokenizer: Tokenizer, multilingual: bool) -> None:
        self._tokenizer = tokenizer
        self.multilingual = multilingual
        self.eot = self._special("<|endoftext|>")
        self.sot = self._special("<|startoftranscript|>")
        self.transcribe = self._special("<|transcribe|>")
        self.translate = self._special("<|translate|>")
        self.no_speech = self._special("<|nocaptions|>")
        self.no_timestamps = self._special("<|notimestamps|>")
        self.previous_text = self._special("<|startofprev|>")  # opens a prompt of earlier text (hotwords)
        self.timestamp_begin = self.no_timestamps + 1
        # Language tokens sit between <|startoftranscript|> and <|translate|>, in Whisper's order.
        self.languages: dict[str, int] = {}
        for token_id in range(self.sot + 1, self.translate):
            match = _LANGUAGE_TOKEN.fullmatch(tokenizer.id_to_token(token_id) or "")
            if match:
                self.languages[match.group(1)] = token_id

    @classmethod
    def from_file(cls, path: Path, multilingual: bool) -> WhisperTokenizer:
        return cls(Tokenizer.from_file(str(path)), multilingual)

    def _special(self, token: str) -> int:
        token_id = self._tokenizer.token_to_id(token)
        if token_id is None:
            raise ValueError(f"tokenizer has no {token}")
        return token_id

    def supports(self, language: str) -> bool:
        """Whether the model transcribes `language` (English-only models: "en" alone)."""
        return language in self.languages if self.multilingual else language == "en"

    def language_token(self, language: str) -> int:
        if language not in self.languages:
            raise ValueError(f"unknown language {language!r}; known: {', '.join(sorted(self.languages))}")
        return self.languages[language]

    def language_of(self, token_id: int) -> str:
        token = self._tokenizer.id_to_token(token_id)
        if token is None:
            raise ValueError(f"token {token_id} is outside the vocabulary")
        return token.strip("<|>")

    def prompt(self, language: str | None, timestamps: bool) -> list[int]:
        """The decoder prompt. Multilingual models also need a language, known or detected first."""
        prompt = [self.sot]
        if self.multilingual:
            if language is None:
                raise ValueError("a multilingual prompt needs a language (detect it first)")
            prompt += [self.language_token(language), self.transcribe]
        if not timestamps:
            prompt.append(self.no_timestamps)
        return prompt

    def encode(self, text: str) -> list[int]:
        """Text tokens of `text` (no special tokens), as Whisper's byte-level BPE splits it."""
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, token_ids: list[int]) -> str:
        """Text of the text tokens only (special and timestamp tokens dropped)."""
        return self._tokenizer.decode([token for token in token_ids if token < self.eot])

    def timestamp_seconds(self, token_id: int) -> float:
        return (token_id - self.timestamp_begin) * SECONDS_PER_TIMESTAMP
