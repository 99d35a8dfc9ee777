"""Assemble calls from the transcript events of one Kafka partition, and know what is safe to commit.

A call's events all share one partition (record key = call_id) and arrive in production order,
but delivery is at-least-once: a record, and the records of its call after it, may arrive again
(docs/events.md). So per partition:

* a call opens with its `call.started` and closes with its `call.ended`; finals in between are
  kept once per `segment_id` (a redelivered final is identical, the first copy wins); partials
  are provisional and never reach a ticket, so they are not kept at all;
* events of a call closed recently (a redelivered tail) are dropped, and so are segment events
  and a `call.ended` of a call whose `call.started` was never seen: the consumer always resumes
  at or before the `call.started` of every call that was still open, so such a call was either
  drafted before or began before this group's history, and a draft from its tail would be
  missing the start of the conversation;
* the offset safe to commit is the offset of the earliest event of any open call (or the next
  offset, when none is open): a consumer that restarts from there re-reads every open call whole;
* a call whose daemon died before `call.ended` would hold that offset back forever, so a call
  with no event while the partition's stream time (the newest `emitted_at` seen) advanced by
  `abandon_after` is closed as abandoned. Stream time, not the wall clock, makes the decision
  the same when the partition is re-read after a restart.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from asr_stream.transcript.events import CallEnded, CallStarted, EndReason, SegmentFinal, SegmentPartial, TranscriptEvent

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClosedCall:
    """A call ready to become a work-order draft."""

    started: CallStarted
    finals: tuple[SegmentFinal, ...]  # all channels merged in time order
    ended: CallEnded | None  # None: abandoned (no call.ended within the abandon time)
    last_event_at: datetime  # emitted_at of the newest event of the call

    @property
    def complete(self) -> bool:
        """True when the call ended normally and every final it announced is here.

        A call the daemon lost (it died mid-call; `call.ended` came from its next start) is never
        complete: whatever was said after its last delivered final is gone.
        """
        ended = self.ended
        return ended is not None and ended.end_reason is not EndReason.LOST and len(self.finals) == ended.final_segments


@dataclass
class _OpenCall:
    started: CallStarted
    first_offset: int
    last_event_at: datetime
    finals: dict[str, SegmentFinal] = field(default_factory=dict)  # by segment_id

    def close(self, ended: CallEnded | None) -> ClosedCall:
        in_time_order = sorted(self.finals.values(), key=lambda final: (final.start_ms, final.end_ms, final.channel, final.index))
        return ClosedCall(self.started, tuple(in_time_order), ended, self.last_event_at)


class PartitionCalls:
    """The calls of one partition: fed records in offset order, yields calls as they close."""

    def __init__(self, abandon_after: timedelta, remember_closed: int = 10_000) -> None:
        self.abandon_after = abandon_after
        self.next_offset: int | None = None  # one past the last record fed
        self.committed: int | None = None  # the offset the consumer last committed for the partition
        # Least recently active first: the head is the next candidate for abandonment.
        self._open: OrderedDict[str, _OpenCall] = OrderedDict()
        self._closed: OrderedDict[str, None] = OrderedDict()
        self._remember_closed = remember_closed
        self._stream_time: datetime | None = None

    @property
    def open_calls(self) -> int:
        return len(self._open)

    def commit_offset(self) -> int | None:
        """Where a consumer taking over this partition must start: no open call is lost."""
        if self.next_offset is None:
            return None
        return min((call.first_offset for call in self._open.values()), default=self.next_offset)

    def add(self, offset: int, event: TranscriptEvent | None) -> list[ClosedCall]:
        """Feed the record at `offset` (None: a record that was skipped); return calls closed by it."""
        self.next_offset = offset + 1
        if event is None or isinstance(event, SegmentPartial):
            return []
        if self._stream_time is None or event.emitted_at > self._stream_time:
            self._stream_time = event.emitted_at
        closed = self._apply(offset, event)
        return closed + self._abandon_idle()

    def _apply(self, offset: int, event: CallStarted | SegmentFinal | CallEnded) -> list[ClosedCall]:
        call_id = event.call_id
        if call_id in self._closed:
            log.debug("dropping a redelivered %s of call %s, already drafted", event.event, call_id)
            return []
        call = self._open.get(call_id)
        if call is None:
            if isinstance(event, CallStarted):
                self._open[call_id] = _OpenCall(event, offset, event.emitted_at)
            elif isinstance(event, CallEnded):
                log.warning(
                    "call.ended at offset %d for call %s whose call.started was not seen (a redelivered tail of a call "
                    "drafted earlier, or a call that began before this consumer group's first offset): no draft",
                    offset,
                    call_id,
                    extra={"call_id": call_id},
                )
            return []
        call.last_event_at = max(call.last_event_at, event.emitted_at)
        self._open.move_to_end(call_id)
        if isinstance(event, SegmentFinal):
            call.finals.setdefault(event.segment_id, event)
        elif isinstance(event, CallEnded):
            return [self._close(call_id, event)]
        return []  # a redelivered call.started

    def _abandon_idle(self) -> list[ClosedCall]:
        abandoned = []
        assert self._stream_time is not None
        while self._open:
            call_id, call = next(iter(self._open.items()))
            if self._stream_time - call.last_event_at <= self.abandon_after:
                break
            log.warning(
                "call %s had no event for %s of stream time: drafting it as abandoned",
                call_id,
                self.abandon_after,
                extra={"call_id": call_id},
            )
            abandoned.append(self._close(call_id, None))
        return abandoned

    def _close(self, call_id: str, ended: CallEnded | None) -> ClosedCall:
        closed = self._open.pop(call_id).close(ended)
        self._closed[call_id] = None
        if len(self._closed) > self._remember_closed:
            self._closed.popitem(last=False)
        return closed
