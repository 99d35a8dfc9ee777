"""Observing the daemon from outside: every transcript event with the wall time it reached us.

Used by `bench/load.py` and `bench/callgen.py`. The consumer reads by assignment from the start of
the topic (no group: nothing to wait for or commit) and callers filter by their calls' ids: on
Tansu, `seek_to_end` relies on end offsets that are wrong after multi-record batches (NOTES.md).
"""

from __future__ import annotations

import json
import math
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Collection, Mapping, Sequence

from kafka import KafkaConsumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

Event = dict
Arrival = tuple[float, Event]  # (time.time() when the record reached the consumer, the event)


class TopicRecorder:
    """Consumer thread: every event of the topic with the wall time it arrived, and its own CPU time.

    `keep` may shrink each event before it is stored (a long run holds hundreds of thousands).
    """

    def __init__(self, bootstrap: str, topic: str, keep: Callable[[Event], Event] | None = None) -> None:
        self._consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=20, request_timeout_ms=5000)
        self._topic = topic
        self._keep = keep
        self._lock = threading.Lock()
        self._events: list[Arrival] = []
        self._ended: set[str] = set()  # call_ids whose call.ended arrived (polled often while draining)
        self._stop = threading.Event()
        self.cpu_s = 0.0
        self._thread = threading.Thread(target=self._run, name="topic-recorder", daemon=True)

    def start(self, timeout_s: float = 20) -> None:
        """Wait for the topic (the daemon creates it when it starts), then read it from the beginning."""
        deadline = time.monotonic() + timeout_s
        while not (partitions := self._consumer.partitions_for_topic(self._topic)):
            if time.monotonic() > deadline:
                self._consumer.close()
                raise RuntimeError(f"topic {self._topic} never appeared")
            time.sleep(0.1)
        self._consumer.assign([TopicPartition(self._topic, p) for p in sorted(partitions)])
        self._consumer.seek_to_beginning()
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for batch in self._consumer.poll(timeout_ms=100).values():
                arrived = time.time()
                events = [json.loads(record.value) for record in batch]
                if self._keep is not None:
                    events = [self._keep(event) for event in events]
                with self._lock:
                    self._events.extend((arrived, event) for event in events)
                    self._ended.update(event["call_id"] for event in events if event["event"] == "call.ended")
            self.cpu_s = time.thread_time()

    def events_of(self, call_ids: Collection[str]) -> list[Arrival]:
        wanted = set(call_ids)
        with self._lock:
            return [(t, e) for t, e in self._events if e["call_id"] in wanted]

    def ended(self, call_ids: Collection[str]) -> int:
        """How many of `call_ids` have their call.ended on the topic."""
        with self._lock:
            return len(self._ended.intersection(call_ids))

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self._consumer.close()


def check_order(events: list[Event]) -> list[str]:
    """Lifecycle violations of one call (docs/events.md): what a consumer would trip over."""
    problems = []
    names = [e["event"] for e in events]
    if not names or names[0] != "call.started" or names[-1] != "call.ended" or names.count("call.ended") != 1:
        problems.append(f"lifecycle {names[:1]}..{names[-1:]}")
    finals = [e for e in events if e["event"] == "segment.final"]
    indices = [int(f["segment_id"].rsplit("/", 1)[1]) for f in finals]
    if indices != sorted(set(indices)):
        problems.append(f"finals out of order or repeated {indices}")
    if names and names[-1] == "call.ended" and events[-1]["final_segments"] != len(finals):
        problems.append(f"call.ended says {events[-1]['final_segments']} finals, {len(finals)} arrived")
    for segment_id in {e["segment_id"] for e in events if e["event"] == "segment.partial"}:
        revisions = [e["revision"] for e in events if e["segment_id"] == segment_id]
        if revisions != list(range(len(revisions))):
            problems.append(f"{segment_id}: revisions {revisions}")
        if segment_id not in {f["segment_id"] for f in finals}:
            problems.append(f"{segment_id}: partials but no final")
    return problems


#: Daemon histograms a load step reports quantiles of: figure name -> (histogram, the series' labels).
STEP_HISTOGRAMS: dict[str, tuple[str, dict[str, str]]] = {
    "endpoint_s": ("asr_final_endpoint_seconds", {}),  # the segmenter's close decision -> final
    "final_wait_s": ("asr_scheduler_wait_seconds", {"priority": "final"}),  # a final's wait in the scheduler's queue
    "final_delivery_s": ("asr_kafka_delivery_seconds", {"event": "final"}),  # a final's emitted_at -> the broker's ack
}
STEP_QUANTILES = (0.5, 0.95, 0.99)

#: Daemon counters a load step reports the change of (docs/operations.md lists every metric).
STEP_COUNTERS = (
    "asr_rtp_packets_total",
    "asr_rtp_lost_packets_total",
    "asr_partials_total",
    "asr_scheduler_shed_partials_total",
    "asr_inference_batch_size_count",
    "asr_inference_batch_size_sum",
    "asr_inference_seconds_sum",
    "asr_kafka_failed_total",
    "asr_kafka_dropped_total",
)


def scrape(url: str, timeout_s: float = 5) -> dict[str, float] | None:
    """The daemon's Prometheus metrics, each sample name summed over its labels, and each histogram
    bucket of `STEP_HISTOGRAMS` by its labels too (`bucket_key`); None if unreachable."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            text = response.read().decode()
    except (urllib.error.URLError, OSError):
        return None
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
            if sample.name.endswith("_bucket") and any(family.name == name for name, _ in STEP_HISTOGRAMS.values()):
                totals[bucket_key(family.name, sample.labels)] = sample.value
    return totals


def bucket_key(histogram: str, labels: Mapping[str, str]) -> str:
    """`name{le=..., other=...}`: one bucket of one labelled series."""
    return f"{histogram}{{{','.join(f'{key}={value}' for key, value in sorted(labels.items()))}}}"


def histogram_quantiles(
    before: Mapping[str, float], after: Mapping[str, float], histogram: str, labels: Mapping[str, str], quantiles: Sequence[float]
) -> list[float | None]:
    """Quantiles of what one series of a histogram observed between two scrapes, interpolated linearly
    inside a bucket as Prometheus' histogram_quantile does (so no finer than its buckets); None where it saw nothing."""
    cumulative = []
    for key, value in after.items():
        if key.startswith(histogram + "{"):
            pairs = dict(pair.split("=", 1) for pair in key[len(histogram) + 1 : -1].split(","))
            upper = float(pairs.pop("le"))
            if pairs == dict(labels):
                cumulative.append((upper, value - before.get(key, 0.0)))
    cumulative.sort()
    total = cumulative[-1][1] if cumulative else 0.0
    answers: list[float | None] = []
    for quantile in quantiles:
        rank, lower, below = quantile * total, 0.0, 0.0
        answer = None
        for upper, count in cumulative if total > 0 else ():
            if count >= rank:
                answer = upper if math.isinf(upper) else lower + (upper - lower) * (rank - below) / max(count - below, 1e-9)
                break
            lower, below = upper, count
        answers.append(answer)
    return answers


def counter_changes(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """What a step did, from two scrapes: `STEP_COUNTERS` deltas, `STEP_HISTOGRAMS` quantiles (e.g.
    `endpoint_s_p95`), mean batch size and batch time."""
    changes = {name.removeprefix("asr_"): after.get(name, 0.0) - before.get(name, 0.0) for name in STEP_COUNTERS}
    for figure, (histogram, labels) in STEP_HISTOGRAMS.items():
        for quantile, value in zip(STEP_QUANTILES, histogram_quantiles(before, after, histogram, labels, STEP_QUANTILES)):
            if value is not None:
                changes[f"{figure}_p{round(quantile * 100)}"] = value
    batches = changes["inference_batch_size_count"]
    if batches:
        changes["mean_batch_size"] = changes["inference_batch_size_sum"] / batches
        changes["mean_batch_s"] = changes["inference_seconds_sum"] / batches
    return changes
