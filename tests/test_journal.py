"""The open-calls journal: what a killed daemon's next start learns, torn writes, its size bound.

The crash is real: a child process journals calls as the Kafka sink would and is killed with
SIGKILL at an arbitrary moment; the parent then opens the journal the way the next start does.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import jsonschema
import pytest
from test_kafka_sink import MODEL, call_events

from asr_stream.sinks.journal import OpenCallJournal
from asr_stream.transcript.events import CallEnded, CallStarted, EndReason, SegmentFinal, load_schema

REPO = Path(__file__).resolve().parents[1]


def opened(path: Path) -> OpenCallJournal:
    journal = OpenCallJournal(path)
    journal.open()
    return journal


def test_the_next_start_gets_a_lost_call_ended_for_each_call_left_open(tmp_path: Path) -> None:
    path = tmp_path / "open-calls.journal"
    journal = opened(path)
    ended_call, open_call = call_events("ended@x", segments=2), call_events("open/1@x", segments=3)
    for call in (ended_call, open_call[:-1]):  # the open call's own call.ended never comes
        journal.leaving(call)
        journal.kept(call)
    journal.close()

    [left_open] = OpenCallJournal(path).open()
    lost = left_open.lost()
    assert (lost.call_id, lost.end_reason, lost.final_segments, lost.duration_ms) == ("open/1@x", EndReason.LOST, 3, 3 * 3000 - 500)
    assert (lost.model, lost.engine, lost.language) == (MODEL["model"], MODEL["engine"], MODEL["language"])
    jsonschema.validate(lost.to_dict(), load_schema())


def test_a_lost_call_stays_open_until_its_call_ended_is_kept(tmp_path: Path) -> None:
    """A second crash before the lost call.ended is delivered or spooled reports the call again."""
    path = tmp_path / "open-calls.journal"
    journal = opened(path)
    journal.leaving(call_events("c@x", segments=1)[:1])
    journal.close()
    [first] = OpenCallJournal(path).open()  # crash 1: reported, but not yet kept
    again = OpenCallJournal(path)
    [second] = again.open()  # crash 2
    assert second.call_id == first.call_id
    again.kept([second.lost()])
    again.close()
    assert OpenCallJournal(path).open() == []


def test_finals_and_ends_count_only_once_kept(tmp_path: Path) -> None:
    """A final still in flight when the process dies is not counted: the consumer never got it."""
    path = tmp_path / "open-calls.journal"
    journal = opened(path)
    events = call_events("c@x", segments=2)
    journal.leaving(events)  # the whole batch leaves ...
    assert isinstance(events[3], SegmentFinal) and isinstance(events[-1], CallEnded)
    journal.kept(events[:4])  # ... up to the first final acknowledged; the rest died in flight
    journal.close()
    [left_open] = OpenCallJournal(path).open()
    assert left_open.finals == 1


def test_a_torn_last_record_is_ignored_and_dropped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "open-calls.journal"
    journal = opened(path)
    journal.leaving(call_events("a@x", 1)[:1])
    intact = path.stat().st_size
    journal.leaving(call_events("b@x", 1)[:1])
    journal.close()
    with path.open("r+b") as file:  # the second write was cut short by the crash
        file.truncate(intact + 7)
    with caplog.at_level(logging.WARNING, logger="asr_stream.sinks.journal"):
        assert [call.call_id for call in OpenCallJournal(path).open()] == ["a@x"]
    assert "torn last record (7 B)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="asr_stream.sinks.journal"):
        assert [call.call_id for call in OpenCallJournal(path).open()] == ["a@x"]
    assert not caplog.records, "open() rewrites the file without the torn tail"


def test_the_file_stays_near_the_size_of_the_open_calls(tmp_path: Path) -> None:
    path = tmp_path / "open-calls.journal"
    journal = OpenCallJournal(path, compact_bytes=64 * 1024)
    journal.open()
    sizes = []
    for number in range(3_000):
        call = call_events(f"call-{number}@x", segments=4)
        journal.leaving(call)
        journal.kept(call)
        sizes.append(path.stat().st_size)
    journal.leaving(call_events("still-open@x", 1)[:1])
    journal.close()
    assert max(sizes) < 64 * 1024 + 4096
    assert [call.call_id for call in OpenCallJournal(path).open()] == ["still-open@x"]


CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    sys.path.insert(0, "tests")
    from test_kafka_sink import call_events
    from asr_stream.sinks.journal import OpenCallJournal

    def report(line):
        # One write per line: print() writes its arguments one by one, and with PYTHONUNBUFFERED
        # each is its own syscall, so a kill could leave "ended" without its number.
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    journal = OpenCallJournal(Path(sys.argv[1]), compact_bytes=16 * 1024)  # compacts often: crash mid-rewrite too
    journal.open()
    number = 0
    while True:
        events = call_events(f"call-{number}@x", segments=2)
        journal.leaving(events[:1])
        report(f"started {number}")
        journal.kept(events)
        report(f"ended {number}")
        number += 1
    """
)


@pytest.mark.parametrize("after_lines", [5, 301, 2_000])
def test_a_process_killed_mid_write_leaves_a_journal_the_next_start_reads(tmp_path: Path, after_lines: int) -> None:
    """SIGKILL while journaling: every call reported started and not reported ended is found (but the
    one being written when the kill came), and every call reported ended is not (the kill comes at an
    arbitrary point of a write or a rewrite)."""
    path = tmp_path / "open-calls.journal"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        lines = [child.stdout.readline() for _ in range(after_lines)]  # type: ignore[union-attr]
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
        lines += child.stdout.readlines()  # type: ignore[union-attr]
    finally:
        if child.poll() is None:
            child.kill()
        child.stdout.close()  # type: ignore[union-attr]
    reported = [line.split() for line in lines if line.endswith("\n")]  # a torn last line reports nothing
    started = {number for what, number in reported if what == "started"}
    ended = {number for what, number in reported if what == "ended"}
    found = {call.call_id.removeprefix("call-").removesuffix("@x") for call in OpenCallJournal(path).open()}
    # The kill comes inside one call's start or end: that call may be either way (its start written
    # but not yet reported; its end written, its events kept, but not yet reported). Every other
    # call must be exactly as reported.
    in_progress = {max(started, key=int)} if started else set()
    assert (started - ended) - found <= in_progress, "a call reported started is missing"
    assert not found & ended, "a call reported ended is still open"
    assert len(found - started) <= 1  # at most the call whose start was written when the kill came


def test_a_call_without_a_language_keeps_none(tmp_path: Path) -> None:
    """The journal keeps what call.ended needs, whichever language (or none) the call had."""
    path = tmp_path / "open-calls.journal"
    journal = opened(path)
    template = call_events("zh@x", 0)[0]
    assert isinstance(template, CallStarted)
    journal.leaving([CallStarted(**(MODEL | {"language": None}), call_id="zh@x", parties=template.parties, channels=template.channels)])
    journal.close()
    [left_open] = OpenCallJournal(path).open()
    assert left_open.lost().language is None
    jsonschema.validate(left_open.lost().to_dict(), load_schema())
