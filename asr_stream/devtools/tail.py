"""`asr-stream tail`: print the transcript topic as it grows, for operators and the demo.

Reads every partition from the start (or the end) by assignment rather than through a consumer
group: a tail is a viewer, so it should neither commit offsets nor wait for a group to form.
"""

from __future__ import annotations

import json
import sys
import time
from typing import TextIO

from kafka import KafkaConsumer, TopicPartition


def format_event(event: dict) -> str:
    """One readable line per event; `--json` prints the records unchanged instead."""
    kind = event["event"]
    if kind == "call.started":
        channels = ", ".join(f"{c['channel']} ({c['codec']})" for c in event.get("channels", []))
        return f"{event['call_id']}  call started: {channels}"
    if kind == "call.ended":
        return f"{event['call_id']}  call ended: {event['end_reason']}, {event['final_segments']} finals"
    marker = "FINAL" if kind == "segment.final" else f"~r{event['revision']}"
    return f"{event['segment_id']}  [{event['start_ms'] / 1000:7.2f}s] {marker:>5} {event['text']}"


def tail(
    bootstrap_servers: str,
    topic: str,
    *,
    from_beginning: bool = True,
    as_json: bool = False,
    max_seconds: float | None = None,
    out: TextIO = sys.stdout,
) -> int:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False, consumer_timeout_ms=1000)
    try:
        deadline = time.monotonic() + 30
        partitions = consumer.partitions_for_topic(topic)
        while not partitions and time.monotonic() < deadline:
            time.sleep(0.5)  # the daemon creates the topic when it starts
            partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            print(f"asr-stream tail: topic {topic!r} not found on {bootstrap_servers}", file=sys.stderr)
            return 1
        assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(assigned)
        (consumer.seek_to_beginning if from_beginning else consumer.seek_to_end)(*assigned)
        stop_at = None if max_seconds is None else time.monotonic() + max_seconds
        while stop_at is None or time.monotonic() < stop_at:
            for record in consumer:
                line = record.value.decode() if as_json else format_event(json.loads(record.value))
                print(line, file=out, flush=True)
                if stop_at is not None and time.monotonic() >= stop_at:
                    break
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
    return 0
