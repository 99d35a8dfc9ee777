"""CPU the Kafka sink spends while its broker is away: frozen (accepts TCP, answers nothing) or down.

Run by hand:  .venv/bin/python bench/sink_outage.py [--seconds 40]

A local Tansu broker takes 30 events, then is frozen (SIGSTOP) or stopped while 30 more are
published: their batch is in doubt, spooled, and left to the idempotent producer to retry
(docs/operations.md, `kafka.in_doubt_retry_ms`). This process's CPU time over `--seconds` of the
outage is reported as a share of one core; nothing else runs in the process meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from asr_stream.devtools.local_broker import LocalBroker
from asr_stream.sinks.kafka import KafkaSettings, KafkaSink
from asr_stream.transcript.events import SegmentFinal


def final(number: int) -> SegmentFinal:
    return SegmentFinal(
        call_id=f"call-{number % 3}@bench",
        model="whisper-base",
        engine="onnxruntime",
        language="en",
        channel="caller",
        index=number,
        revision=1,
        text="the street light in front of number 12 is broken",
        start_ms=number * 4000,
        end_ms=number * 4000 + 3000,
        latency_ms=400,
    )


def outage(kind: str, seconds: float, spool_dir: Path) -> float:
    with LocalBroker() as broker:
        sink = KafkaSink(KafkaSettings(bootstrap_servers=broker.bootstrap_servers, topic="outage", spool_dir=spool_dir, partitions=3))
        sink.start()
        for number in range(30):
            sink.publish(final(number))
        deadline = time.monotonic() + 30
        while sink.delivered < 30 and time.monotonic() < deadline:
            time.sleep(0.05)
        if kind == "frozen":
            broker.freeze()
        else:
            broker.stop(timeout_s=0.5)
        for number in range(30, 60):
            sink.publish(final(number))
        cpu, wall = time.process_time(), time.monotonic()
        time.sleep(seconds)
        share = (time.process_time() - cpu) / (time.monotonic() - wall)
        if kind == "frozen":
            broker.thaw()
        asyncio.run(sink.close(timeout_s=2))
        return share


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=40)
    args = parser.parse_args()
    for kind in ("frozen", "down"):
        with tempfile.TemporaryDirectory() as spool_dir:
            share = outage(kind, args.seconds, Path(spool_dir))
        print(f"broker {kind:6} for {args.seconds:.0f} s: the sink used {share:.2f} of a core")


if __name__ == "__main__":
    main()
