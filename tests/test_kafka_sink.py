"""KafkaSink against a real Kafka-protocol broker (Tansu): order, outages, spool replay, shutdown."""

from __future__ import annotations

import asyncio
import json
import time
from collections import defaultdict
from pathlib import Path

import jsonschema
import pytest
from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaTimeoutError
from kafka.producer.future import FutureProduceResult, FutureRecordMetadata
from kafka_fixtures import consume_all, durable_kafka_broker, kafka_broker, topic_name  # noqa: F401

from asr_stream.devtools.local_broker import LocalBroker, free_tcp_port
from asr_stream.sinks.in_doubt import SpoolHeadSent
from asr_stream.sinks.kafka import PARTIALS_HIGH_WATER, KafkaSettings, KafkaSink
from asr_stream.sinks.spool import Spool
from asr_stream.transcript.events import (
    CallEnded,
    CallStarted,
    ChannelInfo,
    EndReason,
    Party,
    SegmentFinal,
    SegmentPartial,
    TranscriptEvent,
    load_schema,
)

MODEL = {"model": "whisper-tiny.en", "engine": "onnxruntime-cpu", "language": "en"}


def call_events(call_id: str, segments: int) -> list[TranscriptEvent]:
    """A plausible call: start, per segment two partials and a final, end."""
    events: list[TranscriptEvent] = [
        CallStarted(
            call_id=call_id,
            **MODEL,
            parties=(Party(role="caller", uri=f"sip:{call_id}@gw.example"), Party(role="callee", uri="sip:hotline@pbx.example")),
            channels=(ChannelInfo(channel="caller", label="Citizen", codec="PCMU", sample_rate=8000),),
        )
    ]
    for index in range(segments):
        start = index * 3000
        for revision in range(2):
            events.append(
                SegmentPartial(
                    call_id=call_id,
                    **MODEL,
                    channel="caller",
                    index=index,
                    revision=revision,
                    text=f"seg {index} rev {revision}",
                    start_ms=start,
                    end_ms=start + 1000 * (revision + 1),
                    latency_ms=90,
                )
            )
        events.append(
            SegmentFinal(
                call_id=call_id,
                **MODEL,
                channel="caller",
                index=index,
                revision=2,
                text=f"segment {index} final",
                start_ms=start,
                end_ms=start + 2500,
                latency_ms=300,
            )
        )
    events.append(CallEnded(call_id=call_id, **MODEL, end_reason=EndReason.HANGUP, duration_ms=segments * 3000, final_segments=segments))
    return events


def interleaved(calls: int, segments: int) -> list[TranscriptEvent]:
    """Several calls' events interleaved round-robin, as concurrent calls produce them."""
    per_call = [call_events(f"call-{n}@test", segments) for n in range(calls)]
    return [event for step in zip(*per_call, strict=True) for event in step]


def identity(event: TranscriptEvent | dict) -> tuple[str, str, str | None, int | None]:
    wire = event if isinstance(event, dict) else event.to_dict()
    return (wire["call_id"], wire["event"], wire["segment_id"], wire["revision"])


#: For tests with a healthy broker that expect no failure: a loaded 2-core runner can take over a
#: second for a topic's creation or a produce round trip, which the outage tests' fast failure would count.
PATIENT = {"request_timeout_ms": 10000, "delivery_timeout_ms": 20000}


def settings_for(broker_servers: str, topic: str, spool_dir: Path, **overrides: object) -> KafkaSettings:
    fast_failure = {"request_timeout_ms": 1000, "delivery_timeout_ms": 2000, "partitions": 3}
    return KafkaSettings(bootstrap_servers=broker_servers, topic=topic, spool_dir=spool_dir, **(fast_failure | overrides))  # type: ignore[arg-type]


def assert_delivered_once_in_order(records: list, published: list[TranscriptEvent], in_doubt: int = 0) -> None:
    """Per call: exactly the published events, in publish order, on one partition.

    `in_doubt` is how many sends the sink reported unacknowledged: when a broker dies after
    writing a record but before acknowledging it, the sink must re-send it (at-least-once), so
    up to that many byte-identical redeliveries are allowed; the first copies must still be
    complete and in order. With in_doubt=0 every event must arrive exactly once.
    """
    expected: dict[str, list] = defaultdict(list)
    for event in published:
        expected[event.call_id].append(identity(event))
    received: dict[str, list] = defaultdict(list)
    partitions: dict[str, set[int]] = defaultdict(set)
    first_copies: dict[tuple, bytes] = {}
    redeliveries = 0
    for record in records:
        wire = json.loads(record.value)
        assert record.key.decode() == wire["call_id"]
        partitions[wire["call_id"]].add(record.partition)
        if identity(wire) in first_copies:
            assert first_copies[identity(wire)] == record.value, "a redelivery must be the same bytes"
            redeliveries += 1
            continue
        first_copies[identity(wire)] = record.value
        received[wire["call_id"]].append(identity(wire))
    assert redeliveries <= in_doubt, f"{redeliveries} duplicates but only {in_doubt} sends were in doubt"
    assert received.keys() == expected.keys()
    for call_id, events in expected.items():
        got = received[call_id]
        first_difference = next((n for n, pair in enumerate(zip(got, events)) if pair[0] != pair[1]), min(len(got), len(events)))
        assert got == events, (
            f"{call_id}: {len(got)} received, {len(events)} published, first difference at #{first_difference}: {got[first_difference : first_difference + 3]} vs {events[first_difference : first_difference + 3]}"
        )
    assert all(len(used) == 1 for used in partitions.values())


async def wait_for(condition, timeout_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_interleaved_calls_arrive_valid_once_and_in_order(kafka_broker: LocalBroker, topic_name: str, tmp_path: Path) -> None:
    published = interleaved(calls=4, segments=5)
    sink = KafkaSink(settings_for(kafka_broker.bootstrap_servers, topic_name, tmp_path, **PATIENT))
    sink.start()
    for event in published:
        sink.publish(event)
        await asyncio.sleep(0)  # let batches form as in the daemon, not one giant batch
    await sink.close()
    assert (sink.delivered, sink.failed, sink.spooled, sink.spool_size) == (len(published), 0, 0, 0)
    assert sink.idempotent is True

    records = consume_all(kafka_broker.bootstrap_servers, topic_name, expected=len(published))
    validator = jsonschema.Draft202012Validator(load_schema(), format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    for record in records:
        validator.validate(json.loads(record.value))
    assert_delivered_once_in_order(records, published)


async def test_creates_the_topic_with_the_configured_partitions(kafka_broker: LocalBroker, topic_name: str, tmp_path: Path) -> None:
    sink = KafkaSink(settings_for(kafka_broker.bootstrap_servers, topic_name, tmp_path, partitions=5, **PATIENT))
    sink.start()
    sink.publish(call_events("only@test", segments=0)[0])
    await sink.close()
    consumer = KafkaConsumer(bootstrap_servers=kafka_broker.bootstrap_servers)
    try:
        assert consumer.partitions_for_topic(topic_name) == set(range(5))
    finally:
        consumer.close()


async def test_broker_down_at_start_spools_then_replays_before_new_events(topic_name: str, tmp_path: Path) -> None:
    broker = LocalBroker(port=free_tcp_port())
    published = interleaved(calls=3, segments=4)
    first, second = published[:20], published[20:]  # the same calls go on after the broker is back
    sink = KafkaSink(settings_for(broker.bootstrap_servers, topic_name, tmp_path))
    sink.start()
    try:
        for event in first:
            sink.publish(event)
        await wait_for(lambda: sink.spool_size == len(first), 10, "the first events to be spooled")
        broker.start()
        for event in second:
            sink.publish(event)
        await sink.close(timeout_s=20)
        assert (sink.delivered, sink.spool_size) == (len(first) + len(second), 0)
        assert list(tmp_path.iterdir()) == [], "a drained spool leaves nothing behind"
        records = consume_all(broker.bootstrap_servers, topic_name, expected=len(first) + len(second))
        assert_delivered_once_in_order(records, first + second)
    finally:
        broker.stop()


async def test_shutdown_while_broker_is_down_keeps_events_for_the_next_start(topic_name: str, tmp_path: Path) -> None:
    broker = LocalBroker(port=free_tcp_port())
    published = interleaved(calls=2, segments=3)
    sink = KafkaSink(settings_for(broker.bootstrap_servers, topic_name, tmp_path))
    sink.start()
    for event in published:
        sink.publish(event)
    await sink.close(timeout_s=2)
    assert (sink.delivered, sink.spool_size) == (0, len(published))

    broker.start()
    try:
        restarted = KafkaSink(settings_for(broker.bootstrap_servers, topic_name, tmp_path))
        assert restarted.spool_size == 0, "counters start at zero until the thread has opened the spool"
        restarted.start()
        await restarted.close(timeout_s=20)
        assert (restarted.delivered, restarted.spool_size) == (len(published), 0)
        assert_delivered_once_in_order(consume_all(broker.bootstrap_servers, topic_name, expected=len(published)), published)
    finally:
        broker.stop()


async def test_close_flushes_a_burst_without_loss(kafka_broker: LocalBroker, topic_name: str, tmp_path: Path) -> None:
    published = interleaved(calls=20, segments=10)  # 20 calls x 32 events
    sink = KafkaSink(settings_for(kafka_broker.bootstrap_servers, topic_name, tmp_path, **PATIENT))
    sink.start()
    for event in published:
        sink.publish(event)
    await sink.close(timeout_s=30)
    assert (sink.delivered, sink.spool_size, sink.dropped) == (len(published), 0, 0)
    assert_delivered_once_in_order(consume_all(kafka_broker.bootstrap_servers, topic_name, expected=len(published)), published)


@pytest.mark.slow
async def test_broker_restart_mid_stream_delivers_every_event_once_in_order(
    durable_kafka_broker: LocalBroker, topic_name: str, tmp_path: Path
) -> None:
    """The broker stops while events flow, stays away longer than the delivery timeout (so the
    sink must spool), and comes back on the same port with its data (S3 storage).

    The kill can land between the broker writing a batch and acknowledging it; no Kafka producer
    can know whether such a batch was written, so those sends (and only those) may show up twice.
    """
    published = interleaved(calls=5, segments=8)  # 5 x 26 events
    sink = KafkaSink(settings_for(durable_kafka_broker.bootstrap_servers, topic_name, tmp_path))
    sink.start()
    broker_back = asyncio.Event()

    async def publish_steadily() -> None:
        """Events keep coming through the outage; the last quarter waits for the broker's return."""
        for number, event in enumerate(published):
            if number == 3 * len(published) // 4:
                await broker_back.wait()
            sink.publish(event)
            await asyncio.sleep(0.02)

    publisher = asyncio.create_task(publish_steadily())
    await wait_for(lambda: sink.delivered >= len(published) // 4, 20, "a quarter of the events to be delivered")
    await asyncio.to_thread(durable_kafka_broker.stop, 0.5)  # SIGTERM, then SIGKILL: a crash-like stop
    await wait_for(lambda: sink.spooled > 0, 20, "the sink to spool during the outage")
    await asyncio.to_thread(durable_kafka_broker.start)
    broker_back.set()
    await asyncio.wait_for(publisher, 30)
    await sink.close(timeout_s=30)
    assert (sink.delivered, sink.spool_size, sink.dropped) == (len(published), 0, 0)
    records = consume_all(durable_kafka_broker.bootstrap_servers, topic_name, expected=len(published))
    assert sink.failed > 0
    assert_delivered_once_in_order(records, published, in_doubt=sink.failed)


def test_settings_reject_unknown_security_options_and_hide_secrets(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="sasl_plain_pasword"):
        KafkaSettings(bootstrap_servers="127.0.0.1:9", spool_dir=tmp_path, security={"sasl_plain_pasword": "x"})
    settings = KafkaSettings(
        bootstrap_servers="127.0.0.1:9",
        spool_dir=tmp_path,
        security={"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN", "sasl_plain_username": "u", "sasl_plain_password": "hunter2"},
    )
    assert "hunter2" not in repr(settings)


async def test_full_spool_keeps_room_for_finals_and_drops_what_does_not_fit(tmp_path: Path) -> None:
    broker_port = free_tcp_port()  # nothing listens: every event must go to the spool
    published = call_events("long@test", segments=8)  # 26 events of ~400 B
    settings = settings_for(f"127.0.0.1:{broker_port}", "unused", tmp_path, spool_max_bytes=5000)
    sink = KafkaSink(settings)
    sink.start()
    for event in published:
        sink.publish(event)
        index = published.index(event)
        await wait_for(lambda index=index: sink.spooled + sink.dropped > index, 5, "the event to be spooled or dropped")
    await sink.close(timeout_s=2)
    assert sink.spooled + sink.dropped == len(published) and sink.dropped > 0
    spool = Spool(tmp_path)
    assert len(spool) == sink.spool_size == sink.spooled
    assert sink.spool_bytes == spool.size_bytes <= 5000
    used_before = 0  # bytes on disk when each record was appended (12-byte frame header)
    for record in spool.peek(100):
        if json.loads(record.value)["event"] == "segment.partial":
            assert used_before < PARTIALS_HIGH_WATER * 5000, "a partial was spooled above the high-water mark"
        used_before += 12 + len(record.key) + len(record.value)
    assert used_before >= PARTIALS_HIGH_WATER * 5000, "finals must be able to use the room kept for them"


async def test_a_batch_in_flight_through_a_broker_freeze_is_delivered_once(
    kafka_broker: LocalBroker, topic_name: str, tmp_path: Path
) -> None:
    """Issue 11: the broker freezes (SIGSTOP) with a batch on its socket, longer than the delivery
    timeout, so the sink spools it; then it thaws and writes that batch after all. The spooled copy
    must not be published a second time: the producer retries the batch with its original producer
    id and sequence numbers, and the broker drops whichever copy comes second (idempotence).
    """
    published = interleaved(calls=3, segments=6)  # 3 x 20 events
    sink = KafkaSink(settings_for(kafka_broker.bootstrap_servers, topic_name, tmp_path))
    sink.start()
    half = len(published) // 2
    for event in published[:half]:
        sink.publish(event)
    await wait_for(lambda: sink.delivered == half, 20, "the first half to be delivered")
    assert sink.idempotent
    kafka_broker.freeze()
    try:
        for event in published[half:]:
            sink.publish(event)
        # A request already read when the broker stopped may still be acknowledged; the rest is spooled.
        await wait_for(lambda: sink.delivered + sink.spooled >= len(published), 20, "the unacknowledged batch to be spooled")
        await asyncio.sleep(1.0)  # frozen well past the delivery timeout
    finally:
        kafka_broker.thaw()
    await wait_for(lambda: sink.spool_size == 0, 30, "the spool to drain")
    await sink.close(timeout_s=10)
    assert sink.failed > 0, "no send was ever in doubt: the freeze came too late"
    assert (sink.delivered, sink.dropped) == (len(published), 0)
    assert_delivered_once_in_order(consume_all(kafka_broker.bootstrap_servers, topic_name, expected=len(published)), published)


# The sink thread must end cleanly: kafka-python's close() raising inside it once killed it.
@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")
async def test_a_stop_while_a_batch_is_in_doubt_keeps_it_and_may_repeat_only_that_batch(
    kafka_broker: LocalBroker, topic_name: str, tmp_path: Path
) -> None:
    """What remains duplicable (docs/events.md, case 2): the sink stops while the frozen broker still
    holds a batch unanswered. The stop does not wait for the broker (its thread ends while the broker
    is still frozen), nothing is lost, and when the broker thaws and a new sink replays the spool,
    only that batch can appear twice (a new producer id)."""
    published = interleaved(calls=3, segments=6)
    first, in_flight, later = published[:20], published[20:40], published[40:]
    sink = KafkaSink(settings_for(kafka_broker.bootstrap_servers, topic_name, tmp_path))
    sink.start()
    for event in first:
        sink.publish(event)
    await wait_for(lambda: sink.delivered == len(first), 20, "the first events to be delivered")
    kafka_broker.freeze()
    try:
        for event in in_flight:
            sink.publish(event)
        await wait_for(lambda: sink.delivered + sink.spooled >= len(first) + len(in_flight), 20, "the batch in doubt to be spooled")
        for event in later:
            sink.publish(event)
        await wait_for(lambda: sink.delivered + sink.spooled >= len(published), 20, "later events to be spooled behind it")
        await sink.close(timeout_s=1)
        # What must hold is that the sink's thread ends while the broker is still frozen; close()
        # bounds its own wait, but how soon the thread gets the CPU to end measures the machine
        # (5.6 s once on a loaded 2-core runner), so the test waits for it, the broker still frozen.
        await wait_for(lambda: not sink.alive, 30, "the sink's thread to end, the broker still frozen")
        assert sink.spool_size > len(later) and sink.delivered + sink.spool_size == len(published)
    finally:
        kafka_broker.thaw()
    successor = KafkaSink(settings_for(kafka_broker.bootstrap_servers, topic_name, tmp_path))
    successor.start()
    await wait_for(lambda: successor.spool_size == 0, 30, "the successor to replay the spool")
    await successor.close(timeout_s=10)
    records = consume_all(kafka_broker.bootstrap_servers, topic_name, expected=len(published))
    values = [record.value for record in records]
    repeated = {value for value in values if values.count(value) > 1}
    assert repeated <= {event.to_json() for event in in_flight}, "only the batch in doubt may be repeated"
    assert_delivered_once_in_order(records, published, in_doubt=len(in_flight))


def test_which_spooled_records_in_doubt_the_replay_skips() -> None:
    """Written records are skipped unless an earlier record of the same call must be sent again;
    a 'duplicate' answer without an offset counts only once found in the log."""
    partition = TopicPartition("t", 0)

    def answered(base_offset: int | None) -> FutureRecordMetadata:
        produce = FutureProduceResult(partition)
        future = FutureRecordMetadata(produce, 0, 0, None, 1, 1, -1)
        if base_offset is not None:
            produce.success((base_offset, -1, None))
        return future

    pending = answered(None)
    head = SpoolHeadSent([b"a", b"b", b"a", b"b", b"c", b"c"], [True, False, answered(7), True, answered(-1), pending])
    assert not head.settled()
    pending.failure(KafkaTimeoutError("expired"))
    assert head.settled() and head.unconfirmed() == {4: partition}
    assert head.delivered(confirmed=set()) == {0, 2}  # b's later record waits for b's resend; c's 'duplicate' was not found
    assert head.delivered(confirmed={4}) == {0, 2, 4}
