"""Greedy CTC decoding with token and word timestamps, for every CTC model family (Conformer, SenseVoice).

Greedy (best path) decoding is what NeMo's CTC models and FunASR's SenseVoice runtime use by
default: per frame argmax, collapse repeats, drop the blank. Written with numpy because it is a
few vectorised lines per utterance; a beam-search library would add a dependency for no gain
without a language model (hotwords have their own prefix beam search, `hotwords.py`).

Times are milliseconds from the start of the utterance's audio: a model frame after subsampling
covers `frame_ms` (subsampling factor x feature hop, 40 ms for NeMo Conformer x4, 80 ms for x8,
60 ms for FunASR's LFR frames).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class TimedToken:
    """One emitted token and the frames of its run: [start_ms, end_ms)."""

    token_id: int
    start_ms: int
    end_ms: int


@dataclass(frozen=True)
class TimedWord:
    """One word: from its first token's start to its last token's end."""

    text: str
    start_ms: int
    end_ms: int


def greedy_ctc(log_probs: np.ndarray, lengths: np.ndarray, blank_id: int, frame_ms: float) -> list[list[TimedToken]]:
    """Best-path tokens of each utterance in a batch of log-probs [B, T', V+1] with valid lengths [B]."""
    best = log_probs.argmax(axis=-1)
    decoded = []
    for row, length in zip(best, lengths):
        ids = row[: int(length)]
        run_starts = np.flatnonzero(np.diff(ids, prepend=-1) != 0)  # first frame of each run of one id
        run_ends = np.append(run_starts[1:], len(ids))
        decoded.append(
            [
                TimedToken(int(ids[start]), round(start * frame_ms), round(end * frame_ms))
                for start, end in zip(run_starts, run_ends)
                if ids[start] != blank_id
            ]
        )
    return decoded


class WordPieces(Protocol):
    """A vocabulary that marks the pieces that open a word (SentencePiece's U+2581)."""

    def starts_word(self, token_id: int) -> bool: ...

    def decode(self, ids: list[int]) -> str: ...


def group_words(tokens: list[TimedToken], tokenizer: WordPieces) -> list[TimedWord]:
    """Join tokens into words at SentencePiece word boundaries (pieces that start with U+2581)."""
    groups: list[list[TimedToken]] = []
    for token in tokens:
        if not groups or tokenizer.starts_word(token.token_id):
            groups.append([])
        groups[-1].append(token)
    words = (TimedWord(tokenizer.decode([t.token_id for t in group]).strip(), group[0].start_ms, group[-1].end_ms) for group in groups)
    return [word for word in words if word.text]
