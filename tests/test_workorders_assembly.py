"""Calls assembled from one partition's events, the offset safe to commit, and the draft built from them."""

from __future__ import annotations

import json
import logging
import re
import uuid
from datetime import timedelta
from pathlib import Path

import jsonschema
import pytest
from workorder_events import T0, CallScript, simple_call

from asr_stream.transcript.events import EndReason, SegmentFinal
from asr_stream.workorders.assembly import PartitionCalls
from asr_stream.workorders.draft import build_draft, draft_json, load_draft_schema, work_order_id
from asr_stream.workorders.records import UnusableRecord, decode_record
from asr_stream.workorders.rules import parse_rules

RULES = parse_rules(
    {
        "categories": [
            {"name": "water", "label": "供水", "zh": ["停水", "水压"], "en": ["water"]},
            {"name": "heating", "zh": ["暖气"], "en": ["heating"]},
        ]
    }
)


def feed(calls: PartitionCalls, events, first_offset: int = 0) -> list:
    closed = []
    for offset, event in enumerate(events, start=first_offset):
        closed += calls.add(offset, event)
    return closed


def new_partition(hours: float = 2) -> PartitionCalls:
    return PartitionCalls(abandon_after=timedelta(hours=hours))


def test_finals_only_duplicates_dropped_channels_merged_in_time_order() -> None:
    script = CallScript("siprec-1@sbc", channels=("caller", "agent"))
    agent_greeting = script.final("agent", "您好，12345热线", 0, 1800)
    caller_1 = script.final("caller", "我家停水了", 2000, 4000)
    agent_2 = script.final("agent", "请问您的地址", 4200, 5600)
    caller_2 = script.final("caller", "幸福小区3号楼", 5800, 7500)
    events = [
        script.started(),
        script.partial("caller", "我家", 2000, 3000),
        caller_1,  # the caller's final is emitted before the agent's earlier one
        agent_greeting,
        caller_1,  # a redelivery
        script.partial("agent", "请问", 4200, 5000),
        caller_2,
        agent_2,
        agent_2,
        script.ended(duration_ms=8000),
    ]
    [closed] = feed(new_partition(), events)
    assert closed.finals == (agent_greeting, caller_1, agent_2, caller_2)
    assert closed.complete and closed.ended is not None and closed.ended.end_reason == EndReason.HANGUP


def test_commit_offset_stays_at_the_earliest_open_call() -> None:
    calls = new_partition()
    assert calls.commit_offset() is None  # nothing read yet: nothing to commit
    a, b = CallScript("a@x"), CallScript("b@x", start=T0 + timedelta(seconds=1))
    assert feed(calls, [None, a.started()]) == []  # offset 0 is a skipped record
    assert calls.commit_offset() == 1
    feed(calls, [b.started(), a.final("caller", "停水", 0, 900), b.final("caller", "暖气", 0, 900)], first_offset=2)
    assert calls.commit_offset() == 1 and calls.open_calls == 2
    [closed_a] = feed(calls, [a.ended(1000)], first_offset=5)
    assert closed_a.started.call_id == "a@x"
    assert calls.commit_offset() == 2  # b is still open: a restart must re-read it from its start
    [closed_b] = feed(calls, [b.ended(1000)], first_offset=6)
    assert closed_b.started.call_id == "b@x"
    assert calls.commit_offset() == 7 and calls.open_calls == 0


def test_a_redelivered_tail_after_the_end_makes_no_second_call() -> None:
    """The daemon re-sends a record and everything after it when an acknowledgement was lost."""
    events = simple_call("c@x")
    tail = events[-3:]  # the last partial, the last final, call.ended
    calls = new_partition()
    closed = feed(calls, events + tail + events)  # even the whole call again, call.started included
    assert len(closed) == 1
    assert calls.commit_offset() == len(events) * 2 + len(tail)


def test_events_of_a_call_whose_start_was_never_seen_are_not_drafted(caplog) -> None:
    """After a restart, a redelivered tail of a call drafted long ago arrives without its call.started."""
    events = simple_call("old@x")
    calls = new_partition()
    with caplog.at_level(logging.WARNING):
        assert feed(calls, events[3:]) == []
    assert calls.open_calls == 0 and calls.commit_offset() == len(events) - 3  # orphans hold nothing back
    assert "call.started was not seen" in caplog.text and "old@x" in caplog.text


def test_a_call_without_call_ended_is_abandoned_by_stream_time() -> None:
    """The daemon died mid-call: without this the partition's committed offset would never move."""
    dead = CallScript("dead@x")
    dead_final = dead.final("caller", "我家停水了", 1000, 3000)
    calls = new_partition(hours=1)
    assert feed(calls, [dead.started(), dead_final]) == []
    later = CallScript("later@x", start=T0 + timedelta(minutes=30))
    assert feed(calls, [later.started()], first_offset=2) == []  # 30 min of stream time: still waiting
    much_later = CallScript("much-later@x", start=T0 + timedelta(minutes=61))
    [abandoned] = feed(calls, [much_later.started()], first_offset=3)
    assert abandoned.started.call_id == "dead@x" and abandoned.ended is None and not abandoned.complete
    assert abandoned.finals == (dead_final,)
    assert calls.commit_offset() == 2
    assert feed(calls, [dead.ended(duration_ms=5000)], first_offset=4) == []  # too late: already drafted


def test_a_call_missing_finals_is_drafted_but_not_complete() -> None:
    script = CallScript("lossy@x")
    events = [script.started(), script.final("caller", "一", 0, 500), script.final("caller", "二", 600, 900), script.ended(1000)]
    [closed] = feed(new_partition(), [events[0], events[2], events[3]])
    assert closed.ended is not None and closed.ended.final_segments == 2 and len(closed.finals) == 1
    assert not closed.complete


# --- drafts -------------------------------------------------------------------------------------


def siprec_call() -> tuple[CallScript, list]:
    script = CallScript("siprec-7@sbc.example", channels=("caller", "agent"), caller_uri="sip:+8613912345678@carrier.example")
    events = [
        script.started(),
        script.final("agent", "您好，这里是12345热线", 0, 1500),
        script.final("caller", "你好，我们小区从昨天开始停水", 1800, 4200),
        script.final("caller", "水压也不够，我的电话是幺三八", 4400, 6000),
        script.final("caller", "一二三四五六七八", 6100, 7600),
        script.final("agent", "好的，13812345678，我们记录了", 7800, 9800),
        script.ended(duration_ms=10_000),
    ]
    return script, events


def test_the_draft_of_a_two_channel_call() -> None:
    _, events = siprec_call()
    [closed] = feed(new_partition(), events)
    draft = build_draft(closed, RULES)
    jsonschema.Draft202012Validator(load_draft_schema(), format_checker=jsonschema.FormatChecker()).validate(draft)
    assert draft["schema"] == "asr-stream.workorder-draft.v1"
    assert draft["work_order_id"] == str(uuid.UUID(draft["work_order_id"])) == work_order_id("siprec-7@sbc.example")
    assert (draft["from_uri"], draft["to_uri"]) == ("sip:+8613912345678@carrier.example", "sip:12345@hotline.example")
    assert (draft["started_at"], draft["ended_at"]) == ("2026-11-22T09:30:00.000Z", "2026-11-22T09:30:10.500Z")
    assert (draft["duration_ms"], draft["end_reason"], draft["complete"], draft["language"]) == (10_000, "hangup", True, "zh")
    assert draft["channels"] == [{"channel": "caller", "label": "Citizen"}, {"channel": "agent", "label": "Agent"}]
    assert [(line["channel"], line["start_ms"]) for line in draft["transcript"]] == [
        ("agent", 0),
        ("caller", 1800),
        ("caller", 4400),
        ("caller", 6100),
        ("agent", 7800),
    ]
    assert draft["transcript"][1] == {"channel": "caller", "start_ms": 1800, "end_ms": 4200, "text": "你好，我们小区从昨天开始停水"}
    assert (draft["category"], draft["category_label"], draft["matched_terms"]) == ("water", "供水", ["停水", "水压"])
    # Said by the caller over two segments, read back by the agent: one entry, the first mention.
    # The hotline's own 12345 is not a contact.
    assert draft["contact_numbers"] == [{"number": "13812345678", "kind": "mobile", "channel": "caller", "start_ms": 4400}]


def test_a_draft_is_byte_identical_however_often_and_from_whatever_copy_it_is_built() -> None:
    _, events = siprec_call()
    [first] = feed(new_partition(), events)
    with_duplicates = events[:3] + events[1:3] + events[3:]
    [second] = feed(new_partition(), with_duplicates, first_offset=100)
    assert draft_json(build_draft(first, RULES)) == draft_json(build_draft(second, RULES))
    assert json.loads(draft_json(build_draft(first, RULES)))["transcript"][0]["text"] == "您好，这里是12345热线"


def test_work_order_ids_are_uuid5_and_pinned() -> None:
    """Changing the namespace would re-number every ticket: this value must never change.

    Documented derivation (docs/workorders.md), reproducible in any language:
    uuid5(uuid5(NAMESPACE_URL, "https://asr-stream.invalid/work-orders"), call_id).
    """
    namespace = uuid.uuid5(uuid.NAMESPACE_URL, "https://asr-stream.invalid/work-orders")
    call_id = "a84b4c76e66710@pc33.example.com"
    assert work_order_id(call_id) == str(uuid.uuid5(namespace, call_id)) == "27e5fda6-d1bd-58bb-b099-2ffb122e2168"
    assert uuid.UUID(work_order_id("x")).version == 5
    assert work_order_id("x") != work_order_id("y")


def test_an_abandoned_call_and_a_call_without_rules() -> None:
    script = CallScript("dead@x", language=None)
    events = [script.started(), script.final("caller", "heating is off", 1000, 2500)]
    calls = new_partition(hours=1)
    feed(calls, events)
    [closed] = feed(calls, [CallScript("next@x", start=T0 + timedelta(hours=2)).started()], first_offset=2)
    draft = build_draft(closed, None)
    jsonschema.validate(draft, load_draft_schema())
    assert (draft["end_reason"], draft["complete"], draft["duration_ms"]) == ("abandoned", False, 2500)
    assert draft["ended_at"] == "2026-11-22T09:30:02.900Z"  # the call's last event
    assert (draft["category"], draft["category_label"], draft["matched_terms"], draft["language"]) == (None, None, [], None)


def test_a_call_the_daemon_lost_is_drafted_incomplete_even_with_every_final() -> None:
    """The daemon died mid-call and its next start published call.ended (lost), counting the finals
    that survived: the draft is made at once (not after the abandon time) and marked incomplete."""
    script = CallScript("crashed@x")
    finals = [script.final("caller", "我家停水了", 1000, 2500), script.final("caller", "三天了", 3000, 4200)]
    lost = script.ended(duration_ms=4200, reason=EndReason.LOST)
    events = [decode_record(event.to_json()) for event in (script.started(), *finals, lost)]  # as the consumer reads them
    [closed] = feed(new_partition(), events)
    draft = build_draft(closed, RULES)
    jsonschema.validate(draft, load_draft_schema())
    assert (draft["end_reason"], draft["complete"], len(draft["transcript"]), draft["category"]) == ("lost", False, 2, "water")


def test_the_draft_schema_knows_every_end_reason() -> None:
    enum = load_draft_schema()["properties"]["end_reason"]["enum"]
    assert set(enum) == {str(reason) for reason in EndReason} | {"abandoned"}


# --- records ------------------------------------------------------------------------------------


def test_decode_record_returns_events_and_ignores_partials() -> None:
    script = CallScript("d@x")
    final = script.final("caller", "你好", 0, 1000)
    assert decode_record(final.to_json()) == final
    assert decode_record(script.partial("caller", "你", 0, 500).to_json()) is None


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "tombstone"),
        (b"\xff\xfe not utf-8", "not JSON"),
        (b'{"schema": ', "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b"{}", "unknown schema None"),
        (
            json.dumps({"schema": "asr-stream.transcript.v2", "event": "segment.final"}).encode(),
            "unknown schema 'asr-stream.transcript.v2'",
        ),
        (
            json.dumps({"schema": "asr-stream.transcript.v1", "event": "segment.final", "call_id": "x"}).encode(),
            "invalid segment.final: (top): 'channel' is a required property",
        ),
        (
            json.dumps(CallScript("x").started().to_dict() | {"event": "call.paused"}).encode(),
            "invalid call.paused: event: 'call.paused' is not one of",
        ),
        (
            json.dumps(CallScript("x").started().to_dict() | {"event": ["call.started"]}).encode(),
            "invalid ['call.started']: event: ['call.started'] is not one of",
        ),
    ],
)
def test_decode_record_names_what_is_wrong(value, reason) -> None:
    with pytest.raises(UnusableRecord, match=re.escape(reason)):
        decode_record(value)


def test_decode_record_reads_fields_added_later_within_v1() -> None:
    """docs/events.md: new optional fields may be added within v1; a reader ignores them."""
    script = CallScript("newer@x")
    for event in (script.started(), script.final("caller", "你好", 0, 1000), script.ended(1200)):
        assert decode_record(json.dumps(event.to_dict() | {"sentiment": "angry"}).encode()) == event


def test_decode_record_rejects_wrong_types_and_impossible_values() -> None:
    final = CallScript("d@x").final("caller", "你好", 0, 1000).to_dict()
    with pytest.raises(UnusableRecord, match="start_ms"):
        decode_record(json.dumps(final | {"start_ms": "zero"}).encode())
    with pytest.raises(UnusableRecord, match="bad media interval"):
        decode_record(json.dumps(final | {"start_ms": 5000}).encode())
    with pytest.raises(UnusableRecord, match="text: 42 is not of type"):
        decode_record(json.dumps(final | {"text": 42}).encode())
    with pytest.raises(UnusableRecord, match=re.escape("invalid segment.final")):  # a final carrying call fields
        decode_record(json.dumps(final | {"parties": []}).encode())
    assert isinstance(decode_record(json.dumps(final).encode()), SegmentFinal)


def test_docs_embed_the_shipped_draft_schema_and_a_valid_example() -> None:
    """docs/workorders.md must not drift from the schema the package ships."""
    docs = (Path(__file__).resolve().parents[1] / "docs" / "workorders.md").read_text(encoding="utf-8")
    blocks = [json.loads(block.split("```", 1)[0]) for block in docs.split("```json\n")[1:]]
    assert blocks[-1] == load_draft_schema()
    [example] = blocks[:-1]
    jsonschema.Draft202012Validator(load_draft_schema()).validate(example)
    assert example["work_order_id"] == work_order_id(example["call_id"])
