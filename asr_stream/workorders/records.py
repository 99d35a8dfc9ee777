"""Reading the transcript topic: a record value becomes an event, or a reason it cannot.

The consumer must survive anything on the topic (another producer's junk, a future schema, a
tombstone), so every failure is an `UnusableRecord` with a one-line reason for the log.
"""

from __future__ import annotations

import json

from jsonschema import Draft202012Validator

from asr_stream.transcript.events import (
    SCHEMA_ID,
    CallEnded,
    CallStarted,
    SegmentFinal,
    SegmentPartial,
    TranscriptEvent,
    load_schema,
    parse_event,
)


class UnusableRecord(ValueError):
    """A record on the transcript topic that is not a transcript event this build can read."""


def _reader_validators() -> tuple[Draft202012Validator, dict[str, Draft202012Validator]]:
    """The shipped event schema as a reader applies it, per event type.

    Unknown fields are allowed, as docs/events.md promises producers (new optional fields may
    appear within v1), and only the branch of the record's own event type is checked: the full
    `oneOf` evaluates every branch and cost several times more per final (bench/workorders.py).
    """
    reader = load_schema()
    reader.pop("unevaluatedProperties")
    reader.pop("oneOf")
    per_event = {
        event: Draft202012Validator(reader | {"allOf": [{"$ref": f"#/$defs/{event.replace('.', '_')}"}]})
        for event in (CallStarted.event, SegmentFinal.event, CallEnded.event)
    }
    return Draft202012Validator(reader), per_event


_ANY_EVENT, _EVENT_VALIDATORS = _reader_validators()


def decode_record(value: bytes | None) -> TranscriptEvent | None:
    """The event in a record value; None for a partial (never needed for a draft).

    Partials are most of the traffic, so they are recognised without schema validation; every
    other event is validated against the event schema before it is trusted.
    """
    if value is None:
        raise UnusableRecord("empty value (a tombstone)")
    try:
        data = json.loads(value)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UnusableRecord(f"not JSON: {error}") from error
    if not isinstance(data, dict):
        raise UnusableRecord(f"not a JSON object but {type(data).__name__}")
    if data.get("schema") != SCHEMA_ID:
        raise UnusableRecord(f"unknown schema {repr(data.get('schema'))[:80]} (this build reads {SCHEMA_ID})")
    event = data.get("event")
    if event == SegmentPartial.event:
        return None
    validator = _EVENT_VALIDATORS.get(event, _ANY_EVENT) if isinstance(event, str) else _ANY_EVENT
    problem = next(iter(validator.iter_errors(data)), None)
    if problem is not None:
        where = "/".join(str(part) for part in problem.absolute_path) or "(top)"
        raise UnusableRecord(f"invalid {event!s:.40}: {where}: {problem.message[:200]}")
    try:
        return parse_event(data)
    except (ValueError, TypeError, KeyError) as error:  # e.g. start_ms > end_ms, which the schema cannot say
        raise UnusableRecord(f"invalid {event}: {error}") from error
