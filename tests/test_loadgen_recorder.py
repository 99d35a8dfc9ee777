"""The load generators' reading of the daemon's histograms: quantiles of one step, per labelled series."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from asr_stream.devtools.loadgen.recorder import bucket_key, histogram_quantiles


def scraped(registry: CollectorRegistry) -> dict[str, float]:
    """What `recorder.scrape` keeps of a histogram: each bucket by its labels."""
    return {
        bucket_key(family.name, sample.labels): sample.value
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for sample in family.samples
        if sample.name.endswith("_bucket")
    }


def test_quantiles_of_a_step_come_from_the_bucket_changes_of_one_series() -> None:
    registry = CollectorRegistry()
    wait = Histogram("asr_scheduler_wait_seconds", "wait", ["priority"], buckets=(0.1, 0.2, 0.5), registry=registry)
    for _ in range(50):  # before the step: slow partials and finals, which the step's figures must not see
        wait.labels("final").observe(0.4)
        wait.labels("partial").observe(0.4)
    before = scraped(registry)
    for seconds in [0.05] * 10 + [0.15] * 80 + [0.3] * 10:  # the step's finals
        wait.labels("final").observe(seconds)
    wait.labels("partial").observe(3.0)
    after = scraped(registry)
    p50, p95, p99 = histogram_quantiles(before, after, "asr_scheduler_wait_seconds", {"priority": "final"}, (0.5, 0.95, 0.99))
    assert p50 == pytest.approx(0.15)  # rank 50 of 100, halfway through the 0.1-0.2 bucket's 80
    assert p95 == pytest.approx(0.35) and p99 == pytest.approx(0.47)
    assert histogram_quantiles(before, after, "asr_scheduler_wait_seconds", {"priority": "partial"}, (0.5,)) == [float("inf")]
    assert histogram_quantiles(after, after, "asr_scheduler_wait_seconds", {"priority": "final"}, (0.5,)) == [None]
