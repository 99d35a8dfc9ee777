"""Prometheus metrics of the daemon, in registries the daemon owns.

Private registries rather than prometheus-client's global one: two daemons in one test process
(or a test beside a daemon) must not share or collide on metrics, and `/metrics` should show
exactly this daemon's series, without the client library's process defaults mixed in by import.
`own` holds this process's series; `registry`, what /metrics serves, is `own` with the series of
the daemon's child processes merged in (`app.process_metrics`; none with `workers: 1`). A child
process keeps a `DaemonMetrics` of its own and sends `snapshot()`s of the families it feeds.

Three ways in, chosen by where the truth lives, so no component needs to know about Prometheus:

=========================================  ==============================================
metric                                     fed by
=========================================  ==============================================
asr_calls_active, asr_channels_active,     `observe_event`: every published transcript
asr_calls_ended_total{reason},             event (a daemon publish hook, like Kafka's)
asr_vad_segments_total, asr_partials_total,
asr_final_latency_seconds,
asr_partial_interval_seconds
asr_final_endpoint_seconds                 `final_endpoint.observe`: the channels' `on_endpoint`
asr_inference_batch_size,                  `timed_batch`: wraps the function the
asr_inference_seconds{kind}                BatchScheduler runs on its worker threads
asr_scheduler_wait_seconds{priority}       `observe_queue_wait`: the BatchScheduler's `on_wait`
asr_scheduler_queue_depth{priority},       read at scrape time from `BatchScheduler`
asr_scheduler_saturated,                   (`queued()`, `saturated`, `stats`)
asr_scheduler_shed_partials_total
asr_rtp_packets_total,                     read at scrape time from the open channels'
asr_rtp_lost_packets_total,                `RtpReceiver.stats()`, plus the totals of closed
asr_rtp_jitter_max_ms                      channels handed to `channel_closed`
asr_kafka_delivery_seconds{event}          `observe_delivered`: the `KafkaSink`'s acknowledgements
asr_kafka_delivered_total, ..._failed_,    read at scrape time from `KafkaSink`'s counters
..._spooled_, ..._dropped_total,
asr_kafka_spool_records, ..._spool_bytes
asr_livefeed_subscribers,                  read at scrape time from `LiveFeedHub`
asr_livefeed_dropped_subscribers_total
asr_ipc_requests_total, ..._resent_,       read at scrape time from the `InferenceClient`s
..._lost_finals_total,                     of the process (workers: N > 1)
asr_ipc_shed_partials_total{reason}
asr_processes_up{role},                    read at scrape time from the process
asr_process_restarts_total{role}           supervisors (workers: N > 1)
=========================================  ==============================================

Labels are kept to small fixed sets (priority, end reason): a call id or channel label as a
label would grow the series without bound on a hotline.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from asr_stream.app.process_metrics import ChildSeries, Family, MergedCollector, snapshot
from asr_stream.inference.remote import InferenceClient
from asr_stream.inference.scheduler import BatchScheduler, Priority
from asr_stream.rtp.receiver import ReceiverStats
from asr_stream.sinks.kafka import KafkaSink
from asr_stream.sinks.livefeed import LiveFeedHub
from asr_stream.sip.server import SipStats
from asr_stream.transcript.events import CallEnded, CallStarted, SegmentFinal, SegmentPartial, TranscriptEvent

P = TypeVar("P")
R = TypeVar("R")

# End of speech -> final: the agent-facing latency; the useful range is 0.1 s (fast path) to a
# few seconds (saturation), with the finals deadline (1.5 s by default) falling between buckets.
FINAL_LATENCY_BUCKETS = (0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0)
# The segmenter's close decision -> final (no closing silence): a GPU server's target is 0.4 s at p95.
ENDPOINT_BUCKETS = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0)
PARTIAL_INTERVAL_BUCKETS = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0)
INFERENCE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
# From an event's creation (in whichever process) to the broker's acknowledgement: the IPC hop,
# the sink's queue and Kafka's round trip, normally a few ms, seconds when something backs up.
DELIVERY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_DELIVERY_KINDS = {SegmentFinal: "final", SegmentPartial: "partial"}


class DaemonMetrics:
    """Every metric of the daemon; attach components with `watch_*` as the daemon creates them."""

    def __init__(self) -> None:
        self.own = CollectorRegistry()
        self.children = ChildSeries()
        self.registry = CollectorRegistry()
        self.registry.register(MergedCollector(self.own, self.children))
        r = self.own
        self.calls_active = Gauge("asr_calls_active", "Calls between call.started and call.ended", registry=r)
        self.channels_active = Gauge("asr_channels_active", "Audio channels of the active calls", registry=r)
        self.calls_ended = Counter("asr_calls_ended", "Calls ended, by end reason", ["reason"], registry=r)
        self.vad_segments = Counter("asr_vad_segments", "Speech segments closed by the VAD segmenter (one final each)", registry=r)
        self.partials = Counter("asr_partials", "Partial hypotheses emitted", registry=r)
        self.final_latency = Histogram(
            "asr_final_latency_seconds", "End of speech to the segment's final event", buckets=FINAL_LATENCY_BUCKETS, registry=r
        )
        self.final_endpoint = Histogram(
            "asr_final_endpoint_seconds",
            "The segmenter's close decision to the segment's final event (final latency less the closing silence)",
            buckets=ENDPOINT_BUCKETS,
            registry=r,
        )
        self.partial_interval = Histogram(
            "asr_partial_interval_seconds", "Time between consecutive partials of one segment", buckets=PARTIAL_INTERVAL_BUCKETS, registry=r
        )
        self.batch_size = Histogram("asr_inference_batch_size", "Utterances per engine call", buckets=BATCH_SIZE_BUCKETS, registry=r)
        self.inference_seconds = Histogram(
            "asr_inference_seconds",
            "Wall time of one batched engine call, by kind (final: it holds a final; partial: partials only)",
            ["kind"],
            buckets=INFERENCE_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "asr_scheduler_wait_seconds",
            "Time a request waited in the scheduler's queue before its batch started",
            ["priority"],
            buckets=INFERENCE_BUCKETS,
            registry=r,
        )
        self.kafka_delivery = Histogram(
            "asr_kafka_delivery_seconds",
            "From an event's emitted_at to the broker's acknowledgement, by event (final, partial, call)",
            ["event"],
            buckets=DELIVERY_BUCKETS,
            registry=r,
        )
        for kind in ("final", "partial", "call"):
            self.kafka_delivery.labels(kind)
        for priority in Priority:  # every labelled series exists from the start, at zero
            self.inference_seconds.labels(priority.name.lower())
            self.queue_wait.labels(priority.name.lower())
        self._components = _ComponentCollector()
        r.register(self._components)
        self._channels_by_call: dict[str, int] = {}
        self._last_partial: dict[str, dict[str, datetime]] = {}  # call_id -> segment_id -> emitted_at

    # -- components read at scrape time ------------------------------------------------------
    def watch_scheduler(self, scheduler: BatchScheduler) -> None:
        self._components.scheduler = scheduler

    def watch_kafka(self, sink: KafkaSink) -> None:
        self._components.kafka = sink

    def watch_livefeed(self, hub: LiveFeedHub) -> None:
        self._components.hub = hub

    def watch_rtp(self, open_channels: Callable[[], Iterable[ReceiverStats]]) -> None:
        """`open_channels` returns the stats of every receiver not yet passed to `channel_closed`."""
        self._components.open_channels = open_channels

    def watch_sip(self, stats: SipStats) -> None:
        self._components.sip = stats

    def watch_inference_client(self, client: InferenceClient) -> None:
        self._components.clients.append(client)

    def watch_processes(self, up: Callable[[], Mapping[str, int]], restarts: Callable[[], Mapping[str, int]]) -> None:
        """Child processes running and restarted so far, by role ("inference", "worker")."""
        self._components.processes_up = up
        self._components.process_restarts = restarts

    def snapshot(self, prefixes: tuple[str, ...]) -> list[Family]:
        """This process's families named with `prefixes`, for the main process to merge."""
        return snapshot(self.own, prefixes)

    def watch_admission(self, saturated: Callable[[], bool], rtp_port_pairs_free: Callable[[], int]) -> None:
        """Whether new calls are refused for capacity (scheduler or RTP ports), and the ports left."""
        self._components.saturated = saturated
        self._components.rtp_port_pairs_free = rtp_port_pairs_free

    def channel_closed(self, final_stats: ReceiverStats) -> None:
        """Fold a closed channel's totals in, so the counters never go down when it leaves."""
        self._components.closed_packets += final_stats.packets
        self._components.closed_lost += max(final_stats.lost, 0)
        self._components.closed_dropped.update(final_stats.dropped)

    # -- pushed by the daemon ------------------------------------------------------------------
    def observe_event(self, event: TranscriptEvent) -> None:
        """A publish hook: derive call, segment and latency metrics from the events themselves."""
        if isinstance(event, CallStarted):
            self._channels_by_call[event.call_id] = len(event.channels)
            self._last_partial[event.call_id] = {}
        elif isinstance(event, SegmentPartial):
            self.partials.inc()
            segments = self._last_partial.setdefault(event.call_id, {})
            previous = segments.get(event.segment_id)
            if previous is not None:
                self.partial_interval.observe((event.emitted_at - previous).total_seconds())
            segments[event.segment_id] = event.emitted_at
        elif isinstance(event, SegmentFinal):
            self.vad_segments.inc()
            self.final_latency.observe(event.latency_ms / 1000)
            self._last_partial.get(event.call_id, {}).pop(event.segment_id, None)
        elif isinstance(event, CallEnded):
            self.calls_ended.labels(reason=str(event.end_reason)).inc()
            self._channels_by_call.pop(event.call_id, None)
            self._last_partial.pop(event.call_id, None)
        self.calls_active.set(len(self._channels_by_call))
        self.channels_active.set(sum(self._channels_by_call.values()))

    def observe_delivered(self, events: Sequence[TranscriptEvent]) -> None:
        """The `KafkaSink`'s `on_delivered` (its thread): how long acknowledged events took from their creation.

        Wall clocks (`emitted_at` is stamped in the process that made the event); events replayed
        from the spool after an outage are not observed, their time is the outage's.
        """
        now = time.time()
        for event in events:
            kind = _DELIVERY_KINDS.get(type(event), "call")
            self.kafka_delivery.labels(kind).observe(max(0.0, now - event.emitted_at.timestamp()))

    def observe_queue_wait(self, priority: Priority, seconds: float) -> None:
        """The BatchScheduler's `on_wait`: where a final's time goes when batches themselves are quick."""
        self.queue_wait.labels(priority.name.lower()).observe(seconds)

    def timed_batch(
        self, run_batch: Callable[[Sequence[P]], Sequence[R]], holds_final: Callable[[Sequence[P]], bool] = lambda batch: True
    ) -> Callable[[Sequence[P]], Sequence[R]]:
        """`run_batch` measured (its time by kind, as `holds_final` tells): pass the result to
        BatchScheduler instead of the bare function."""

        def measured(batch: Sequence[P]) -> Sequence[R]:
            started = time.perf_counter()
            try:
                return run_batch(batch)
            finally:
                self.inference_seconds.labels("final" if holds_final(batch) else "partial").observe(time.perf_counter() - started)
                self.batch_size.observe(len(batch))

        return measured


class _ComponentCollector(Collector):
    """Reads the components' own counters at scrape time (they stay free of Prometheus)."""

    def __init__(self) -> None:
        self.scheduler: BatchScheduler | None = None
        self.kafka: KafkaSink | None = None
        self.hub: LiveFeedHub | None = None
        self.open_channels: Callable[[], Iterable[ReceiverStats]] = tuple
        self.closed_packets = 0
        self.closed_lost = 0
        self.closed_dropped: collections.Counter[str] = collections.Counter()
        self.sip: SipStats | None = None
        self.saturated: Callable[[], bool] | None = None
        self.rtp_port_pairs_free: Callable[[], int] | None = None
        self.clients: list[InferenceClient] = []
        self.processes_up: Callable[[], Mapping[str, int]] | None = None
        self.process_restarts: Callable[[], Mapping[str, int]] | None = None

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        yield from self._rtp()
        if self.sip is not None:
            yield from self._sip(self.sip)
        if self.saturated is not None and self.rtp_port_pairs_free is not None:
            yield GaugeMetricFamily(
                "asr_saturated", "1 while new calls are refused for capacity (scheduler or RTP ports)", value=int(self.saturated())
            )
            yield GaugeMetricFamily(
                "asr_rtp_port_pairs_free", "RTP/RTCP port pairs free for new channels", value=self.rtp_port_pairs_free()
            )
        if self.scheduler is not None:
            yield from self._scheduler(self.scheduler)
        if self.clients:
            yield from self._clients(self.clients)
        if self.processes_up is not None and self.process_restarts is not None:
            up = GaugeMetricFamily("asr_processes_up", "Child processes running, by role", labels=["role"])
            for role, count in sorted(self.processes_up().items()):
                up.add_metric([role], count)
            yield up
            restarts = CounterMetricFamily("asr_process_restarts", "Child processes restarted after they died, by role", labels=["role"])
            for role, count in sorted(self.process_restarts().items()):
                restarts.add_metric([role], count)
            yield restarts
        if self.kafka is not None:
            yield from self._kafka(self.kafka)
        if self.hub is not None:
            yield GaugeMetricFamily(
                "asr_livefeed_subscribers", "Open live-feed subscriptions (WebSockets)", value=self.hub.subscriber_count
            )
            yield CounterMetricFamily(
                "asr_livefeed_dropped_subscribers", "Live-feed clients cut off for falling behind", value=self.hub.dropped_subscribers
            )

    def _rtp(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        live = list(self.open_channels())
        packets = self.closed_packets + sum(stats.packets for stats in live)
        lost = self.closed_lost + sum(max(stats.lost, 0) for stats in live)
        yield CounterMetricFamily("asr_rtp_packets", "RTP packets accepted (duplicates excluded)", value=packets)
        yield CounterMetricFamily("asr_rtp_lost_packets", "RTP packets lost (RFC 3550 expected - received)", value=lost)
        yield GaugeMetricFamily(
            "asr_rtp_jitter_max_ms",
            "Highest RFC 3550 interarrival jitter among open channels",
            value=max((s.jitter_ms for s in live), default=0.0),
        )
        dropped = collections.Counter(self.closed_dropped)
        for stats in live:
            dropped.update(stats.dropped)
        family = CounterMetricFamily("asr_rtp_dropped", "RTP datagrams rejected, by reason (stray_ssrc, malformed, ...)", labels=["reason"])
        for reason, count in sorted(dropped.items()):
            family.add_metric([reason], count)
        yield family

    @staticmethod
    def _sip(stats: SipStats) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        for name, value, help_text in (
            ("asr_sip_messages", stats.received, "SIP messages received"),
            ("asr_sip_bad_requests", stats.bad_requests, "SIP requests answered 400 (malformed, or a field over its bound)"),
            ("asr_sip_rate_limited", stats.rate_limited, "New-call INVITEs answered 503 by the per-source rate limit"),
            ("asr_sip_forbidden_sources", stats.forbidden_sources, "SIP messages and connections from outside allowed_sources"),
            ("asr_sip_calls_confirmed", stats.calls_confirmed, "Answered calls the caller confirmed (ACK)"),
            ("asr_sip_unconfirmed_released", stats.unconfirmed_released, "Answered calls ended before their ACK to free RTP ports"),
        ):
            yield CounterMetricFamily(name, help_text, value=value)
        dropped = CounterMetricFamily("asr_sip_dropped", "SIP datagrams and connections dropped, by reason", labels=["reason"])
        for reason, count in sorted(stats.dropped.items()):
            dropped.add_metric([reason], count)
        yield dropped

    @staticmethod
    def _scheduler(scheduler: BatchScheduler) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        depth = GaugeMetricFamily("asr_scheduler_queue_depth", "Requests waiting for the engine", labels=["priority"])
        for priority in Priority:
            depth.add_metric([priority.name.lower()], scheduler.queued(priority))
        yield depth
        yield GaugeMetricFamily(
            "asr_scheduler_saturated", "1 while new calls are refused to protect finals", value=int(scheduler.saturated)
        )
        yield CounterMetricFamily(
            "asr_scheduler_shed_partials", "Partial requests shed (superseded or overload)", value=scheduler.stats.shed_partials
        )

    @staticmethod
    def _clients(clients: list[InferenceClient]) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        stats = [client.stats for client in clients]
        yield CounterMetricFamily(
            "asr_ipc_requests", "Transcription requests sent to the inference process", value=sum(s.requests for s in stats)
        )
        yield CounterMetricFamily(
            "asr_ipc_resent", "Requests sent again to a restarted inference process", value=sum(s.resent for s in stats)
        )
        yield CounterMetricFamily(
            "asr_ipc_lost_finals", "Finals lost because the inference process died with them twice", value=sum(s.lost for s in stats)
        )
        shed = CounterMetricFamily("asr_ipc_shed_partials", "Partials shed before reaching the inference process", labels=["reason"])
        shed.add_metric(["arena_full"], sum(s.shed_arena_full for s in stats))
        shed.add_metric(["inference_down"], sum(s.shed_unavailable for s in stats))
        yield shed

    @staticmethod
    def _kafka(sink: KafkaSink) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        yield CounterMetricFamily("asr_kafka_delivered", "Events acknowledged by the broker", value=sink.delivered)
        yield CounterMetricFamily("asr_kafka_failed", "Send attempts not acknowledged (spooled or dropped)", value=sink.failed)
        yield CounterMetricFamily("asr_kafka_spooled", "Events written to the on-disk spool", value=sink.spooled)
        yield CounterMetricFamily("asr_kafka_dropped", "Events dropped on purpose (queue or spool full)", value=sink.dropped)
        yield GaugeMetricFamily("asr_kafka_spool_records", "Events waiting in the spool", value=sink.spool_size)
        yield GaugeMetricFamily("asr_kafka_spool_bytes", "Bytes waiting in the spool", value=sink.spool_bytes)
