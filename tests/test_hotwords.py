"""Hotword lists and biased decoding, on score matrices whose best paths are known.

The CTC and Paraformer searches are checked where the answer can be worked out by hand: a term
the acoustic scores nearly chose is recovered with the bonus, a term the audio does not contain
is not written into the text, unfinished matches keep no bonus, and without terms the search
returns what greedy decoding returns.
"""

from __future__ import annotations

import numpy as np
import pytest

from asr_stream.inference.ctc import greedy_ctc
from asr_stream.inference.funasr.tokens import TokenTable
from asr_stream.inference.hotwords import (
    MAX_TERMS,
    ContextGraph,
    HotwordError,
    biased_token_search,
    ctc_prefix_beam_search,
    parse_hotwords,
    read_hotwords_file,
)

BLANK = 0


def scores(frames: list[dict[int, float]], classes: int = 8) -> np.ndarray:
    """[T, classes] log-probabilities: each frame's listed probabilities, the rest spread thin."""
    matrix = np.full((len(frames), classes), 1e-4)
    for row, probabilities in zip(matrix, frames):
        for token, probability in probabilities.items():
            row[token] = probability
    return np.log(matrix / matrix.sum(axis=1, keepdims=True))


def test_file_format(tmp_path) -> None:
    path = tmp_path / "hotwords.txt"
    path.write_text("# 住房和城乡建设\n住房公积金\n\n  社保卡  \n住房公积金\n# 不是词\n12345热线\n", encoding="utf-8")
    assert read_hotwords_file(path) == ("住房公积金", "社保卡", "12345热线")
    (tmp_path / "gbk.txt").write_bytes("住房公积金\n".encode("gbk"))
    with pytest.raises(HotwordError, match="not UTF-8"):
        read_hotwords_file(tmp_path / "gbk.txt")
    with pytest.raises(HotwordError, match="cannot read"):
        read_hotwords_file(tmp_path / "missing.txt")
    with pytest.raises(HotwordError, match=f"{MAX_TERMS + 1} terms"):
        parse_hotwords([f"词{i}" for i in range(MAX_TERMS + 1)], "list")
    with pytest.raises(HotwordError, match=r"list:2: a term of 65 characters"):
        parse_hotwords(["好", "长" * 65], "list")


def test_context_graph_keeps_only_completed_terms() -> None:
    graph = ContextGraph([[1, 2, 3], [2, 4]], boost=1.0)
    total, node = 0.0, graph.root
    for token in [1, 2, 3]:  # a whole term: +3, and the walk starts afresh
        delta, node = graph.step(node, token)
        total += delta
    assert (total, node) == (3.0, graph.root)
    total, node = 0.0, graph.root
    for token in [1, 2, 5]:  # broken off after two tokens: the partial bonus goes back
        delta, node = graph.step(node, token)
        total += delta
    assert total == 0.0 and node is graph.root
    total, node = 0.0, graph.root
    for token in [1, 2, 4]:  # [1, 2] breaks off, but its tail [2] starts [2, 4]: the failure link keeps it
        delta, node = graph.step(node, token)
        total += delta
    assert total == 2.0 and node is graph.root
    _, node = graph.step(graph.root, 1)
    assert graph.finish(node) == -1.0  # an unfinished match at the end of the utterance


# CTC frames: 1, blank, 2, blank, then 5 narrowly over 3, blank. Term [1, 2, 3] should win with a bonus.
NEAR_MISS = [{1: 0.9}, {BLANK: 0.9}, {2: 0.9}, {BLANK: 0.9}, {5: 0.55, 3: 0.44}, {BLANK: 0.9}]


def test_ctc_search_recovers_a_near_miss_term() -> None:
    logits = scores(NEAR_MISS)
    greedy = [t.token_id for t in greedy_ctc(logits[None], np.array([len(logits)]), BLANK, 60)[0]]
    assert greedy == [1, 2, 5]
    plain = ctc_prefix_beam_search(logits, BLANK, ContextGraph([]), 60)
    assert [t.token_id for t in plain] == greedy  # no terms: the best path
    biased = ctc_prefix_beam_search(logits, BLANK, ContextGraph([[1, 2, 3]], boost=1.5), 60)
    assert [t.token_id for t in biased] == [1, 2, 3]
    assert [(t.start_ms, t.end_ms) for t in biased] == [(0, 60), (120, 180), (240, 300)]


def test_ctc_search_does_not_invent_an_absent_term() -> None:
    """The audio says 6 7 6; the term [1, 2, 3] has no acoustic support and must not appear."""
    logits = scores([{6: 0.9}, {BLANK: 0.9}, {7: 0.9}, {7: 0.9}, {BLANK: 0.9}, {6: 0.9}])
    biased = ctc_prefix_beam_search(logits, BLANK, ContextGraph([[1, 2, 3]], boost=1.5), 60)
    assert [t.token_id for t in biased] == [6, 7, 6]


def test_ctc_search_collapses_repeats_like_ctc() -> None:
    """A held token is one token; the same token twice needs a blank between (here: 4, 4 after a blank)."""
    logits = scores([{4: 0.9}, {4: 0.9}, {BLANK: 0.9}, {4: 0.9}, {BLANK: 0.9}])
    assert [t.token_id for t in ctc_prefix_beam_search(logits, BLANK, ContextGraph([]), 40)] == [4, 4]


def test_unfinished_match_earns_nothing() -> None:
    """Only the first two tokens of [1, 2, 3] are heard, then 6 is clear: no bonus pulls 3 in."""
    logits = scores([{1: 0.9}, {BLANK: 0.9}, {2: 0.9}, {BLANK: 0.9}, {6: 0.97, 3: 0.01}, {BLANK: 0.9}])
    biased = ctc_prefix_beam_search(logits, BLANK, ContextGraph([[1, 2, 3]], boost=1.5), 60)
    assert [t.token_id for t in biased] == [1, 2, 6]


def test_paraformer_search_per_position() -> None:
    skip = frozenset({0, 2})  # <blank>, </s>
    positions = scores([{1: 0.9}, {2: 0.05, 4: 0.9}, {5: 0.5, 3: 0.45}])
    assert biased_token_search(positions, skip, ContextGraph([])) == [1, 4, 5]
    assert biased_token_search(positions, skip, ContextGraph([[1, 4, 3]], boost=1.5)) == [1, 4, 3]
    assert biased_token_search(positions, skip, ContextGraph([[7, 7]], boost=1.5)) == [1, 4, 5]  # unheard: no effect


def test_spellings_in_both_vocabulary_styles() -> None:
    sentencepiece = TokenTable(
        ["<unk>", "<s>", "</s>", "<|zh|>", "\u2581住房", "住房", "公积金", "住", "房", "公", "积", "金", "\u2581ETC"]
    )
    assert sentencepiece.spellings("住房公积金") == [[4, 6], [5, 6], [7, 8, 9, 10, 11]]
    assert sentencepiece.spellings("ETC") == [[12]]
    assert sentencepiece.spellings("社保") == []  # characters the model cannot write: reported by the caller
    chars = TokenTable(["<blank>", "<s>", "</s>", "社", "保", "卡", "etc", "<unk>"])
    assert chars.spellings("社保卡") == [[3, 4, 5]]
    assert chars.spellings("ETC 社保") == [[6, 3, 4]]  # Latin words whole, lower case as FunASR's vocabularies
    assert chars.decode([3, 6, 4]) == "社etc保"
