"""Transcript events: wire form, schema contract, and the invariants consumers rely on."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from asr_stream.transcript.events import (
    SCHEMA_ID,
    CallEnded,
    CallStarted,
    ChannelInfo,
    EndReason,
    Party,
    SegmentFinal,
    SegmentPartial,
    TranscriptEvent,
    load_schema,
    parse_event,
)

COMMON = {"call_id": "a84b4c76e66710@pc33.example.com", "model": "whisper-tiny.en", "engine": "onnxruntime-cpu", "language": "en"}


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = load_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


def one_call() -> list[TranscriptEvent]:
    """A short call: two channels, a segment with two partials and its final."""
    return [
        CallStarted(
            **COMMON,
            parties=(
                Party(role="caller", uri="sip:+4930123@gw.example", display_name="Alice"),
                Party(role="callee", uri="sip:hotline@pbx.example"),
            ),
            channels=(
                ChannelInfo(channel="caller", label="Citizen", codec="PCMU", sample_rate=8000),
                ChannelInfo(channel="agent", label="Agent", codec="PCMA", sample_rate=8000),
            ),
        ),
        SegmentPartial(**COMMON, channel="caller", index=0, revision=0, text="my street", start_ms=1200, end_ms=2000, latency_ms=150),
        SegmentPartial(**COMMON, channel="caller", index=0, revision=1, text="my street light", start_ms=1200, end_ms=2600, latency_ms=140),
        SegmentFinal(
            **COMMON, channel="caller", index=0, revision=2, text="My street light is broken.", start_ms=1200, end_ms=3100, latency_ms=420
        ),
        CallEnded(**COMMON, end_reason=EndReason.HANGUP, duration_ms=9000, final_segments=1),
    ]


def test_every_event_type_is_valid_against_the_schema(validator: jsonschema.Draft202012Validator) -> None:
    events = one_call()
    assert {event.event for event in events} == {"call.started", "segment.partial", "segment.final", "call.ended"}
    for event in events:
        validator.validate(json.loads(event.to_json()))


def test_wire_form_round_trips_exactly() -> None:
    for event in one_call():
        assert parse_event(event.to_json()) == event


def test_envelope_shape_and_segment_identity() -> None:
    started, partial, _, final, ended = (event.to_dict() for event in one_call())
    assert set(started) - {"parties", "channels"} == set(partial) == set(ended) - {"end_reason", "duration_ms", "final_segments"}
    assert started["schema"] == SCHEMA_ID
    assert started["segment_id"] is None and started["revision"] is None and started["text"] is None
    assert partial["segment_id"] == final["segment_id"] == f"{COMMON['call_id']}/caller/0"
    assert (partial["is_final"], final["is_final"]) == (False, True)
    assert final["revision"] == 2
    assert final["emitted_at"].endswith("Z")


def test_emitted_at_is_utc_with_millisecond_precision() -> None:
    berlin = timezone(timedelta(hours=1))
    moment = datetime(2026, 3, 1, 13, 0, 0, 123456, tzinfo=berlin)
    event = CallEnded(**COMMON, emitted_at=moment, end_reason=EndReason.SHUTDOWN, duration_ms=0, final_segments=0)
    assert event.to_dict()["emitted_at"] == "2026-03-01T12:00:00.123Z"
    with pytest.raises(ValueError, match="timezone-aware"):
        CallEnded(**COMMON, emitted_at=datetime(2026, 3, 1), end_reason=EndReason.HANGUP, duration_ms=0, final_segments=0)
    assert datetime.fromisoformat(event.to_dict()["emitted_at"]).tzinfo == UTC


@pytest.mark.parametrize(
    ("bad_fields", "message"),
    [
        ({"channel": "a/b"}, "without '/'"),
        ({"revision": -1}, "count up from 0"),
        ({"start_ms": 500, "end_ms": 400}, "bad media interval"),
    ],
)
def test_segment_invariants_are_enforced_at_construction(bad_fields: dict[str, Any], message: str) -> None:
    fields = {"channel": "agent", "index": 3, "revision": 0, "text": "", "start_ms": 0, "end_ms": 10, "latency_ms": 0} | bad_fields
    with pytest.raises(ValueError, match=message):
        SegmentPartial(**COMMON, **fields)


@pytest.mark.parametrize(
    ("event_index", "mutation"),
    [
        (3, {"is_final": False}),  # a final that says it is not final
        (1, {"is_final": True}),  # a partial that says it is final
        (0, {"text": "hello"}),  # call events carry no text
        (0, {"parties": None}),  # parties are required on call.started
        (4, {"end_reason": "bored"}),  # not a known end reason
        (1, {"end_reason": "hangup"}),  # call.ended fields on a segment
        (1, {"unexpected": 1}),  # producers must not drift from the contract
        (2, {"emitted_at": "2026-03-01 12:00:00"}),  # not RFC 3339 UTC
        (2, {"segment_id": "no-slashes"}),
    ],
)
def test_schema_rejects_malformed_events(validator: jsonschema.Draft202012Validator, event_index: int, mutation: dict[str, Any]) -> None:
    wire = one_call()[event_index].to_dict() | mutation
    assert not validator.is_valid(wire)


def test_parse_refuses_other_schema_versions() -> None:
    wire = one_call()[1].to_dict() | {"schema": "asr-stream.transcript.v2"}
    with pytest.raises(ValueError, match="unsupported schema"):
        parse_event(wire)


def test_call_id_may_contain_slashes_and_segment_id_still_splits() -> None:
    event = SegmentFinal(
        **(COMMON | {"call_id": "x/y@h"}), channel="agent", index=12, revision=0, text="ok", start_ms=0, end_ms=1, latency_ms=0
    )
    call_id, channel, index = event.segment_id.rsplit("/", 2)
    assert (call_id, channel, int(index)) == ("x/y@h", "agent", 12)
    assert parse_event(event.to_json()) == event


def test_docs_embed_the_shipped_schema_and_valid_examples(validator: jsonschema.Draft202012Validator) -> None:
    """docs/events.md must not drift from the schema the package ships."""
    docs = (Path(__file__).resolve().parents[1] / "docs" / "events.md").read_text(encoding="utf-8")
    blocks = [json.loads(block.split("```", 1)[0]) for block in docs.split("```json\n")[1:]]
    assert blocks[-1] == load_schema()
    examples = blocks[:-1]
    assert sorted(example["event"] for example in examples) == sorted(["call.started", "segment.partial", "segment.final", "call.ended"])
    for example in examples:
        validator.validate(example)
        assert parse_event(example).to_dict() == example
