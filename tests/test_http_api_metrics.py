"""/metrics over real HTTP, fed by real components: scheduler batches, a Tansu broker, RTP over UDP, events."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

import aiohttp
from kafka_fixtures import kafka_broker, topic_name  # noqa: F401
from prometheus_client.parser import text_string_to_metric_families
from test_http_api import serving
from test_livefeed import ended, envelope, final, partial, started

from asr_stream.app.metrics import DaemonMetrics
from asr_stream.devtools.local_broker import LocalBroker
from asr_stream.inference.scheduler import BatchScheduler, Priority, SchedulerSettings
from asr_stream.rtp.ports import PortAllocator
from asr_stream.rtp.receiver import ReceiverConfig, RtpReceiver
from asr_stream.rtp.sender import g711_packets
from asr_stream.sinks.kafka import KafkaSettings, KafkaSink
from asr_stream.sinks.livefeed import LiveFeedHub
from asr_stream.transcript.events import SegmentPartial

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(base: str) -> Samples:
    """Every sample of /metrics, parsed with prometheus-client's own text parser."""
    async with aiohttp.ClientSession() as http, http.get(f"{base}/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = await response.text()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def upper(batch: Sequence[str]) -> list[str]:
    return [item.upper() for item in batch]


async def test_event_metrics_follow_a_call_from_start_to_end() -> None:
    metrics = DaemonMetrics()
    first = partial("c1", 0, 0, "my")
    second = SegmentPartial(
        **envelope("c1"),
        channel="caller",
        index=0,
        revision=1,
        text="my street",
        start_ms=0,
        end_ms=1800,
        latency_ms=100,
        emitted_at=first.emitted_at + timedelta(milliseconds=800),
    )
    async with serving(LiveFeedHub(), registry=metrics.registry) as base:
        metrics.observe_event(started("c1"))
        metrics.observe_event(first)
        metrics.observe_event(second)
        during = await scrape(base)
        metrics.observe_event(final("c1", 0, "My street light.", revision=2))  # latency_ms=300
        metrics.observe_event(ended("c1", 1))
        after = await scrape(base)
    assert during[("asr_calls_active", ())] == 1 and during[("asr_channels_active", ())] == 1
    assert during[("asr_partials_total", ())] == 2
    assert during[("asr_partial_interval_seconds_count", ())] == 1
    assert during[("asr_partial_interval_seconds_sum", ())] == 0.8
    assert after[("asr_calls_active", ())] == 0 and after[("asr_channels_active", ())] == 0
    assert after[("asr_calls_ended_total", (("reason", "hangup"),))] == 1
    assert after[("asr_vad_segments_total", ())] == 1
    assert after[("asr_final_latency_seconds_bucket", (("le", "0.2"),))] == 0
    assert after[("asr_final_latency_seconds_bucket", (("le", "0.3"),))] == 1


async def test_scheduler_batches_are_measured_and_its_queue_is_read_at_scrape_time() -> None:
    metrics = DaemonMetrics()
    scheduler: BatchScheduler[str, str] = BatchScheduler(metrics.timed_batch(upper), SchedulerSettings(max_batch=4, max_wait_s=0.02))
    metrics.watch_scheduler(scheduler)
    await scheduler.start()
    try:
        async with serving(LiveFeedHub(), registry=metrics.registry) as base:
            results = await asyncio.gather(*(scheduler.submit(f"k{i}", f"item{i}", Priority.FINAL) for i in range(6)))
            samples = await scrape(base)
    finally:
        await scheduler.stop()
    assert results == [f"ITEM{i}" for i in range(6)]
    assert samples[("asr_inference_batch_size_sum", ())] == 6
    assert samples[("asr_inference_batch_size_count", ())] == scheduler.stats.batches >= 2
    assert samples[("asr_inference_seconds_count", (("kind", "final"),))] == scheduler.stats.batches
    assert samples[("asr_scheduler_queue_depth", (("priority", "final"),))] == 0
    assert samples[("asr_scheduler_saturated", ())] == 0


async def test_kafka_and_livefeed_counters_are_read_from_the_components(kafka_broker: LocalBroker, topic_name: str, tmp_path: Path) -> None:
    metrics = DaemonMetrics()
    hub = LiveFeedHub()
    settings = KafkaSettings(bootstrap_servers=kafka_broker.bootstrap_servers, topic=topic_name, spool_dir=tmp_path / "spool")
    sink = KafkaSink(settings, on_delivered=metrics.observe_delivered)
    metrics.watch_kafka(sink)
    metrics.watch_livefeed(hub)
    sink.start()
    events = [started("c1"), final("c1", 0, "Hello."), ended("c1", 1)]
    try:
        for event in events:
            sink.publish(event)
        for _ in range(200):
            if sink.delivered == len(events):
                break
            await asyncio.sleep(0.05)
        async with serving(hub, registry=metrics.registry) as base:
            with hub.subscribe():
                samples = await scrape(base)
    finally:
        await sink.close(timeout_s=5)
    assert samples[("asr_kafka_delivered_total", ())] == len(events)
    # Each acknowledged event's time from creation to the broker's ack, by kind (a real broker: > 0, < the wait above).
    assert samples[("asr_kafka_delivery_seconds_count", (("event", "final"),))] == 1
    assert samples[("asr_kafka_delivery_seconds_count", (("event", "call"),))] == 2
    assert samples[("asr_kafka_delivery_seconds_count", (("event", "partial"),))] == 0
    assert 0 < samples[("asr_kafka_delivery_seconds_sum", (("event", "final"),))] < 10
    assert samples[("asr_kafka_failed_total", ())] == 0
    assert samples[("asr_kafka_spool_records", ())] == 0
    assert samples[("asr_livefeed_subscribers", ())] == 1


async def test_rtp_counters_include_closed_channels_and_never_go_down() -> None:
    metrics = DaemonMetrics()
    receiver = await RtpReceiver.open(PortAllocator("127.0.0.1", 42000, 42099), ReceiverConfig({0: "PCMU"}))
    open_receivers = [receiver]
    metrics.watch_rtp(lambda: [r.stats() for r in open_receivers])
    packets = g711_packets(bytes([0xFF]) * 160 * 40, 0, ssrc=0x5151)
    sent = [packet for index, packet in enumerate(packets) if index not in {10, 11, 20}]  # three lost
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        for packet in sent:
            sender.sendto(packet.to_bytes(), ("127.0.0.1", receiver.port))
            await asyncio.sleep(0.002)
    for _ in range(100):
        if receiver.stats().packets == len(sent):
            break
        await asyncio.sleep(0.01)
    async with serving(LiveFeedHub(), registry=metrics.registry) as base:
        while_open = await scrape(base)
        metrics.channel_closed(receiver.stats())  # what the daemon does as the channel ends
        open_receivers.clear()
        receiver.close()
        after_close = await scrape(base)
    for samples in (while_open, after_close):
        assert samples[("asr_rtp_packets_total", ())] == len(sent)
        assert samples[("asr_rtp_lost_packets_total", ())] == 3
    assert while_open[("asr_rtp_jitter_max_ms", ())] > 0
    assert after_close[("asr_rtp_jitter_max_ms", ())] == 0
