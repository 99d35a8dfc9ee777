"""Greedy CTC decoding and word timing on log-prob matrices whose best path is known."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
from test_conformer_tokenizer import train_tokenizer

from asr_stream.inference.conformer.tokenizer import SentencePieceTokenizer
from asr_stream.inference.ctc import TimedToken, greedy_ctc, group_words

BLANK = 5


def log_probs_for(paths: list[list[int]], classes: int = BLANK + 1) -> np.ndarray:
    """[B, T, classes] log-probs whose argmax is each path (shorter paths padded with class 0)."""
    frames = max(len(p) for p in paths)
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(len(paths), frames, classes))
    for row, path in enumerate(paths):
        padded = path + [0] * (frames - len(path))
        logits[row, np.arange(frames), padded] += 20.0
    return logits - np.log(np.exp(logits).sum(-1, keepdims=True))


def test_collapses_repeats_drops_blanks_and_times_runs() -> None:
    path = [BLANK, 1, 1, BLANK, 1, 2, 2, 2, BLANK, 3]
    (tokens,) = greedy_ctc(log_probs_for([path]), np.array([len(path)]), BLANK, frame_ms=40)
    assert tokens == [TimedToken(1, 40, 120), TimedToken(1, 160, 200), TimedToken(2, 200, 320), TimedToken(3, 360, 400)]


def test_frames_past_each_length_are_ignored() -> None:
    paths = [[1, BLANK, 2, 2], [3, 3, BLANK, 4]]
    decoded = greedy_ctc(log_probs_for(paths), np.array([4, 2]), BLANK, frame_ms=80)
    assert [[t.token_id for t in tokens] for tokens in decoded] == [[1, 2], [3]]
    assert decoded[1][0].end_ms == 160


def test_words_join_pieces_at_boundaries(tmp_path: Path) -> None:
    tokenizer = SentencePieceTokenizer(train_tokenizer(tmp_path))
    text = "please enter your agent number"
    path = [tokenizer.blank_id]
    for token_id in tokenizer.encode(text):
        path += [token_id, token_id, tokenizer.blank_id]
    log_probs = log_probs_for([path], classes=tokenizer.vocab_size + 1)
    (tokens,) = greedy_ctc(log_probs, np.array([len(path)]), tokenizer.blank_id, frame_ms=40)
    words = group_words(tokens, tokenizer)
    assert [w.text for w in words] == text.split()
    assert words[0].start_ms == 40 and words[-1].end_ms == (len(path) - 1) * 40
    assert all(a.end_ms < b.start_ms for a, b in itertools.pairwise(words))
