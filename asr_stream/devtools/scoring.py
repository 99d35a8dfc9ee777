"""Text normalisation and error rates for tests and benchmarks.

Reference transcripts differ from Whisper's style in case, punctuation and numbers ("MISTER" vs
"Mr.", "fourteen fifty-five" vs "1455"), so both sides go through openai-whisper's own normaliser
(packaged as `whisper-normalizer`) before `jiwer` counts edits: scores are then comparable with
published Whisper numbers.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from functools import lru_cache

import jiwer
from whisper_normalizer.basic import BasicTextNormalizer
from whisper_normalizer.english import EnglishTextNormalizer

from asr_stream.transcript.state import text_units

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


def _comparable(text: str) -> list[str]:
    """Units of a hypothesis as a reader compares them: case and punctuation do not count as a change."""
    units = (re.sub(r"[^\w]", "", unit.lower()) for unit in text_units(text))
    return [unit for unit in units if unit]


def churn(versions: Sequence[str]) -> tuple[int, int]:
    """(words changed, words shown) over the partials of one segment: `versions` is its partials'
    texts in order, then its final's.

    A word a partial showed is kept when every later partial and the final still have it in the
    same place of an alignment (difflib's matching blocks): words that only follow it or come
    before it do not change it, a different or missing word does.
    """
    units = [_comparable(text) for text in versions]
    changed = shown = 0
    for i, partial in enumerate(units[:-1]):
        kept = set(range(len(partial)))
        for later in units[i + 1 :]:
            blocks = difflib.SequenceMatcher(None, partial, later, autojunk=False).get_matching_blocks()
            kept &= {block.a + k for block in blocks for k in range(block.size)}
        changed += len(partial) - len(kept)
        shown += len(partial)
    return changed, shown
