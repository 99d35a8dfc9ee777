"""A crash-safe, append-only, bounded on-disk queue of Kafka records.

The Kafka sink writes here whatever the broker has not acknowledged, and replays it oldest
first once the broker is back; records leave only after the broker acknowledged them.

Layout: a directory of segment files `00000000000000000001.seg`, ... and a `head` file naming the
first unacknowledged record (`<segment number> <byte offset>`). A record is framed as

    u32 crc32c | u32 key length | u32 value length | key | value      (little-endian)

where the CRC covers the two lengths, the key and the value. Written by hand because the
format is twelve bytes of header and the recovery rule below is the whole point.

Durability (fsync policy): `append` writes a whole batch and fsyncs the segment once before it
returns (group commit), and fsyncs the directory when it creates a segment; `acknowledge`
replaces `head` atomically (write, fsync, rename, fsync directory). A crash therefore loses
nothing `append` returned from, and may replay a record whose acknowledgement was not yet
recorded: delivery through the spool is at-least-once.

Recovery: a record whose header or body is cut short, or whose CRC does not match, is where
the log ends. At the tail of the newest segment that is a torn write of a crash and is
truncated silently (a warning); anywhere else it is corruption, logged as an error, and the
rest of that segment is discarded.

Bounded: `append` refuses a batch that would take the spool past `max_bytes` (SpoolFull) and
writes nothing of it; what to drop is the caller's decision.
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import crc32c

log = logging.getLogger(__name__)

_HEADER = struct.Struct("<III")
_SEGMENT_SUFFIX = ".seg"
_HEAD_FILE = "head"


class SpoolFull(Exception):
    """The batch does not fit under the spool's size bound; nothing of it was written."""


@dataclass(frozen=True, slots=True)
class SpoolRecord:
    key: bytes
    value: bytes


def frame(record: SpoolRecord) -> bytes:
    """The record framed as described above (also the open-calls journal's format, sinks/journal.py)."""
    lengths = struct.pack("<II", len(record.key), len(record.value))
    body = record.key + record.value
    return struct.pack("<I", crc32c.crc32c(body, crc32c.crc32c(lengths))) + lengths + body


def read_frames(segment: BinaryIO, offset: int) -> Iterator[tuple[SpoolRecord, int]]:
    """Yield (record, offset after it) from offset until the file ends or stops being valid."""
    segment.seek(offset)
    while len(header := segment.read(_HEADER.size)) == _HEADER.size:
        checksum, key_length, value_length = _HEADER.unpack(header)
        body = segment.read(key_length + value_length)
        if len(body) != key_length + value_length or crc32c.crc32c(body, crc32c.crc32c(header[4:])) != checksum:
            return
        offset += _HEADER.size + len(body)
        yield SpoolRecord(body[:key_length], body[key_length:]), offset


def fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class Spool:
    """Ordered, durable backlog of records. Not thread-safe: one owner (the sink's thread)."""

    def __init__(self, directory: Path, max_bytes: int = 256 * 2**20, segment_bytes: int = 16 * 2**20) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        directory.mkdir(parents=True, exist_ok=True)
        self._segments: list[int] = []  # segment numbers, oldest first
        self._head_segment = 0
        self._head_offset = 0
        self._pending = 0
        self._size_bytes = 0
        self._recover()

    def __len__(self) -> int:
        """Records appended and not yet acknowledged."""
        return self._pending

    @property
    def size_bytes(self) -> int:
        """Bytes the segments take on disk (what `max_bytes` bounds)."""
        return self._size_bytes

    def append(self, records: Sequence[SpoolRecord]) -> None:
        """Write records after the existing ones; durable when this returns."""
        if not records:
            return
        frames = b"".join(frame(record) for record in records)
        if self._size_bytes + len(frames) > self.max_bytes:
            raise SpoolFull(f"{len(records)} records ({len(frames)} B) do not fit: {self._size_bytes} of {self.max_bytes} B used")
        if not self._segments or self._segment_path(self._segments[-1]).stat().st_size >= self.segment_bytes:
            self._start_segment()
        with self._segment_path(self._segments[-1]).open("ab") as segment:
            segment.write(frames)
            segment.flush()
            os.fsync(segment.fileno())
        self._pending += len(records)
        self._size_bytes += len(frames)

    def peek(self, limit: int) -> list[SpoolRecord]:
        """Up to `limit` of the oldest unacknowledged records, in append order, not removed."""
        return [record for record, _, _ in self._walk(limit)]

    def acknowledge(self, count: int) -> None:
        """Remove the `count` oldest records: the broker has them."""
        if count > self._pending:
            raise ValueError(f"cannot acknowledge {count} records, only {self._pending} pending")
        if count == 0:
            return
        *_, (_, segment, offset) = self._walk(count)
        self._pending -= count
        if self._pending == 0:
            self._clear()
            return
        self._write_head(segment, offset)
        for old in [number for number in self._segments if number < segment]:
            self._size_bytes -= self._segment_path(old).stat().st_size
            self._segment_path(old).unlink()
            self._segments.remove(old)

    def _walk(self, limit: int) -> Iterator[tuple[SpoolRecord, int, int]]:
        """Yield (record, segment, offset after it) from the head, at most `limit` records."""
        produced = 0
        for segment in self._segments:
            if segment < self._head_segment or produced >= limit:
                continue
            start = self._head_offset if segment == self._head_segment else 0
            with self._segment_path(segment).open("rb") as file:
                for record, end in read_frames(file, start):
                    yield record, segment, end
                    produced += 1
                    if produced >= limit:
                        return

    def _segment_path(self, number: int) -> Path:
        return self.directory / f"{number:020d}{_SEGMENT_SUFFIX}"

    def _start_segment(self) -> None:
        number = self._segments[-1] + 1 if self._segments else self._head_segment + 1
        self._segment_path(number).touch()
        fsync_directory(self.directory)
        self._segments.append(number)
        if len(self._segments) == 1:
            self._head_segment, self._head_offset = number, 0

    def _write_head(self, segment: int, offset: int) -> None:
        temporary = self.directory / f"{_HEAD_FILE}.tmp"
        with temporary.open("w") as head:
            head.write(f"{segment} {offset}\n")
            head.flush()
            os.fsync(head.fileno())
        temporary.replace(self.directory / _HEAD_FILE)
        fsync_directory(self.directory)
        self._head_segment, self._head_offset = segment, offset

    def _clear(self) -> None:
        """Everything was acknowledged: start over with an empty directory.

        The head moves to the end of the newest segment first, so a crash half-way through the
        deletions finds nothing pending instead of replaying delivered records.
        """
        newest = self._segments[-1]
        self._write_head(newest, self._segment_path(newest).stat().st_size)
        for number in self._segments:
            self._segment_path(number).unlink()
        (self.directory / _HEAD_FILE).unlink()
        self._segments = []
        self._size_bytes = 0

    def _recover(self) -> None:
        """Rebuild the in-memory state from disk after a clean stop or a crash."""
        self._segments = sorted(int(path.stem) for path in self.directory.glob(f"*{_SEGMENT_SUFFIX}") if path.stem.isdigit())
        head_path = self.directory / _HEAD_FILE
        if head_path.exists():
            segment_text, offset_text = head_path.read_text().split()
            self._head_segment, self._head_offset = int(segment_text), int(offset_text)
        elif self._segments:
            self._head_segment, self._head_offset = self._segments[0], 0
        for number in [number for number in self._segments if number < self._head_segment]:
            self._segment_path(number).unlink()  # fully acknowledged before a crash
        self._segments = [number for number in self._segments if number >= self._head_segment]
        for number in self._segments:
            self._truncate_invalid_tail(number, is_newest=number == self._segments[-1])
        self._size_bytes = sum(self._segment_path(number).stat().st_size for number in self._segments)
        self._pending = sum(1 for _ in self._walk(limit=2**63))
        if self._pending:
            log.info("spool %s holds %d unacknowledged records (%d B) from a previous run", self.directory, self._pending, self._size_bytes)

    def _truncate_invalid_tail(self, number: int, is_newest: bool) -> None:
        path = self._segment_path(number)
        with path.open("r+b") as segment:
            valid_end = self._head_offset if number == self._head_segment else 0
            for _, frame_end in read_frames(segment, valid_end):
                valid_end = frame_end
            invalid_bytes = path.stat().st_size - valid_end
            if invalid_bytes == 0:
                return
            if is_newest:
                log.warning("spool %s: ignoring a torn last record (%d B) left by a crash", path, invalid_bytes)
            else:
                log.error("spool %s: corrupt record at byte %d; discarding the rest of the segment (%d B)", path, valid_end, invalid_bytes)
            segment.truncate(valid_end)
            os.fsync(segment.fileno())
