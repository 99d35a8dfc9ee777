"""The on-disk spool: order, durability across reopen, torn-write recovery, size bound."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from asr_stream.sinks.spool import Spool, SpoolFull, SpoolRecord


def records(count: int, start: int = 0) -> list[SpoolRecord]:
    return [SpoolRecord(f"call-{n % 3}".encode(), f"event-{n}".encode() * 5) for n in range(start, start + count)]


def segment_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.seg"))


def test_replays_in_append_order_and_removes_only_what_was_acknowledged(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.append(records(5))
    spool.append(records(5, start=5))
    assert len(spool) == 10
    assert spool.peek(3) == records(3)
    assert spool.peek(3) == records(3), "peek must not remove"
    spool.acknowledge(4)
    assert spool.peek(100) == records(6, start=4)
    with pytest.raises(ValueError):
        spool.acknowledge(7)


def test_survives_reopen_with_the_acknowledged_prefix_gone(tmp_path: Path) -> None:
    spool = Spool(tmp_path, segment_bytes=200)
    spool.append(records(20))
    spool.acknowledge(7)
    reopened = Spool(tmp_path, segment_bytes=200)
    assert len(reopened) == 13
    assert reopened.peek(100) == records(13, start=7)
    reopened.append(records(2, start=20))
    assert reopened.peek(100) == records(15, start=7)


def test_rotates_segments_and_deletes_them_once_acknowledged(tmp_path: Path) -> None:
    spool = Spool(tmp_path, segment_bytes=300)
    for n in range(10):
        spool.append(records(2, start=2 * n))
    assert len(segment_files(tmp_path)) > 3
    before = spool.size_bytes
    spool.acknowledge(12)
    assert spool.size_bytes < before
    assert spool.size_bytes == sum(path.stat().st_size for path in segment_files(tmp_path))
    assert spool.peek(100) == records(8, start=12)
    spool.acknowledge(8)
    assert len(spool) == 0 and spool.size_bytes == 0
    assert list(tmp_path.iterdir()) == [], "a drained spool leaves an empty directory"
    spool.append(records(1, start=99))
    assert Spool(tmp_path).peek(5) == records(1, start=99)


def test_a_torn_last_record_is_ignored_and_later_appends_stay_readable(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    Spool(tmp_path).append(records(4))
    newest = segment_files(tmp_path)[-1]
    whole = newest.read_bytes()
    Spool(tmp_path).append(records(1, start=4))
    torn = newest.read_bytes()[: len(whole) + 9]  # the crash hit mid-write of the fifth record
    newest.write_bytes(torn)
    with caplog.at_level(logging.WARNING):
        recovered = Spool(tmp_path)
    assert "torn last record" in caplog.text
    assert recovered.peek(100) == records(4)
    recovered.append(records(1, start=5))
    assert Spool(tmp_path).peek(100) == records(4) + records(1, start=5)


def test_a_flipped_bit_ends_the_log_at_the_bad_record(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.append(records(3))
    segment = segment_files(tmp_path)[-1]
    data = bytearray(segment.read_bytes())
    data[-2] ^= 0x01  # inside the value of the last record
    segment.write_bytes(bytes(data))
    assert Spool(tmp_path).peek(100) == records(2)


def test_refuses_a_batch_past_the_size_bound_without_writing_any_of_it(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=400)
    spool.append(records(4))
    used = spool.size_bytes
    with pytest.raises(SpoolFull):
        spool.append(records(4, start=4))
    assert (len(spool), spool.size_bytes) == (4, used)
    assert Spool(tmp_path, max_bytes=400).peek(100) == records(4)


def test_crash_while_clearing_does_not_replay_delivered_records(tmp_path: Path) -> None:
    spool = Spool(tmp_path, segment_bytes=150)
    spool.append(records(6))
    contents = {path.name: path.read_bytes() for path in segment_files(tmp_path)}
    spool.acknowledge(6)
    # The state a crash leaves after `head` moved to the end of the newest segment but before
    # the segment files were deleted (the order documented in spool.py).
    for name, content in contents.items():
        (tmp_path / name).write_bytes(content)
    newest = max(contents)
    (tmp_path / "head").write_text(f"{int(newest.split('.')[0])} {len(contents[newest])}\n")
    recovered = Spool(tmp_path)
    assert (len(recovered), recovered.peek(10)) == (0, [])
    recovered.append(records(1, start=50))
    assert Spool(tmp_path).peek(10) == records(1, start=50)
