"""The open-calls journal: which calls consumers were told had started and not yet told had ended.

A daemon killed with SIGKILL (or by the OOM killer, or a power cut) cannot publish `call.ended`
for its live calls, and consumers would hold those calls open forever. So the Kafka sink keeps
this journal, in its spool directory, through its `DeliveryLedger` hook; on the next start, every
call the journal still holds gets its `call.ended` with reason `lost` (docs/events.md).

What is written, and when (on the sink's thread, so the event loop never waits on the disk):

* `call.started` is journaled just *before* it can reach the broker or the spool, and the journal
  is fdatasync'ed before the batch is sent (one sync per batch that starts calls): no consumer can
  see a `call.started` that a crash, even a power cut, would leave out of the journal. The record
  holds what the `call.ended` needs: model, engine, language.
* `segment.final` and `call.ended` are journaled once they are acknowledged or spooled (a crash
  can no longer lose them), without a sync of their own: a process crash keeps what reached the
  kernel; a power cut may lose the last of them, in which case the lost call's `call.ended` counts
  fewer finals, or a call that had ended also gets a second `call.ended` (`lost`), which the
  consumer's dedupe rule drops (docs/events.md). A final carries its `end_ms`, so a lost call's
  `duration_ms` is the media time its delivered finals cover and its `final_segments` their number.

Format: the spool's CRC-framed records (sinks/spool.py), key = call_id, value = one kind byte and
JSON. Reading stops at the first record cut short or failing its CRC, which after a crash can only
be the torn last write: `open()` then rewrites the file with only the open calls (write, fsync,
rename, fsync the directory), which also drops that tail. Bounded: when the file passes
`compact_bytes` and four times what the open calls need, it is rewritten the same way, so it stays
near the size of the calls in progress (about 150 bytes each) whatever the daemon's uptime.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from asr_stream.errors import OperatorError
from asr_stream.sinks.spool import SpoolRecord, frame, fsync_directory, read_frames
from asr_stream.transcript.events import CallEnded, CallStarted, EndReason, SegmentFinal, TranscriptEvent

log = logging.getLogger(__name__)

#: The journal's file name inside the Kafka spool directory.
JOURNAL_NAME = "open-calls.journal"

_STARTED, _FINAL, _ENDED = b"S", b"F", b"E"


class JournalError(OperatorError):
    """The journal's directory cannot be used (not writable, not a directory, a full disk)."""


@dataclass
class OpenCall:
    """A call the journal holds open: enough to publish its `call.ended` if nobody else will."""

    call_id: str
    model: str
    engine: str
    language: str | None
    finals: int = 0  # finals delivered or spooled
    media_ms: int = 0  # end of the latest of them, in media time

    def lost(self) -> CallEnded:
        """Its `call.ended` after a crash: reason lost, the finals that survived, the media they cover."""
        return CallEnded(
            call_id=self.call_id,
            model=self.model,
            engine=self.engine,
            language=self.language,
            end_reason=EndReason.LOST,
            duration_ms=self.media_ms,
            final_segments=self.finals,
        )

    def record(self) -> bytes:
        """The framed `started` record that restores this entry (also its compacted form)."""
        fields = {"model": self.model, "engine": self.engine, "language": self.language, "finals": self.finals, "media_ms": self.media_ms}
        return frame(SpoolRecord(self.call_id.encode(), _STARTED + json.dumps(fields, separators=(",", ":")).encode()))


class OpenCallJournal:
    """`open()` once before the sink starts, then the sink's `DeliveryLedger`; `close()` after the sink."""

    def __init__(self, path: Path, compact_bytes: int = 4 * 2**20) -> None:
        self.path = path
        self.compact_bytes = compact_bytes
        self._open: dict[str, OpenCall] = {}
        self._file: BinaryIO | None = None
        self._size = 0
        self._lock = threading.Lock()  # the sink's thread writes; open/close come from the event loop

    def __len__(self) -> int:
        return len(self._open)

    def open(self) -> list[OpenCall]:
        """Read what a previous run left, rewrite the file compactly; the calls it left open.

        Those stay in the journal until their `call.ended` (lost) is kept in turn, so a crash
        before that reports them again on the following start.
        """
        with self._lock:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                valid_end = 0
                if self.path.exists():
                    with self.path.open("rb") as existing:
                        for record, end in read_frames(existing, 0):
                            self._apply(record.key.decode(), record.value)
                            valid_end = end
                    torn = self.path.stat().st_size - valid_end
                    if torn:
                        log.warning("journal %s: ignoring a torn last record (%d B) left by a crash", self.path, torn)
                self._rewrite()
            except OSError as error:
                raise JournalError(f"cannot use the open-calls journal {self.path}: {error.strerror or error}") from error
            return list(self._open.values())

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    # --- DeliveryLedger -------------------------------------------------------------------

    def leaving(self, events: Sequence[TranscriptEvent]) -> None:
        """Journal and sync the calls that start in this batch before any of it is sent."""
        started = [event for event in events if isinstance(event, CallStarted)]
        if not started:
            return
        with self._lock:
            entries = [OpenCall(event.call_id, event.model, event.engine, event.language) for event in started]
            self._append(b"".join(entry.record() for entry in entries), sync=True)
            self._open.update((entry.call_id, entry) for entry in entries)

    def kept(self, events: Sequence[TranscriptEvent]) -> None:
        """Count the finals and close the calls that a crash can no longer take back."""
        records = []
        with self._lock:
            for event in events:
                if isinstance(event, SegmentFinal) and event.call_id in self._open:
                    records.append(frame(SpoolRecord(event.call_id.encode(), _FINAL + str(event.end_ms).encode())))
                    self._apply_final(self._open[event.call_id], event.end_ms)
                elif isinstance(event, CallEnded) and self._open.pop(event.call_id, None) is not None:
                    records.append(frame(SpoolRecord(event.call_id.encode(), _ENDED)))
            if records:
                self._append(b"".join(records), sync=False)
            if self._size > max(self.compact_bytes, 4 * len(self._open) * 256):
                self._rewrite()

    # --- file ---------------------------------------------------------------------------------

    def _apply(self, call_id: str, value: bytes) -> None:
        kind, body = value[:1], value[1:]
        if kind == _STARTED:
            fields = json.loads(body)
            self._open[call_id] = OpenCall(
                call_id, fields["model"], fields["engine"], fields["language"], fields["finals"], fields["media_ms"]
            )
        elif kind == _FINAL and call_id in self._open:
            self._apply_final(self._open[call_id], int(body))
        elif kind == _ENDED:
            self._open.pop(call_id, None)

    @staticmethod
    def _apply_final(call: OpenCall, end_ms: int) -> None:
        call.finals += 1
        call.media_ms = max(call.media_ms, end_ms)

    def _append(self, data: bytes, *, sync: bool) -> None:
        if self._file is None:  # closed: the sink outlived its stop deadline and the process is ending
            log.warning("journal %s is closed: %d B not written", self.path, len(data))
            return
        self._file.write(data)
        self._size += len(data)
        if sync:
            os.fdatasync(self._file.fileno())

    def _rewrite(self) -> None:
        """Replace the file by one `started` record per open call, atomically and durably."""
        temporary = self.path.with_name(self.path.name + ".tmp")
        data = b"".join(call.record() for call in self._open.values())
        with temporary.open("wb") as rewritten:
            rewritten.write(data)
            rewritten.flush()
            os.fsync(rewritten.fileno())
        temporary.replace(self.path)
        fsync_directory(self.path.parent)
        if self._file is not None:
            self._file.close()
        self._file = self.path.open("ab", buffering=0)  # unbuffered: each batch is one write(2)
        self._size = len(data)
