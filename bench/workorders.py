"""Throughput of `asr-stream workorders`: how many transcript events per second one group member
turns into drafts, and what that costs in CPU.

Run by hand:  .venv/bin/python bench/workorders.py --calls 300 --finals 20 --partials 3 --partitions 6

A local Tansu broker is loaded first with `--calls` complete calls (two channels; per final
`--partials` partials before it; Chinese text, a phone number, interleaved as concurrent calls
publish them). Then one consumer (the real `WorkOrderConsumer`, shipped rules) starts in this
process; timing starts when it has its partitions (Tansu makes the group join wait half the
session timeout, which is not throughput) and ends when every draft is acknowledged. CPU is this
process's CPU time over the same window (consumer thread + kafka-python's IO thread).
"""

from __future__ import annotations

import argparse
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import NewTopic

from asr_stream.devtools.local_broker import LocalBroker
from asr_stream.transcript.events import (
    CallEnded,
    CallStarted,
    ChannelInfo,
    EndReason,
    EnvelopeFields,
    Party,
    SegmentFinal,
    SegmentPartial,
    TranscriptEvent,
)
from asr_stream.workorders.consumer import WorkOrderConsumer, WorkOrderSettings
from asr_stream.workorders.rules import load_rules

RULES = Path(__file__).resolve().parents[1] / "deploy" / "workorders" / "rules.yaml"
T0 = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)
TEXTS = [
    "您好，这里是12345市民热线，请问有什么可以帮您",
    "我们小区从昨天晚上开始停水，到现在还没有来水",
    "请问您的详细地址和联系电话",
    "幸福路18号3栋2单元，电话是幺三八一二三四五六七八",
]


def call_events(number: int, finals: int, partials: int) -> list[TranscriptEvent]:
    call_id = f"bench-{number}@gw.example"
    common: EnvelopeFields = {"call_id": call_id, "model": "whisper-base", "engine": "onnxruntime-cpu", "language": "zh"}
    start = T0 + timedelta(seconds=number)
    events: list[TranscriptEvent] = [
        CallStarted(
            **common,
            emitted_at=start,
            parties=(Party(role="caller", uri=f"sip:+86139{number:08d}@gw.example"), Party(role="callee", uri="sip:12345@hotline.example")),
            channels=(
                ChannelInfo(channel="caller", label="Citizen", codec="PCMU", sample_rate=8000),
                ChannelInfo(channel="agent", label="Agent", codec="PCMU", sample_rate=8000),
            ),
        )
    ]
    for index in range(finals):
        channel, begin = ("agent", "caller")[index % 2], index * 4000
        text = TEXTS[index % len(TEXTS)]
        for revision in range(partials):
            events.append(
                SegmentPartial(
                    **common,
                    channel=channel,
                    index=index // 2,
                    start_ms=begin,
                    latency_ms=300,
                    emitted_at=start + timedelta(milliseconds=begin + 1000 * (revision + 1)),
                    revision=revision,
                    text=text[: 4 * (revision + 1)],
                    end_ms=begin + 1000 * (revision + 1),
                )
            )
        events.append(
            SegmentFinal(
                **common,
                channel=channel,
                index=index // 2,
                start_ms=begin,
                latency_ms=300,
                emitted_at=start + timedelta(milliseconds=begin + 3800),
                revision=partials,
                text=text,
                end_ms=begin + 3500,
            )
        )
    events.append(
        CallEnded(
            **common,
            emitted_at=start + timedelta(milliseconds=finals * 4000 + 500),
            end_reason=EndReason.HANGUP,
            duration_ms=finals * 4000,
            final_segments=finals,
        )
    )
    return events


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--finals", type=int, default=20)
    parser.add_argument("--partials", type=int, default=3)
    parser.add_argument("--partitions", type=int, default=6)
    args = parser.parse_args()

    calls = [call_events(number, args.finals, args.partials) for number in range(args.calls)]
    events = [event for step in zip(*calls, strict=True) for event in step]
    with LocalBroker() as broker:
        admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap_servers)
        admin.create_topics([NewTopic("bench.transcripts", args.partitions, 1)])
        admin.close()
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers, acks="all", linger_ms=20, batch_size=256 * 1024)
        for event in events:
            producer.send("bench.transcripts", key=event.call_id.encode(), value=event.to_json())
        producer.flush()
        producer.close()

        settings = WorkOrderSettings(
            bootstrap_servers=broker.bootstrap_servers,
            topic="bench.transcripts",
            out_topic="bench.workorders",
            group_id="bench",
            session_timeout_ms=2000,
            poll_timeout_ms=100,
        )
        consumer = WorkOrderConsumer(settings, load_rules(RULES))
        stop = threading.Event()
        thread = threading.Thread(target=consumer.run, args=(stop,))
        thread.start()
        try:
            while not consumer.assigned:
                time.sleep(0.01)
            wall, cpu = time.perf_counter(), time.process_time()
            while consumer.drafts_published < args.calls:
                time.sleep(0.01)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        finally:
            stop.set()
            thread.join()
    partials = sum(isinstance(event, SegmentPartial) for event in events)
    print(
        f"{len(events)} events ({partials} partials) of {args.calls} calls on {args.partitions} partitions -> {consumer.drafts_published} drafts"
    )
    print(
        f"wall {wall:.2f} s: {len(events) / wall:,.0f} events/s, {args.calls / wall:,.1f} drafts/s; "
        f"CPU {cpu:.2f} s = {cpu / len(events) * 1e6:.0f} µs per event"
    )


if __name__ == "__main__":
    main()
