"""Throttled, clipped log lines (issue 11: 8,365 warnings for 20,500 fuzz messages, 30 KB Call-IDs in full)."""

from __future__ import annotations

import logging

from asr_stream.common.throttled_log import ThrottledLog, clip


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_repeats_are_counted_into_the_next_line_per_key(caplog):
    clock = Clock()
    throttled = ThrottledLog(logging.getLogger("test.throttled"), interval_s=10.0, clock=clock)
    with caplog.at_level(logging.WARNING, logger="test.throttled"):
        written = [throttled.warning(("10.0.0.1", "bad"), "bad request from %s", "10.0.0.1") for _ in range(313)]
        throttled.warning(("10.0.0.2", "bad"), "bad request from %s", "10.0.0.2")  # another source: its own line
        clock.now = 10.0
        throttled.warning(("10.0.0.1", "bad"), "bad request from %s", "10.0.0.1")
    assert written.count(True) == 1
    assert [r.getMessage() for r in caplog.records] == [
        "bad request from 10.0.0.1",
        "bad request from 10.0.0.2",
        "bad request from 10.0.0.1 (and 312 more like this in the last 10 s)",
    ]


def test_memory_is_bounded_and_evicted_counts_are_not_lost(caplog):
    clock = Clock()
    throttled = ThrottledLog(logging.getLogger("test.throttled"), max_keys=2, clock=clock)
    with caplog.at_level(logging.WARNING, logger="test.throttled"):
        throttled.warning("a", "a")
        throttled.warning("a", "a")  # suppressed, then "a" is evicted by b and c
        throttled.warning("b", "b")
        throttled.warning("c", "c")
    assert len(throttled._windows) == 2
    assert [r.getMessage() for r in caplog.records] == ["a", "b", "c (and 1 more like this in the last 10 s)"]


def test_clip_bounds_length_and_escapes_line_breaks():
    assert clip("abc") == "abc"
    assert clip("x" * 30000, 10) == "xxxxxxxxxx…(+29990 chars)"
    assert clip("call\r\nFAKE LOG LINE") == "call\\r\\nFAKE LOG LINE"
    assert clip("工单12345") == "工单12345"
