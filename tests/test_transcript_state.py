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


@pytest.mark.parametrize(
    ("previous", "current", "stable"),
    [
        # Chinese has no spaces: the prefix grows character by character.
        ("甚至出现交易几乎停滞", "甚至出现交易几乎停止的情况", "甚至出现交易几乎停"),
        ("广州市房地产", "广州市房地产中介协会", "广州市房地产"),
        ("", "广州市", ""),
        # Whisper sometimes puts spaces between Chinese phrases; punctuation is a unit too.
        ("一二线城市 虽然也处于", "一二线城市 虽然也处于调整中。", "一二线城市 虽然也处于"),
        ("我的ETC账单，不对", "我的ETC账单，有问题", "我的ETC账单，"),
        ("我的ETC账单", "我的ETCS账单", "我的"),  # a Latin run is one unit, as in English
        ("お問い合わせは", "お問い合わせ番号は", "お問い合わせ"),  # Japanese kana and kanji too
        ("the bin on", "the bins on", "the"),
    ],
)
def test_stable_prefix_is_per_character_for_cjk(previous, current, stable):
    assert agreed_prefix(previous, current) == stable


def test_stable_prefix_of_a_chinese_segment():
    segment = _segment()
    segment.partial("甚至出现交易", 1500, "zh", 10)
    segment.partial("甚至出现交易几乎停滞", 2500, "zh", 10)
    assert segment.stable_prefix == "甚至出现交易"
    segment.partial("甚至出现交易几乎停止的情况", 3500, "zh", 10)
    assert segment.stable_prefix == "甚至出现交易几乎停"


def test_partial_events_carry_the_stable_text():
    segment = _segment()
    first = segment.partial("我家门口的路灯", 1500, "zh", 10)
    second = segment.partial("我家门口的路灯坏了", 2500, "zh", 10)
    assert first is not None and first.stable_text == ""
    assert second is not None and second.stable_text == "我家门口的路灯"
    assert second.to_dict()["stable_text"] == "我家门口的路灯"


def test_committed_tokens_are_what_consecutive_hypotheses_share_and_only_grow():
    segment = _segment()
    segment.partial("a", 1000, "en", 10, tokens=(1, 2, 3))
    assert segment.committed == ()
    segment.partial("a b", 2000, "en", 10, tokens=(1, 2, 3, 4, 5))
    assert segment.committed == (1, 2, 3)
    segment.partial("a c", 3000, "en", 10, tokens=(1, 2, 9))  # an answer to an older request: cannot take back
    assert segment.committed == (1, 2, 3)
    segment.partial("a b c", 4000, "en", 10, tokens=(1, 2, 3, 4, 6))
    segment.partial("a b c d", 5000, "en", 10, tokens=(1, 2, 3, 4, 6, 7))
    assert segment.committed == (1, 2, 3, 4, 6)


def test_an_empty_hypothesis_publishes_and_changes_nothing():
    segment = _segment()
    segment.partial("my street", 2000, "en", 50, tokens=(5, 6))
    assert segment.partial("", 2500, "en", 50, tokens=()) is None
    segment.partial("my street light", 3000, "en", 50, tokens=(5, 6, 7))
    assert segment.stable_prefix == "my street" and segment.committed == (5, 6) and segment.revision == 1
