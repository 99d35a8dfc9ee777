"""Hotwords: domain terms (place, department and policy names) a model should prefer when it hears them.

A hotline's vocabulary is full of terms a general model rarely saw (住房公积金, 12345, a district's
name). How each family uses a list:

- Whisper: the terms become the decoder prompt (its "previous text"), see whisper/prompt.py;
- CTC models (SenseVoice, Conformer-CTC): a CTC prefix beam search in which every token that
  advances a term earns a bonus (`ctc_prefix_beam_search`);
- Paraformer: the same bonus in a beam search over its per-token posteriors (`biased_token_search`).

The bonus follows the context graph of icefall/sherpa-onnx's hotword biasing: the terms' token
sequences form a trie with Aho-Corasick failure links; a hypothesis walks it token by token,
gaining `boost` per matched token; a match that breaks off gives its partial bonus back, so only
completed terms keep theirs. A completed term returns the walk to the root: when one term is a
prefix of another, the shorter one is kept (simpler than icefall's output links, and hotline
lists rarely nest terms).

Without hotwords every family decodes greedily, exactly as before.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from asr_stream.errors import OperatorError
from asr_stream.inference.ctc import TimedToken

#: Bonus per matched token (log-probability units): sherpa-onnx's default hotwords score.
DEFAULT_BOOST = 1.5
#: Beam width of the biased searches; the candidates per frame are the same number of best tokens.
DEFAULT_BEAM = 8
#: Bounds on a list (bad input must not make decoding slow or memory grow): terms, characters per term.
MAX_TERMS = 2000
MAX_TERM_CHARS = 64


class HotwordError(OperatorError):
    """A hotword list cannot be used; the message is one line for the operator."""


@dataclass(frozen=True)
class HotwordLists:
    """A deployment's terms: `default` for every utterance, and `named` lists an utterance may use instead.

    A call picks a named list with the SIP header X-ASR-Hotwords; only names configured here are
    ever used, so no caller's text reaches a prompt. The named list replaces the default one (a
    department's list should repeat the terms every call needs): a Whisper prompt holds one list.
    """

    default: tuple[str, ...] = ()
    named: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    boost: float = DEFAULT_BOOST

    def by_name(self) -> dict[str | None, tuple[str, ...]]:
        """Every list, the default one under None."""
        lists: dict[str | None, tuple[str, ...]] = {None: self.default}
        lists.update(self.named)
        return lists


def parse_hotwords(lines: Iterable[str], source: str) -> tuple[str, ...]:
    """Terms in order, duplicates dropped: one per line, blank lines and lines starting with `#` ignored."""
    terms: dict[str, None] = {}
    for number, line in enumerate(lines, start=1):
        term = line.strip()
        if not term or term.startswith("#"):
            continue
        if len(term) > MAX_TERM_CHARS:
            raise HotwordError(f"{source}:{number}: a term of {len(term)} characters (at most {MAX_TERM_CHARS})")
        terms[term] = None
    if len(terms) > MAX_TERMS:
        raise HotwordError(f"{source}: {len(terms)} terms (at most {MAX_TERMS})")
    return tuple(terms)


def read_hotwords_file(path: str | Path) -> tuple[str, ...]:
    """The terms of a UTF-8 hotwords file (see `parse_hotwords`)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise HotwordError(f"cannot read hotwords file {path}: {error.strerror}") from None
    except UnicodeDecodeError as error:
        raise HotwordError(f"hotwords file {path} is not UTF-8 (byte {error.start})") from None
    return parse_hotwords(text.splitlines(), str(path))


@dataclass(eq=False)
class ContextNode:
    """A trie node: how many tokens of a term it has matched, and whether a term ends here."""

    depth: int
    children: dict[int, ContextNode] = field(default_factory=dict)
    fail: ContextNode | None = None
    end: bool = False


class ContextGraph:
    """The terms' token sequences as an Aho-Corasick automaton that scores hypotheses token by token."""

    def __init__(self, sequences: Iterable[Sequence[int]], boost: float = DEFAULT_BOOST) -> None:
        self.boost = boost
        self.root = ContextNode(depth=0)
        for sequence in sequences:
            node = self.root
            for token in sequence:
                node = node.children.setdefault(token, ContextNode(depth=node.depth + 1))
            node.end = node is not self.root
        self._link_failures()

    def _link_failures(self) -> None:
        """Breadth first: a node's failure link is the longest proper suffix of its path that is also a trie path."""
        queue = deque[ContextNode]()
        for child in self.root.children.values():
            child.fail = self.root
            queue.append(child)
        while queue:
            node = queue.popleft()
            for token, child in node.children.items():
                fallback = node.fail
                while fallback is not self.root and token not in fallback.children:  # type: ignore[union-attr]
                    fallback = fallback.fail  # type: ignore[union-attr]
                child.fail = fallback.children.get(token, self.root) if fallback is not None else self.root
                queue.append(child)

    def step(self, node: ContextNode, token: int) -> tuple[float, ContextNode]:
        """(score change, next node) when a hypothesis at `node` emits `token`."""
        target = node
        while target is not self.root and token not in target.children:
            target = target.fail  # type: ignore[assignment]
        target = target.children.get(token, self.root)
        delta = self.boost * (target.depth - node.depth)
        return (delta, self.root) if target.end else (delta, target)

    def finish(self, node: ContextNode) -> float:
        """Score change at the end of the utterance: an unfinished match gives its partial bonus back."""
        return -self.boost * node.depth


def _log_softmax(scores: np.ndarray) -> np.ndarray:
    shifted = scores - scores.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


@dataclass
class _Prefix:
    """One CTC prefix: its tokens (with the frame each was emitted at), path scores and context state."""

    tokens: tuple[int, ...]
    frames: tuple[int, ...]
    context: ContextNode
    context_score: float
    blank: float = -np.inf  # log P(the frames so far give this prefix, ending in blank)
    non_blank: float = -np.inf  # ... ending in its last token

    @property
    def acoustic(self) -> float:
        return float(np.logaddexp(self.blank, self.non_blank))

    @property
    def score(self) -> float:
        return self.acoustic + self.context_score


def _entry(following: dict[tuple[int, ...], _Prefix], parent: _Prefix, token: int | None, frame: int, graph: ContextGraph) -> _Prefix:
    """The prefix `parent` (+ `token`, emitted at `frame`) in the next frame's set, created with its context state."""
    tokens = parent.tokens if token is None else (*parent.tokens, token)
    if tokens not in following:
        if token is None:
            following[tokens] = _Prefix(tokens, parent.frames, parent.context, parent.context_score)
        else:
            delta, context = graph.step(parent.context, token)
            following[tokens] = _Prefix(tokens, (*parent.frames, frame), context, parent.context_score + delta)
    return following[tokens]


def ctc_prefix_beam_search(
    logits: np.ndarray, blank_id: int, graph: ContextGraph, frame_ms: float, beam: int = DEFAULT_BEAM
) -> list[TimedToken]:
    """Best CTC prefix of one utterance's [T, V] scores (logits or log-probs) with the context bonus.

    Each token is timed [its emitting frame, + 1 frame). The standard prefix beam search: a prefix's
    probability is split into paths ending in blank and in its last token, so a repeated token
    only counts twice when a blank separates the two.
    """
    log_probs = _log_softmax(np.asarray(logits, dtype=np.float64))
    prefixes: dict[tuple[int, ...], _Prefix] = {(): _Prefix((), (), graph.root, 0.0, blank=0.0)}
    candidates_per_frame = min(beam, log_probs.shape[-1])
    for frame, scores in enumerate(log_probs):
        candidates = np.argpartition(scores, -candidates_per_frame)[-candidates_per_frame:]
        following: dict[tuple[int, ...], _Prefix] = {}
        for prefix in prefixes.values():
            stay = _entry(following, prefix, None, frame, graph)
            stay.blank = np.logaddexp(stay.blank, prefix.acoustic + scores[blank_id])
            for token in map(int, candidates):
                if token == blank_id:
                    continue
                if prefix.tokens and token == prefix.tokens[-1]:
                    stay.non_blank = np.logaddexp(stay.non_blank, prefix.non_blank + scores[token])  # the same token, held
                    extended = _entry(following, prefix, token, frame, graph)
                    extended.non_blank = np.logaddexp(extended.non_blank, prefix.blank + scores[token])  # again, after a blank
                else:
                    extended = _entry(following, prefix, token, frame, graph)
                    extended.non_blank = np.logaddexp(extended.non_blank, prefix.acoustic + scores[token])
        prefixes = dict(sorted(following.items(), key=lambda item: item[1].score, reverse=True)[:beam])
    best = max(prefixes.values(), key=lambda prefix: prefix.score + graph.finish(prefix.context))
    return [TimedToken(token, round(frame * frame_ms), round((frame + 1) * frame_ms)) for token, frame in zip(best.tokens, best.frames)]


def biased_token_search(log_probs: np.ndarray, skip_ids: frozenset[int], graph: ContextGraph, beam: int = DEFAULT_BEAM) -> list[int]:
    """Best token sequence of one utterance's [N, V] per-position scores (Paraformer) with the context bonus.

    Each position emits one token; those in `skip_ids` (blank, end of sentence) emit nothing and
    leave the context where it was.
    """
    scores_by_position = _log_softmax(np.asarray(log_probs, dtype=np.float64))
    hypotheses: dict[tuple[int, ...], tuple[float, float, ContextNode]] = {(): (0.0, 0.0, graph.root)}
    candidates_per_position = min(beam, scores_by_position.shape[-1])
    for scores in scores_by_position:
        candidates = np.argpartition(scores, -candidates_per_position)[-candidates_per_position:]
        following: dict[tuple[int, ...], tuple[float, float, ContextNode]] = {}
        for tokens, (acoustic, context_score, context) in hypotheses.items():
            for token in map(int, candidates):
                if token in skip_ids:
                    key, delta, after = tokens, 0.0, context
                else:
                    (delta, after), key = graph.step(context, token), (*tokens, token)
                candidate = (acoustic + scores[token], context_score + delta, after)
                if key not in following or sum(candidate[:2]) > sum(following[key][:2]):
                    following[key] = candidate
        hypotheses = dict(sorted(following.items(), key=lambda item: item[1][0] + item[1][1], reverse=True)[:beam])
    best = max(hypotheses.items(), key=lambda item: item[1][0] + item[1][1] + graph.finish(item[1][2]))
    return list(best[0])
