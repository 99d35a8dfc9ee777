"""Work-order drafts: one JSON document per call, what the ticketing system receives.

A draft is a pure function of the call's events and the rules: no wall clock, no random id.
That is what makes redelivery harmless: if the consumer crashes after publishing a draft but
before committing, the draft published again is byte-identical and carries the same
`work_order_id` (UUID v5 of the call_id), so the ticketing system upserts by that id.
The JSON Schema next to this file (`draft.schema.json`) is the contract; docs/workorders.md
explains it.
"""

from __future__ import annotations

import json
import uuid
from importlib import resources
from typing import Any

from asr_stream.transcript.events import SegmentFinal, rfc3339_utc
from asr_stream.workorders.assembly import ClosedCall
from asr_stream.workorders.contacts import find_phone_numbers
from asr_stream.workorders.rules import Rules

DRAFT_SCHEMA_ID = "asr-stream.workorder-draft.v1"
ABANDONED = "abandoned"  # end_reason of a call whose call.ended never came
# Fixed forever: changing it would give every call a new work_order_id.
WORK_ORDER_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://asr-stream.invalid/work-orders")


def load_draft_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) every draft validates against."""
    text = resources.files(__package__).joinpath("draft.schema.json").read_text(encoding="utf-8")
    return dict(json.loads(text))


def work_order_id(call_id: str) -> str:
    """The same call always gets the same id, whichever consumer drafts it and how often."""
    return str(uuid.uuid5(WORK_ORDER_NAMESPACE, call_id))


def build_draft(call: ClosedCall, rules: Rules | None) -> dict[str, Any]:
    """The draft of a closed call (see draft.schema.json for each field)."""
    started, ended = call.started, call.ended
    uris = {party.role: party.uri for party in reversed(started.parties)}  # the first of a role wins
    labels = {channel.channel: channel.label for channel in started.channels}
    classification = rules.classify(final.text for final in call.finals) if rules else None
    return {
        "schema": DRAFT_SCHEMA_ID,
        "work_order_id": work_order_id(started.call_id),
        "call_id": started.call_id,
        "from_uri": uris.get("caller"),
        "to_uri": uris.get("callee"),
        "started_at": rfc3339_utc(started.emitted_at),
        "ended_at": rfc3339_utc(ended.emitted_at if ended else call.last_event_at),
        "duration_ms": ended.duration_ms if ended else max((final.end_ms for final in call.finals), default=0),
        "end_reason": str(ended.end_reason) if ended else ABANDONED,
        "complete": call.complete,
        "language": _language(call),
        "channels": [{"channel": channel, "label": label} for channel, label in labels.items()],
        "transcript": [
            {"channel": final.channel, "start_ms": final.start_ms, "end_ms": final.end_ms, "text": final.text} for final in call.finals
        ],
        "category": classification.category if classification else None,
        "category_label": classification.label if classification else None,
        "matched_terms": list(classification.matched_terms) if classification else [],
        "contact_numbers": _contact_numbers(call.finals),
    }


def draft_json(draft: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON, the Kafka record value (Chinese text stays readable)."""
    return json.dumps(draft, ensure_ascii=False, separators=(",", ":")).encode()


def _language(call: ClosedCall) -> str | None:
    """The call's language as the daemon last knew it (detected languages settle late)."""
    for event in (call.ended, *reversed(call.finals), call.started):
        if event is not None and event.language:
            return event.language
    return None


def _contact_numbers(finals: tuple[SegmentFinal, ...]) -> list[dict[str, Any]]:
    """Each number once, at its first mention; each speaker's finals are scanned as one text."""
    first_mention: dict[str, dict[str, Any]] = {}
    for channel in dict.fromkeys(final.channel for final in finals):
        spoken = [final for final in finals if final.channel == channel]
        for phone in find_phone_numbers([final.text for final in spoken]):
            where = spoken[phone.text_index]
            mention = {"number": phone.number, "kind": phone.kind, "channel": channel, "start_ms": where.start_ms}
            if phone.number not in first_mention or where.start_ms < first_mention[phone.number]["start_ms"]:
                first_mention[phone.number] = mention
    return sorted(first_mention.values(), key=lambda mention: (mention["start_ms"], mention["number"]))
