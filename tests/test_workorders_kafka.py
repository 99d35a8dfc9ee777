"""`asr-stream workorders` against a real Kafka-protocol broker (Tansu): calls in, one draft per call out.

The consumer runs as it does in production: a consumer-group member (in a thread here, or the
real CLI in a subprocess where the test kills it), committing offsets only after its drafts are
acknowledged. Group sessions are short because Tansu makes a join wait half the session timeout.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import jsonschema
import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.partitioner.default import murmur2
from kafka_fixtures import consume_all, durable_kafka_broker, kafka_broker, topic_name  # noqa: F401
from workorder_events import T0, CallScript, simple_call

from asr_stream.devtools.local_broker import LocalBroker, free_tcp_port
from asr_stream.sinks.kafka import KafkaSettings, KafkaSink
from asr_stream.transcript.events import TranscriptEvent
from asr_stream.workorders.consumer import WorkOrderConsumer, WorkOrderSettings
from asr_stream.workorders.draft import load_draft_schema, work_order_id
from asr_stream.workorders.rules import load_rules

REPO = Path(__file__).resolve().parents[1]
HOTLINE_RULES = REPO / "deploy" / "workorders" / "rules.yaml"
DRAFT_VALIDATOR = jsonschema.Draft202012Validator(load_draft_schema())
GROUP_SESSION_MS = 2000  # Tansu: a join takes half of it

Record = tuple[bytes | None, bytes | None]  # key, value


# --- helpers ------------------------------------------------------------------------------------


def wait_until(condition: Callable[[], object], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        admin.close()


def as_records(events: Sequence[TranscriptEvent]) -> list[Record]:
    return [(event.call_id.encode(), event.to_json()) for event in events]


def produce(bootstrap: str, topic: str, records: Sequence[Record]) -> list[tuple[int, int]]:
    """Send in order, each acknowledged before the next; returns (partition, offset) per record."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        placed = []
        for key, value in records:
            metadata = producer.send(topic, key=key, value=value).get(timeout=10)
            placed.append((metadata.partition, metadata.offset))
        return placed
    finally:
        producer.close()


def committed(bootstrap: str, group: str, topic: str, partition: int = 0) -> int | None:
    """The group's committed offset, read without joining the group."""
    reader = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        return reader.committed(TopicPartition(topic, partition))
    finally:
        reader.close()


def wait_committed(bootstrap: str, group: str, topic: str, offset: int, partition: int = 0) -> None:
    wait_until(lambda: committed(bootstrap, group, topic, partition) == offset, 10, f"committed offset {offset} on {topic}[{partition}]")


def read_drafts(bootstrap: str, topic: str, expected: int) -> list[dict]:
    """Every draft on the topic (reading on 0.5 s past `expected`, so a duplicate would show)."""
    records = consume_all(bootstrap, topic, expected=expected, timeout_s=20)
    drafts = []
    for record in records:
        draft = json.loads(record.value)
        DRAFT_VALIDATOR.validate(draft)
        assert record.key == draft["call_id"].encode()
        drafts.append(draft | {"_raw": record.value})
    return drafts


def settings_for(broker: LocalBroker, topic: str, group: str = "workorders") -> WorkOrderSettings:
    return WorkOrderSettings(
        bootstrap_servers=broker.bootstrap_servers,
        topic=topic,
        out_topic=f"{topic}.drafts",
        group_id=group,
        session_timeout_ms=GROUP_SESSION_MS,
        request_timeout_ms=3000,
        poll_timeout_ms=100,
    )


@contextmanager
def running(settings: WorkOrderSettings) -> Iterator[WorkOrderConsumer]:
    """A consumer in a thread, stopped (leaving the group) when the block ends."""
    consumer = WorkOrderConsumer(settings, load_rules(HOTLINE_RULES))
    stop = threading.Event()
    failures: list[Exception] = []

    def run() -> None:
        try:
            consumer.run(stop)
        except Exception as error:  # surfaced by the assertion below
            failures.append(error)

    thread = threading.Thread(target=run, name="workorders-under-test")
    thread.start()
    try:
        wait_until(lambda: consumer.assigned or failures, 15, "a partition assignment")
        yield consumer
    finally:
        stop.set()
        thread.join(timeout=15)
    assert not thread.is_alive(), "the consumer did not stop"
    assert not failures, failures


def hotline_call(call_id: str, start=T0) -> tuple[CallScript, list[TranscriptEvent]]:
    script = CallScript(call_id, start=start)
    events = [
        script.started(),
        script.partial("caller", "你好我家", 1000, 2000),
        script.final("caller", "你好，我家从早上开始停水了", 1000, 3500),
        script.partial("caller", "电话", 4000, 5000),
        script.final("caller", "我的电话是幺三八一二三四五六七八", 4000, 7000),
        script.ended(duration_ms=8000),
    ]
    return script, events


# --- tests --------------------------------------------------------------------------------------


def test_a_normal_call_published_by_the_daemon_sink_becomes_one_draft(kafka_broker, topic_name, tmp_path) -> None:
    _, events = hotline_call("normal-1@gw.example")
    sink = KafkaSink(
        KafkaSettings(
            bootstrap_servers=kafka_broker.bootstrap_servers,
            topic=topic_name,
            spool_dir=tmp_path / "spool",
            partitions=3,
            request_timeout_ms=2000,
            delivery_timeout_ms=4000,
        )
    )

    async def publish() -> None:
        sink.start()
        for event in events:
            sink.publish(event)
        await sink.close()

    asyncio.run(publish())
    assert sink.delivered == len(events)

    settings = settings_for(kafka_broker, topic_name)
    with running(settings) as consumer:
        [draft] = read_drafts(kafka_broker.bootstrap_servers, settings.out_topic, expected=1)
        assert consumer.assigned == {TopicPartition(topic_name, partition) for partition in range(3)}
    assert draft["work_order_id"] == work_order_id("normal-1@gw.example")
    assert (draft["call_id"], draft["from_uri"], draft["to_uri"]) == (
        "normal-1@gw.example",
        "sip:+8613800000000@gw.example",
        "sip:12345@hotline.example",
    )
    assert (draft["started_at"], draft["ended_at"], draft["duration_ms"], draft["language"]) == (
        "2026-11-22T09:30:00.000Z",
        "2026-11-22T09:30:08.500Z",
        8000,
        "zh",
    )
    assert draft["transcript"] == [
        {"channel": "caller", "start_ms": 1000, "end_ms": 3500, "text": "你好，我家从早上开始停水了"},
        {"channel": "caller", "start_ms": 4000, "end_ms": 7000, "text": "我的电话是幺三八一二三四五六七八"},
    ]
    assert (draft["category"], draft["matched_terms"], draft["complete"]) == ("water", ["停水"], True)
    assert draft["contact_numbers"] == [{"number": "13812345678", "kind": "mobile", "channel": "caller", "start_ms": 4000}]
    assert consumer.drafts_published == 1 and consumer.records_skipped == 0


def test_two_interleaved_calls_and_the_committed_offset_waits_for_the_open_one(kafka_broker, topic_name) -> None:
    create_topic(kafka_broker.bootstrap_servers, topic_name, 1)
    settings = settings_for(kafka_broker, topic_name)
    a, b = CallScript("a@gw"), CallScript("b@gw")
    first_half = [
        a.started(),
        b.started(),
        a.final("caller", "暖气不热", 500, 2000),
        b.final("caller", "楼下太吵了，噪音扰民", 600, 2500),
        a.final("caller", "室温只有十五度", 2500, 4000),
        a.ended(4500),
    ]
    second_half = [b.final("caller", "电话010 8765 4321", 2600, 5000), b.ended(5500)]
    with running(settings):
        placed = produce(kafka_broker.bootstrap_servers, topic_name, as_records(first_half))
        [draft_a] = read_drafts(kafka_broker.bootstrap_servers, settings.out_topic, expected=1)
        b_started_at = placed[1][1]
        wait_committed(kafka_broker.bootstrap_servers, settings.group_id, topic_name, b_started_at)  # b is open: not past its start
        placed += produce(kafka_broker.bootstrap_servers, topic_name, as_records(second_half))
        drafts = read_drafts(kafka_broker.bootstrap_servers, settings.out_topic, expected=2)
        wait_committed(kafka_broker.bootstrap_servers, settings.group_id, topic_name, placed[-1][1] + 1)
    assert [draft["call_id"] for draft in drafts] == ["a@gw", "b@gw"]
    draft_b = drafts[1]
    assert (draft_a["category"], [line["text"] for line in draft_a["transcript"]]) == ("heating", ["暖气不热", "室温只有十五度"])
    assert (draft_b["category"], [line["text"] for line in draft_b["transcript"]]) == (
        "noise",
        ["楼下太吵了，噪音扰民", "电话010 8765 4321"],
    )
    assert draft_b["contact_numbers"] == [{"number": "010-87654321", "kind": "landline", "channel": "caller", "start_ms": 2600}]


def test_a_siprec_call_with_two_channels_is_merged_in_time_order(kafka_broker, topic_name) -> None:
    create_topic(kafka_broker.bootstrap_servers, topic_name, 3)
    settings = settings_for(kafka_broker, topic_name)
    script = CallScript(
        "siprec-42@sbc.example",
        channels=("caller", "agent"),
        caller_uri="sip:+8602187654321@carrier.example",
        callee_uri="sip:agent-17@hotline.example",
    )
    greeting = script.final("agent", "您好，这里是12345热线", 0, 1800)
    complaint = script.final("caller", "我们小区的暖气一直不热", 2000, 4500)
    question = script.final("agent", "请留一个联系电话", 4700, 6000)
    number_1 = script.final("caller", "一三九，八七六五", 6200, 7400)
    number_2 = script.final("caller", "四三二一", 7600, 8400)
    readback = script.final("agent", "13987654321，对吗", 8600, 10_000)
    # Each channel is transcribed on its own, so finals of the two channels arrive out of media order.
    events = [
        script.started(),
        complaint,
        greeting,
        script.partial("agent", "请留", 4700, 5500),
        number_1,
        question,
        number_2,
        readback,
        script.ended(10_500),
    ]
    with running(settings):
        produce(kafka_broker.bootstrap_servers, topic_name, as_records(events))
        [draft] = read_drafts(kafka_broker.bootstrap_servers, settings.out_topic, expected=1)
    assert (draft["from_uri"], draft["to_uri"]) == ("sip:+8602187654321@carrier.example", "sip:agent-17@hotline.example")
    assert draft["channels"] == [{"channel": "caller", "label": "Citizen"}, {"channel": "agent", "label": "Agent"}]
    assert [(line["channel"], line["text"]) for line in draft["transcript"]] == [
        (final.channel, final.text) for final in (greeting, complaint, question, number_1, number_2, readback)
    ]
    assert (draft["category"], draft["complete"]) == ("heating", True)
    assert draft["contact_numbers"] == [{"number": "13987654321", "kind": "mobile", "channel": "caller", "start_ms": 6200}]


def test_duplicates_and_malformed_records_are_dropped_and_skipped(kafka_broker, topic_name, caplog) -> None:
    create_topic(kafka_broker.bootstrap_servers, topic_name, 1)
    settings = settings_for(kafka_broker, topic_name)
    x = CallScript("dup-x@gw")
    started, f0, f1 = x.started(), x.final("caller", "垃圾三天没有清运了", 0, 2000), x.final("caller", "在幸福路12号", 2100, 3500)
    ended = x.ended(4000)
    key = x.call_id.encode()
    final_v1 = json.loads(f1.to_json())
    malformed: list[Record] = [
        (key, b"\x00\x01 not json"),
        (key, json.dumps(final_v1 | {"schema": "asr-stream.transcript.v2"}).encode()),
        (key, None),  # a tombstone
        (key, b'["a", "list"]'),
        (key, json.dumps(final_v1 | {"end_ms": "soon"}).encode()),
    ]
    records = (
        as_records([started, f0, f0, x.partial("caller", "在幸福", 2100, 2800)])
        + malformed[:3]
        + as_records([f1, started])
        + malformed[3:]
        + as_records([f1, ended])
        + as_records([f1, ended])
    )  # the daemon re-sent its last records: a tail after the end
    _, y_events = hotline_call("after-y@gw")
    with caplog.at_level("WARNING", logger="asr_stream.workorders"), running(settings) as consumer:
        placed = produce(kafka_broker.bootstrap_servers, topic_name, records + as_records(y_events))
        drafts = read_drafts(kafka_broker.bootstrap_servers, settings.out_topic, expected=2)
        wait_committed(kafka_broker.bootstrap_servers, settings.group_id, topic_name, placed[-1][1] + 1)
        assert (consumer.records_skipped, consumer.drafts_published) == (5, 2)
    assert [draft["call_id"] for draft in drafts] == ["dup-x@gw", "after-y@gw"]
    assert [line["text"] for line in drafts[0]["transcript"]] == ["垃圾三天没有清运了", "在幸福路12号"]
    assert (drafts[0]["category"], drafts[0]["complete"]) == ("sanitation", True)
    skipped_offsets = [placed[index][1] for index, record in enumerate(records) if record in malformed]
    for offset, reason in zip(
        skipped_offsets, ["not JSON", "unknown schema 'asr-stream.transcript.v2'", "tombstone", "not a JSON object", "end_ms"], strict=True
    ):
        assert any(f"{topic_name}[0]@{offset}: " in line and reason in line for line in caplog.messages), (offset, reason, caplog.messages)


def test_a_broker_outage_mid_call_is_ridden_out(durable_kafka_broker, topic_name) -> None:
    """The broker restarts (keeping its data) while a call is open: the consumer reconnects and drafts it whole."""
    broker = durable_kafka_broker
    create_topic(broker.bootstrap_servers, topic_name, 1)
    settings = settings_for(broker, topic_name)
    _, before = hotline_call("before-outage@gw")
    _, across = hotline_call("across-outage@gw", start=T0 + timedelta(seconds=30))
    with running(settings) as consumer:
        placed = produce(broker.bootstrap_servers, topic_name, as_records(before + across[:3]))
        read_drafts(broker.bootstrap_servers, settings.out_topic, expected=1)
        wait_committed(broker.bootstrap_servers, settings.group_id, topic_name, placed[len(before)][1])
        broker.stop(timeout_s=0.5)  # Tansu waits for its clients on SIGTERM: this one is killed, like a crash
        time.sleep(1.0)
        broker.start()
        produce(broker.bootstrap_servers, topic_name, as_records(across[3:]))
        drafts = read_drafts(broker.bootstrap_servers, settings.out_topic, expected=2)
        assert consumer.drafts_published == 2
    assert [draft["call_id"] for draft in drafts] == ["before-outage@gw", "across-outage@gw"]
    assert [line["text"] for line in drafts[1]["transcript"]] == ["你好，我家从早上开始停水了", "我的电话是幺三八一二三四五六七八"]


def call_ids_by_partition(partitions: int, per_partition: int, tag: str) -> dict[int, list[str]]:
    """Call ids that the producer's own hash (murmur2, as Java's) spreads evenly over the partitions."""
    call_ids: dict[int, list[str]] = {partition: [] for partition in range(partitions)}
    for number in range(1000):
        call_id = f"call-{number}@{tag}"
        partition = (murmur2(call_id.encode()) & 0x7FFFFFFF) % partitions
        if len(call_ids[partition]) < per_partition:
            call_ids[partition].append(call_id)
    assert all(len(ids) == per_partition for ids in call_ids.values())
    return call_ids


def interleave(calls: Sequence[Sequence[TranscriptEvent]]) -> list[TranscriptEvent]:
    """Concurrent calls: their events taken round-robin."""
    return [event for step in zip(*calls, strict=True) for event in step]


def split_between(first: WorkOrderConsumer, second: WorkOrderConsumer, partitions: int) -> Callable[[], bool]:
    return lambda: bool(
        first.assigned and second.assigned and len(first.assigned | second.assigned) == partitions and not first.assigned & second.assigned
    )


def test_two_consumers_in_one_group_split_the_calls_and_draft_each_once(kafka_broker, topic_name) -> None:
    partitions = 4
    create_topic(kafka_broker.bootstrap_servers, topic_name, partitions)
    settings = settings_for(kafka_broker, topic_name, group="shared")
    call_ids = call_ids_by_partition(partitions, 2, "split")
    everyone = [call_id for ids in call_ids.values() for call_id in ids]
    calls = [simple_call(call_id, texts=("路灯坏了", f"电话1390000{number:04d}")) for number, call_id in enumerate(everyone)]
    with running(settings) as first, running(settings) as second:
        wait_until(split_between(first, second, partitions), 20, "the group to split the partitions")
        produce(kafka_broker.bootstrap_servers, topic_name, as_records(interleave(calls)))
        drafts = read_drafts(kafka_broker.bootstrap_servers, settings.out_topic, expected=len(everyone))
        counts = (first.drafts_published, second.drafts_published)
        calls_of = [{call_id for tp in member.assigned for call_id in call_ids[tp.partition]} for member in (first, second)]
    assert Counter(draft["call_id"] for draft in drafts) == Counter(everyone)  # each call exactly once
    assert counts == (len(calls_of[0]), len(calls_of[1])) and min(counts) > 0
    for draft in drafts:
        number = everyone.index(draft["call_id"])
        assert draft["contact_numbers"][0]["number"] == f"1390000{number:04d}" and draft["category"] == "traffic"


def test_a_member_joining_mid_call_takes_over_partitions_without_losing_open_calls(kafka_broker, topic_name) -> None:
    """A rebalance moves partitions while every call is open: the new owner re-reads them whole."""
    partitions = 4
    bootstrap = kafka_broker.bootstrap_servers
    create_topic(bootstrap, topic_name, partitions)
    settings = settings_for(kafka_broker, topic_name, group="growing")
    everyone = [call_id for ids in call_ids_by_partition(partitions, 2, "grow").values() for call_id in ids]
    calls = [simple_call(call_id, texts=("小区垃圾没人清运", "环卫车也不来")) for call_id in everyone]
    with running(settings) as first:
        wait_until(lambda: len(first.assigned) == partitions, 15, "the first member to own every partition")
        placed = produce(bootstrap, topic_name, as_records(interleave([call[:3] for call in calls])))  # start, partial, final
        for partition in range(partitions):  # the first member has read them: committed stays at each partition's first start
            wait_committed(bootstrap, settings.group_id, topic_name, min(offset for p, offset in placed if p == partition), partition)
        with running(settings) as second:
            wait_until(split_between(first, second, partitions), 20, "the group to split the partitions")
            produce(bootstrap, topic_name, as_records(interleave([call[3:] for call in calls])))
            drafts = read_drafts(bootstrap, settings.out_topic, expected=len(everyone))
            assert first.drafts_published > 0 and second.drafts_published > 0
    assert Counter(draft["call_id"] for draft in drafts) == Counter(everyone)
    for draft in drafts:
        assert [line["text"] for line in draft["transcript"]] == ["小区垃圾没人清运", "环卫车也不来"] and draft["complete"]


def start_cli(broker: LocalBroker, topic: str, group: str, log_path: Path) -> subprocess.Popen:
    command = [
        sys.executable,
        "-m",
        "asr_stream.cli",
        "workorders",
        "--bootstrap",
        broker.bootstrap_servers,
        "--topic",
        topic,
        "--out-topic",
        f"{topic}.drafts",
        "--group-id",
        group,
        "--rules",
        str(HOTLINE_RULES),
        "--session-timeout-ms",
        str(GROUP_SESSION_MS),
    ]
    with log_path.open("ab") as log:
        process = subprocess.Popen(command, cwd=REPO, env=os.environ | {"PYTHONPATH": str(REPO)}, stdout=log, stderr=subprocess.STDOUT)
    wait_until(lambda: "assigned [" in log_path.read_text() or process.poll() is not None, 20, "the CLI to join its group")
    assert process.poll() is None, log_path.read_text()
    return process


def test_a_consumer_killed_mid_call_loses_nothing_and_redrafts_with_the_same_id(kafka_broker, topic_name, tmp_path) -> None:
    bootstrap, group, out_topic = kafka_broker.bootstrap_servers, "restart", f"{topic_name}.drafts"
    create_topic(bootstrap, topic_name, 1)
    log_path = tmp_path / "workorders.log"
    _, done_before = hotline_call("c-done-before@gw")
    open_call = CallScript("a-open@gw", start=T0 + timedelta(seconds=10))
    a_before = [open_call.started(), open_call.final("caller", "我要投诉，商家不给退款", 0, 2500)]
    _, b_events = hotline_call("b-inside@gw", start=T0 + timedelta(seconds=12))
    a_more = [open_call.final("caller", "买的是假货", 2600, 4000)]
    a_after = [open_call.final("caller", "电话 0571 8765 4321", 4100, 6500), open_call.ended(7000)]

    process = start_cli(kafka_broker, topic_name, group, log_path)
    try:
        placed = produce(bootstrap, topic_name, as_records(done_before))
        read_drafts(bootstrap, out_topic, expected=1)
        wait_committed(bootstrap, group, topic_name, placed[-1][1] + 1)
        placed = produce(bootstrap, topic_name, as_records(a_before + b_events[:3] + a_more + b_events[3:]))
        read_drafts(bootstrap, out_topic, expected=2)
        a_started_at = placed[0][1]
        wait_committed(bootstrap, group, topic_name, a_started_at)  # b is drafted, but a is still open
    finally:
        process.kill()  # a crash: no leave-group, no last commit
        process.wait(timeout=10)

    placed = produce(bootstrap, topic_name, as_records(a_after))
    process = start_cli(kafka_broker, topic_name, group, log_path)
    try:
        drafts = read_drafts(bootstrap, out_topic, expected=4)  # c, b, then b again (re-read with a), a
        wait_committed(bootstrap, group, topic_name, placed[-1][1] + 1)
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0, log_path.read_text()
    assert "Traceback" not in log_path.read_text()

    by_call: dict[str, list[dict]] = {}
    for draft in drafts:
        by_call.setdefault(draft["call_id"], []).append(draft)
    assert len(by_call["c-done-before@gw"]) == 1  # committed past it: never re-read
    [draft_a] = by_call["a-open@gw"]
    assert [line["text"] for line in draft_a["transcript"]] == ["我要投诉，商家不给退款", "买的是假货", "电话 0571 8765 4321"]
    assert (draft_a["complete"], draft_a["category"]) == (True, "consumer")
    assert draft_a["contact_numbers"][0]["number"] == "0571-87654321"
    b_drafts = by_call["b-inside@gw"]
    assert len(b_drafts) == 2  # ended after a started, so re-read with it
    assert b_drafts[0]["_raw"] == b_drafts[1]["_raw"] and b_drafts[0]["work_order_id"] == work_order_id("b-inside@gw")


@pytest.mark.parametrize("problem", ["bad_rules", "missing_rules", "no_broker", "bad_topic", "same_topic"])
def test_operator_mistakes_are_one_line_and_exit_2(problem, tmp_path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "categories:\n  - name: water\n    zh: 停水\n" if problem == "bad_rules" else "categories: [{name: water, zh: [停水]}]\n"
    )
    arguments = {
        "bad_rules": ["--rules", str(rules)],
        "missing_rules": ["--rules", str(tmp_path / "absent.yaml")],
        "no_broker": ["--rules", str(rules), "--bootstrap", f"127.0.0.1:{free_tcp_port()}"],
        "bad_topic": ["--out-topic", "work orders!"],
        "same_topic": ["--topic", "asr.transcripts", "--out-topic", "asr.transcripts"],
    }[problem]
    result = subprocess.run(
        [sys.executable, "-m", "asr_stream.cli", "workorders", *arguments],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        env=os.environ | {"PYTHONPATH": str(REPO)},
        timeout=60,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("asr-stream workorders: "), result.stderr
    expected = {
        "bad_rules": "categories/0/zh: '停水' is not of type 'array'",
        "missing_rules": "cannot read rules",
        "no_broker": "no Kafka broker reachable",
        "bad_topic": "is illegal",
        "same_topic": "a topic of their own",
    }
    assert expected[problem] in lines[0]
