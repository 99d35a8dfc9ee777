"""Text normalisation and error rates for tests and benchmarks.

Reference transcripts differ from Whisper's style in case, punctuation and numbers ("MISTER" vs
"Mr.", "fourteen fifty-five" vs "1455"), so both sides go through openai-whisper's own normaliser
(packaged as `whisper-normalizer`) before `jiwer` counts edits: scores are then comparable with
published Whisper numbers.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache

import jiwer
from whisper_normalizer.basic import BasicTextNormalizer
from whisper_normalizer.english import EnglishTextNormalizer

_WHITESPACE = re.compile(r"\s+")


@lru_cache(maxsize=1)
def _english() -> EnglishTextNormalizer:
    return EnglishTextNormalizer()


@lru_cache(maxsize=1)
def _basic() -> BasicTextNormalizer:
    return BasicTextNormalizer()


def normalize(text: str, language: str = "en") -> str:
    """Lower case, no punctuation, English spellings and numbers unified; other languages: basic form."""
    normalized = _english()(text) if language == "en" else _basic()(text)
    return _WHITESPACE.sub(" ", normalized).strip()


def corpus_wer(references: Sequence[str], hypotheses: Sequence[str], language: str = "en") -> float:
    """Word error rate over the whole corpus (total edits / total reference words), after `normalize`."""
    return jiwer.wer([normalize(text, language) for text in references], [normalize(text, language) for text in hypotheses])


def corpus_cer(references: Sequence[str], hypotheses: Sequence[str], language: str = "en") -> float:
    """Character error rate, whitespace removed, so languages written without spaces (zh, ja) score fairly."""

    def characters(text: str) -> str:
        return _WHITESPACE.sub("", normalize(text, language))

    return jiwer.cer([characters(text) for text in references], [characters(text) for text in hypotheses])
