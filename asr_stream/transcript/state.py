"""Per-segment transcript state: successive hypotheses in, partial and final events out.

The daemon re-transcribes an open segment while it grows and transcribes it once more when it
closes. This module decides what of that reaches consumers:

- a partial is published only when its text differs from the last published one, with a
  revision that grows by one each time; an empty hypothesis (a preview the model could not make)
  publishes nothing and changes nothing;
- the final carries the last revision + 1, is published exactly once, and anything that arrives
  for the segment after it (a partial that was still in flight) is dropped: finals never change;
- `stable_prefix` (the partial event's `stable_text`) is the part of the text that two
  consecutive hypotheses agree on, unit by unit: Whisper rewrites the tail of a growing utterance
  far more often than its head, so an agent-assist UI shows the stable part as settled and the
  rest as provisional. A unit is a space-separated word, except that every CJK character (Han,
  kana, CJK punctuation) is a unit of its own: Chinese and Japanese are written without spaces, so
  a whole Chinese sentence would otherwise be one "word" that any change anywhere makes unstable;
- `committed` is the same agreement in model tokens (LocalAgreement-2, as whisper_streaming
  commits): the tokens two consecutive hypotheses share. The next partial request forces them as
  the decoder's prefix, so a partial costs only the steps of its new tail, and they never change
  until the final.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from asr_stream.transcript.events import SegmentFields, SegmentFinal, SegmentPartial

# One CJK character (CJK punctuation, kana, Han incl. extension A and compatibility ideographs,
# full-width forms), or a run of anything else up to the next space or CJK character.
_CJK = "\u3000-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef"
_UNIT = re.compile(f"[{_CJK}]|[^\\s{_CJK}]+")


def text_units(text: str) -> list[str]:
    """The units `agreed_prefix` compares: words, and single CJK characters."""
    return _UNIT.findall(text)


def agreed_prefix(previous: str, current: str) -> str:
    """The longest run of leading units (words; single CJK characters) two hypotheses share, as it appears in `current`."""
    end = 0
    for old, new in zip(_UNIT.finditer(previous), _UNIT.finditer(current), strict=False):
        if old.group() != new.group():
            break
        end = new.end()
    return current[:end]


def common_prefix(previous: Sequence[int], current: Sequence[int]) -> tuple[int, ...]:
    """The tokens two hypotheses start with alike."""
    shared = 0
    for old, new in zip(previous, current, strict=False):
        if old != new:
            break
        shared += 1
    return tuple(current[:shared])


@dataclass(frozen=True)
class Labels:
    """What every event of a call repeats: which model and engine produced the text."""

    call_id: str
    model: str
    engine: str


@dataclass
class SegmentTranscript:
    """One segment of one channel, from its first partial to its final."""

    labels: Labels
    channel: str
    index: int
    start_ms: int
    revision: int = -1  # the last published revision; -1 before the first event
    last_text: str | None = None
    stable_prefix: str = ""
    committed: tuple[int, ...] = ()
    finalized: bool = False
    _previous_hypothesis: str = field(default="", repr=False)
    _previous_tokens: tuple[int, ...] = field(default=(), repr=False)

    def partial(self, text: str, end_ms: int, language: str | None, latency_ms: int, tokens: Sequence[int] = ()) -> SegmentPartial | None:
        """The partial event for a new hypothesis, or None when nothing consumers see changed.

        `tokens`: the hypothesis in model tokens, for models that take a forced prefix (else empty).
        """
        text = " ".join(text.split())
        if self.finalized or not text:
            return None
        self.stable_prefix = agreed_prefix(self._previous_hypothesis, text)
        self._previous_hypothesis = text
        agreed = common_prefix(self._previous_tokens, tokens)
        if len(agreed) > len(self.committed) and agreed[: len(self.committed)] == self.committed:
            self.committed = agreed  # only ever grows: a partial still in flight with an older prefix cannot shrink it
        self._previous_tokens = tuple(tokens)
        if text == self.last_text:
            return None
        self.revision += 1
        self.last_text = text
        return SegmentPartial(**self._fields(text, end_ms, language, latency_ms), stable_text=self.stable_prefix)

    def final(self, text: str, end_ms: int, language: str | None, latency_ms: int) -> SegmentFinal:
        """The one final event of this segment (revision = last partial + 1)."""
        if self.finalized:
            raise RuntimeError(f"segment {self.labels.call_id}/{self.channel}/{self.index} already has its final")
        self.finalized = True
        self.revision += 1
        self.last_text = " ".join(text.split())
        self.stable_prefix = self.last_text
        return SegmentFinal(**self._fields(self.last_text, end_ms, language, latency_ms))

    def _fields(self, text: str, end_ms: int, language: str | None, latency_ms: int) -> SegmentFields:
        return {
            "call_id": self.labels.call_id,
            "model": self.labels.model,
            "engine": self.labels.engine,
            "language": language,
            "channel": self.channel,
            "index": self.index,
            "revision": self.revision,
            "text": text,
            "start_ms": self.start_ms,
            "end_ms": max(end_ms, self.start_ms),
            "latency_ms": max(0, latency_ms),
        }
