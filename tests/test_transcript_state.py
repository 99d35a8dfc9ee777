"""Partials change, finals never do: the revision rules consumers rely on."""

from __future__ import annotations

import pytest

from asr_stream.transcript.events import SegmentFinal, SegmentPartial
from asr_stream.transcript.state import Labels, SegmentTranscript, agreed_prefix

LABELS = Labels(call_id="call-1", model="whisper-tiny.en", engine="onnxruntime")


def _segment() -> SegmentTranscript:
    return SegmentTranscript(LABELS, channel="caller", index=3, start_ms=1200)


def test_partials_only_on_change_with_growing_revisions():
    segment = _segment()
    first = segment.partial("my street light", 2200, "en", 80)
    assert isinstance(first, SegmentPartial) and first.revision == 0
    assert segment.partial("my  street light ", 2300, "en", 80) is None  # same words: nothing to publish
    second = segment.partial("my street light is broken", 3200, "en", 90)
    assert second is not None and second.revision == 1
    assert second.segment_id == "call-1/caller/3"


def test_final_is_last_revision_plus_one_and_only_once():
    segment = _segment()
    segment.partial("my street", 2000, "en", 50)
    segment.partial("my street light", 3000, "en", 50)
    final = segment.final("My street light is broken.", 3900, "en", 300)
    assert isinstance(final, SegmentFinal) and final.revision == 2 and final.is_final
    assert segment.partial("a late partial", 3950, "en", 10) is None  # in flight when the final went out
    with pytest.raises(RuntimeError):
        segment.final("again", 4000, "en", 10)


def test_stable_prefix_is_what_consecutive_hypotheses_agree_on():
    segment = _segment()
    segment.partial("the bin on", 1500, "en", 10)
    segment.partial("the bin on main street", 2500, "en", 10)
    assert segment.stable_prefix == "the bin on"
    segment.partial("the bins on main street were", 3500, "en", 10)
    assert segment.stable_prefix == "the"
    assert agreed_prefix("", "anything") == ""
