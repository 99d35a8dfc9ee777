"""Transcript events: what the daemon tells the outside world, one JSON object per Kafka record.

Four event types share one flat envelope so a consumer can route on `event` and upsert on
`segment_id` without knowing the other types; fields that do not apply to a type are null
rather than absent, so every record has the same shape. The JSON Schema next to this file
(`events.schema.json`, shipped as package data) is the contract; docs/events.md explains it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import resources
from typing import Any, ClassVar, TypedDict

from asr_stream.ingest.types import EndReason  # call.ended's end_reason: one vocabulary from ingest to consumers

SCHEMA_ID = "asr-stream.transcript.v1"


def load_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) every event validates against."""
    text = resources.files(__package__).joinpath("events.schema.json").read_text(encoding="utf-8")
    return dict(json.loads(text))


def rfc3339_utc(moment: datetime) -> str:
    """`2026-11-22T05:10:02.123Z`: millisecond precision is what consumers can use."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# Envelope fields that only segment events fill in; call events carry them as null.
_SEGMENT_FIELDS = ("channel", "segment_id", "revision", "is_final", "text", "start_ms", "end_ms", "latency_ms")


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, kw_only=True)
class Party:
    """One side of the call as SIP named it (From / To, or a SIPREC participant)."""

    role: str  # "caller" or "callee"
    uri: str
    display_name: str | None = None


@dataclass(frozen=True, kw_only=True)
class ChannelInfo:
    """One audio stream of the call, transcribed separately (e.g. caller and agent)."""

    channel: str
    label: str
    codec: str
    sample_rate: int

    def __post_init__(self) -> None:
        _check_channel(self.channel)


def _check_channel(channel: str) -> None:
    # segment_id is `<call_id>/<channel>/<n>` and consumers split it from the right, so the
    # channel is the one part that must not contain a slash (a SIP Call-ID may).
    if not channel or "/" in channel:
        raise ValueError(f"channel must be a non-empty name without '/': {channel!r}")


class EnvelopeFields(TypedDict):
    """The envelope fields a call's producer fills in once and repeats in every event (as keyword arguments)."""

    call_id: str
    model: str
    engine: str
    language: str | None


class SegmentFields(EnvelopeFields):
    """A segment event's fields beyond the envelope, except the partial-only `stable_text`."""

    channel: str
    index: int
    revision: int
    text: str
    start_ms: int
    end_ms: int
    latency_ms: int


@dataclass(frozen=True, kw_only=True)
class _Envelope:
    """Fields every event carries."""

    event: ClassVar[str]
    call_id: str
    model: str
    engine: str
    language: str | None
    emitted_at: datetime = field(default_factory=_utc_now)

    def __post_init__(self) -> None:
        if self.emitted_at.tzinfo is None:
            raise ValueError("emitted_at must be timezone-aware (a naive time is ambiguous)")
        # The wire carries milliseconds; holding the same precision makes parse_event exact.
        exact_ms = self.emitted_at.replace(microsecond=self.emitted_at.microsecond // 1000 * 1000)
        object.__setattr__(self, "emitted_at", exact_ms)

    def to_dict(self) -> dict[str, Any]:
        """The wire form: the full envelope, inapplicable fields as null."""
        return {
            "schema": SCHEMA_ID,
            "event": self.event,
            "call_id": self.call_id,
            **{name: getattr(self, name, None) for name in _SEGMENT_FIELDS},
            "stable_text": getattr(self, "stable_text", None),  # partials only
            "emitted_at": rfc3339_utc(self.emitted_at),
            "language": self.language,
            "model": self.model,
            "engine": self.engine,
            **self._extra(),
        }

    def _extra(self) -> dict[str, Any]:
        """Type-specific fields beyond the shared envelope."""
        return {}

    def to_json(self) -> bytes:
        """Compact UTF-8 JSON, the Kafka record value."""
        return json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":")).encode()


@dataclass(frozen=True, kw_only=True)
class CallStarted(_Envelope):
    """A call was answered and its channels will be transcribed."""

    event: ClassVar[str] = "call.started"
    parties: tuple[Party, ...]
    channels: tuple[ChannelInfo, ...]

    def _extra(self) -> dict[str, Any]:
        return {
            "parties": [asdict(party) for party in self.parties],
            "channels": [asdict(channel) for channel in self.channels],
        }


@dataclass(frozen=True, kw_only=True)
class CallEnded(_Envelope):
    """The call is over; no event for this call_id follows.

    `final_segments` lets a consumer check it has every final before closing its record.
    """

    event: ClassVar[str] = "call.ended"
    end_reason: EndReason
    duration_ms: int
    final_segments: int

    def _extra(self) -> dict[str, Any]:
        return {
            "end_reason": str(self.end_reason),
            "duration_ms": self.duration_ms,
            "final_segments": self.final_segments,
        }


@dataclass(frozen=True, kw_only=True)
class _SegmentEvent(_Envelope):
    """A hypothesis for one speech segment of one channel; media times are ms from call start.

    `latency_ms` is the wall time from the end of the audio this hypothesis covers (for a
    final: the end of speech) to its emission.
    """

    is_final: ClassVar[bool]
    channel: str
    index: int
    revision: int
    text: str
    start_ms: int
    end_ms: int
    latency_ms: int

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_channel(self.channel)
        if self.index < 0 or self.revision < 0:
            raise ValueError("segment index and revision count up from 0")
        if not 0 <= self.start_ms <= self.end_ms:
            raise ValueError(f"bad media interval {self.start_ms}..{self.end_ms} ms")

    @property
    def segment_id(self) -> str:
        return f"{self.call_id}/{self.channel}/{self.index}"


@dataclass(frozen=True, kw_only=True)
class SegmentPartial(_SegmentEvent):
    """A provisional hypothesis: a later revision of the same segment_id replaces it.

    `stable_text` is the start of `text` that the previous hypothesis agreed on (words; single
    characters in CJK script): an agent page shows it settled and the rest as provisional.
    """

    event: ClassVar[str] = "segment.partial"
    is_final: ClassVar[bool] = False
    stable_text: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.text.startswith(self.stable_text):
            raise ValueError("stable_text must be a prefix of text")


@dataclass(frozen=True, kw_only=True)
class SegmentFinal(_SegmentEvent):
    """The settled text of a segment: revision = last partial's + 1, never changed or repeated."""

    event: ClassVar[str] = "segment.final"
    is_final: ClassVar[bool] = True


TranscriptEvent = CallStarted | SegmentPartial | SegmentFinal | CallEnded

_SEGMENT_TYPES: dict[str, type[SegmentPartial] | type[SegmentFinal]] = {
    SegmentPartial.event: SegmentPartial,
    SegmentFinal.event: SegmentFinal,
}


def parse_event(wire: bytes | str | Mapping[str, Any]) -> TranscriptEvent:
    """Rebuild an event from its wire form (for consumers written in Python, and the tests)."""
    data = json.loads(wire) if isinstance(wire, bytes | str) else wire
    if data.get("schema") != SCHEMA_ID:
        raise ValueError(f"unsupported schema {data.get('schema')!r}; this build reads {SCHEMA_ID}")
    common = {
        "call_id": data["call_id"],
        "model": data["model"],
        "engine": data["engine"],
        "language": data["language"],
        "emitted_at": datetime.fromisoformat(data["emitted_at"]),
    }
    kind = data["event"]
    if kind == CallStarted.event:
        return CallStarted(
            **common,
            parties=tuple(Party(**party) for party in data["parties"]),
            channels=tuple(ChannelInfo(**channel) for channel in data["channels"]),
        )
    if kind == CallEnded.event:
        return CallEnded(
            **common,
            end_reason=EndReason(data["end_reason"]),
            duration_ms=data["duration_ms"],
            final_segments=data["final_segments"],
        )
    if kind in _SEGMENT_TYPES:
        segment = {
            "channel": data["channel"],
            "index": int(data["segment_id"].rsplit("/", 1)[1]),
            "revision": data["revision"],
            "text": data["text"],
            "start_ms": data["start_ms"],
            "end_ms": data["end_ms"],
            "latency_ms": data["latency_ms"],
        }
        if kind == SegmentPartial.event:
            return SegmentPartial(**common, **segment, stable_text=data.get("stable_text", ""))  # absent from older v1 producers
        return SegmentFinal(**common, **segment)
    raise ValueError(f"unknown event type {kind!r}")
