"""Cost of the open-calls journal (sinks/journal.py) per call start and end, at 2,000+ open calls.

Run by hand:  .venv/bin/python bench/journal.py --open-calls 2000 --calls 4000 --finals 20 [--dir DIR]

The journal runs on the Kafka sink's thread, never on the event loop, and is handed each batch the
sink takes from its queue: `leaving(batch)` (journals and fdatasyncs the batch's call.started),
`kept(batch)` (journals its finals and call.ended, no sync). Measured here on real files in `--dir`
(default: a temporary directory, so the disk of /tmp):

* a start alone in its batch (a quiet node: each call.started pays one fdatasync);
* starts grouped as a busy node's batches group them (`--starts-per-batch`);
* a final and an end kept (one write(2) per batch, no sync);
* a rewrite (compaction) with `--open-calls` calls open, and the file's size then.

`--open-calls` calls stay open throughout, `--calls` more start and end around them, each with
`--finals` finals; compaction triggers as it would in the daemon.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from asr_stream.sinks.journal import OpenCallJournal
from asr_stream.transcript.events import CallEnded, CallStarted, ChannelInfo, EndReason, EnvelopeFields, Party, SegmentFinal


def envelope(call_id: str) -> EnvelopeFields:
    return {"call_id": call_id, "model": "whisper-base", "engine": "onnxruntime", "language": "zh"}


def started(call_id: str) -> CallStarted:
    return CallStarted(
        **envelope(call_id),
        parties=(Party(role="caller", uri="sip:+8613800000000@gw.example"), Party(role="callee", uri="sip:12345@hotline.example")),
        channels=(
            ChannelInfo(channel="caller", label="Citizen", codec="PCMA", sample_rate=8000),
            ChannelInfo(channel="agent", label="Agent", codec="PCMA", sample_rate=8000),
        ),
    )


def final(call_id: str, index: int) -> SegmentFinal:
    return SegmentFinal(
        **envelope(call_id),
        channel="caller",
        index=index,
        revision=3,
        text="我家楼下的路灯坏了",
        start_ms=index * 4000,
        end_ms=index * 4000 + 3000,
        latency_ms=400,
    )


def ended(call_id: str, finals: int) -> CallEnded:
    return CallEnded(**envelope(call_id), end_reason=EndReason.HANGUP, duration_ms=finals * 4000, final_segments=finals)


def call_id(number: int) -> str:
    return f"{number:08x}-5d1c-4f0e-9a1b-3c9d2f7e6a10@10.20.0.15"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--open-calls", type=int, default=2000)
    parser.add_argument("--calls", type=int, default=4000)
    parser.add_argument("--finals", type=int, default=20)
    parser.add_argument("--starts-per-batch", type=int, default=20)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.dir) as directory:
        journal = OpenCallJournal(Path(directory) / "open-calls.journal")
        journal.open()
        for number in range(args.open_calls):  # the node's standing load, started in busy batches
            journal.leaving([started(call_id(number))])

        # Seconds per operation, by case.
        alone: list[float] = []
        grouped: list[float] = []
        finals_kept: list[float] = []
        ends_kept: list[float] = []
        rewrites: list[float] = []
        batch: list[CallStarted] = []
        for number in range(args.open_calls, args.open_calls + args.calls):
            event = started(call_id(number))
            if number % 2:  # half the starts alone in their batch, half grouped
                begin = time.perf_counter()
                journal.leaving([event])
                alone.append(time.perf_counter() - begin)
            else:
                batch.append(event)
                if len(batch) == args.starts_per_batch:
                    begin = time.perf_counter()
                    journal.leaving(batch)
                    grouped.append((time.perf_counter() - begin) / len(batch))
                    batch = []
        if batch:
            journal.leaving(batch)
        for number in range(args.open_calls, args.open_calls + args.calls):
            for index in range(args.finals):
                begin = time.perf_counter()
                journal.kept([final(call_id(number), index)])
                finals_kept.append(time.perf_counter() - begin)
            size_before = journal.path.stat().st_size
            begin = time.perf_counter()
            journal.kept([ended(call_id(number), args.finals)])
            elapsed = time.perf_counter() - begin
            (rewrites if journal.path.stat().st_size < size_before else ends_kept).append(elapsed)
        size = journal.path.stat().st_size
        begin = time.perf_counter()
        journal.close()
        left_open = OpenCallJournal(journal.path).open()
        reopen = time.perf_counter() - begin

    def us(values: list[float]) -> str:
        ordered = sorted(values)
        return (
            f"median {statistics.median(ordered) * 1e6:7.1f} µs, p99 {ordered[int(len(ordered) * 0.99)] * 1e6:8.1f} µs (n={len(ordered)})"
        )

    print(f"open calls {args.open_calls}, calls started and ended around them {args.calls}, finals per call {args.finals}")
    print(f"call start, alone in its batch (write + fdatasync): {us(alone)}")
    print(f"call start, {args.starts_per_batch} per batch, per start:       {us(grouped)}")
    print(f"final kept (write, no sync):                        {us(finals_kept)}")
    print(f"call end kept (write, no sync):                     {us(ends_kept)}")
    if rewrites:
        print(f"call end that triggered a rewrite:                  {us(rewrites)}")
    print(f"journal file at the end: {size / 1024:.0f} KiB; reopen with {len(left_open)} open calls: {reopen * 1000:.1f} ms")


if __name__ == "__main__":
    main()
