"""The pieces of the multi-process daemon that need no process: port slices, restart back-off, metric merging."""

from __future__ import annotations

import time

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from asr_stream.app.process_metrics import ChildSeries, MergedCollector, snapshot
from asr_stream.app.workers.pool import split_port_range
from asr_stream.app.workers.restarts import Backoff
from asr_stream.rtp.ports import PortAllocator


@pytest.mark.parametrize(("low", "high", "parts"), [(20000, 20999, 2), (20001, 20200, 3), (16384, 32767, 14), (40000, 40005, 2)])
def test_port_slices_are_disjoint_whole_pairs_covering_the_range(low: int, high: int, parts: int) -> None:
    slices = split_port_range(low, high, parts)
    ports = [list(PortAllocator("127.0.0.1", lo, hi)._ports) for lo, hi in slices]
    assert [p for part in ports for p in part] == list(PortAllocator("127.0.0.1", low, high)._ports), "every pair once, in order"
    assert max(map(len, ports)) - min(map(len, ports)) <= 1, "shared evenly"
    assert all(lo % 2 == 0 and low <= lo and hi <= high for lo, hi in slices)


def test_backoff_restarts_at_once_then_slower_and_forgives_a_healthy_run() -> None:
    backoff = Backoff(healthy_after_s=0.5)  # long enough that no pause of a loaded runner makes a run healthy
    assert [backoff.delay() for _ in range(5)] == [0.0, 1.0, 2.0, 4.0, 8.0]  # it never came up
    assert max(backoff.delay() for _ in range(10)) == 30.0
    backoff.started()
    time.sleep(0.6)
    assert backoff.delay() == 0.0, "after a healthy run, the next death restarts at once"
    backoff.started()
    assert backoff.delay() == 1.0, "dying right after a start counts"


def child_registry(packets: float, jitter: float, depth: float, latency: float) -> CollectorRegistry:
    registry = CollectorRegistry()
    Counter("asr_rtp_packets", "packets", registry=registry).inc(packets)
    Gauge("asr_rtp_jitter_max_ms", "jitter", registry=registry).set(jitter)
    Gauge("asr_scheduler_queue_depth", "depth", ["priority"], registry=registry).labels("final").set(depth)
    Histogram("asr_inference_seconds", "seconds", buckets=(0.1, 1.0), registry=registry).observe(latency)
    return registry


def scraped(registry: CollectorRegistry) -> dict[tuple[str, tuple], float]:
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in text_string_to_metric_families(text) for s in f.samples}


def test_children_merge_into_one_exposition_and_a_dead_childs_counters_are_kept() -> None:
    own = CollectorRegistry()
    Counter("asr_rtp_packets", "packets", registry=own).inc(5)
    children = ChildSeries()
    exposed = CollectorRegistry()
    exposed.register(MergedCollector(own, children))
    prefixes = ("asr_",)
    children.update("worker-0", snapshot(child_registry(packets=100, jitter=12, depth=2, latency=0.05), prefixes))
    children.update("worker-1", snapshot(child_registry(packets=50, jitter=30, depth=1, latency=0.5), prefixes))
    merged = scraped(exposed)
    assert merged[("asr_rtp_packets_total", ())] == 155, "counters add up across processes"
    assert merged[("asr_rtp_jitter_max_ms", ())] == 30, "a maximum stays a maximum"
    assert merged[("asr_scheduler_queue_depth", (("priority", "final"),))] == 3
    assert merged[("asr_inference_seconds_bucket", (("le", "0.1"),))] == 1
    assert merged[("asr_inference_seconds_count", ())] == 2

    children.retire("worker-0")  # it died: its counters stay, its gauges go
    merged = scraped(exposed)
    assert merged[("asr_rtp_packets_total", ())] == 155 and merged[("asr_inference_seconds_count", ())] == 2
    assert merged[("asr_scheduler_queue_depth", (("priority", "final"),))] == 1
    children.update("worker-0", snapshot(child_registry(packets=7, jitter=0, depth=0, latency=0.05), prefixes))  # its successor
    assert scraped(exposed)[("asr_rtp_packets_total", ())] == 162, "the total never goes down"
