"""What callgen itself costs: its CPU per call and its pacing lateness, with no model in the way.

Run by hand:  ulimit -n 8192; .venv/bin/python bench/callgen_capacity.py --calls 200 400 --calls-per-worker 200

bench/callgen.py reports its own CPU and lateness in every step, but against a transcribing daemon
on this 2-core machine only a handful of calls fit. Here callgen's workers (the same `plans` and
`run_workers`) call the daemon's telephony ingest alone, in a subprocess: the real SIP server and
RTP receivers (parse, jitter buffer, G.711 decode, 16 kHz resampling; `TelephonyIngest`, what the
daemon reads calls from), with every channel's frames consumed and counted, and no VAD, model or
Kafka. Reported per step: generator CPU seconds per call-second of audio (process time of the
workers, excluding their start-up), calls one core could drive at that rate, tick lateness
p50/p99/max, and what the ingest received, so a starved or lossy run shows.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from callgen import Target, plans, run_workers  # bench/callgen.py: the script's own directory is on sys.path

from asr_stream.devtools.loadgen.call_audio import load_clips
from asr_stream.devtools.loadgen.host import load_average, machine
from asr_stream.devtools.loadgen.worker import ProgramSettings
from asr_stream.devtools.local_broker import free_tcp_port

REPO = Path(__file__).resolve().parents[1]


async def ingest_only(port: int, rtp_ports: tuple[int, int]) -> None:
    """The sink process: serve calls until the parent says it is done, then print what arrived as one JSON line."""
    from asr_stream.ingest.telephony import IngestConfig, TelephonyIngest
    from asr_stream.ingest.types import CallEnded, CallStarted
    from asr_stream.sip.server import SipServerConfig

    sip = SipServerConfig(host="127.0.0.1", port=port, max_calls=100_000)
    ingest = TelephonyIngest(IngestConfig(sip=sip, rtp_host="127.0.0.1", rtp_port_min=rtp_ports[0], rtp_port_max=rtp_ports[1]))
    await ingest.start()
    counts: dict[str, float] = {"calls_started": 0, "calls_ended": 0, "samples_16k": 0}  # and "cpu_s" at the end
    consumers: set[asyncio.Task[None]] = set()

    async def consume(channel) -> None:
        async for frame in channel.frames():
            counts["samples_16k"] += frame.samples.shape[0]

    async def serve() -> None:
        async for event in ingest.events():
            if isinstance(event, CallStarted):
                counts["calls_started"] += 1
                for channel in event.channels:
                    task = asyncio.create_task(consume(channel))
                    consumers.add(task)
                    task.add_done_callback(consumers.discard)
            elif isinstance(event, CallEnded):
                counts["calls_ended"] += 1

    serving = asyncio.create_task(serve())
    print("ready", flush=True)
    cpu = time.process_time()
    # The parent writes a line once its workers are done; frames still queued are consumed (up to
    # 30 s) before counting.
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    if consumers:  # every call was hung up: each channel's frames end once its queue is drained
        await asyncio.wait(list(consumers), timeout=30)
    counts["cpu_s"] = time.process_time() - cpu
    serving.cancel()
    await ingest.stop()
    await asyncio.gather(serving, *consumers, return_exceptions=True)
    print(json.dumps(counts), flush=True)


def step(n: int, args: argparse.Namespace, clips: list, settings: ProgramSettings) -> dict:
    port = free_tcp_port()
    sink = subprocess.Popen(
        [sys.executable, __file__, "--serve-ingest", str(port)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=os.environ | {"PYTHONPATH": str(REPO)},
    )
    try:
        assert sink.stdout is not None and sink.stdin is not None
        if sink.stdout.readline().strip() != "ready":
            raise RuntimeError("the ingest did not start")
        reports, start, end = run_workers(plans(n, args, Target(("127.0.0.1", port), "", ""), clips, settings))
        sink.stdin.write("done\n")
        sink.stdin.close()
        received = json.loads(sink.stdout.readline())
    finally:
        if sink.poll() is None:
            sink.kill()
        sink.wait()
    calls = [call for report in reports for call in report.calls]
    audio_s = sum(call.packets for call in calls) * 0.02
    cpu = sum(report.cpu_s for report in reports)
    lateness = [1000 * s for report in reports for s in report.lateness_s]
    return {
        "calls": n,
        "workers": len(reports),
        "answered": sum(call.call_id is not None for call in calls),
        "generator_cpu_s": cpu,
        "cpu_ms_per_call_second": 1000 * cpu / audio_s,  # one core sustains 1000 / this many calls
        "lateness_ms": {q: float(np.percentile(lateness, q)) for q in (50, 99)} | {"max": max(lateness)},
        "dropped": sum(call.dropped for call in calls),
        "received_audio_s": received["samples_16k"] / 16000,
        "sent_audio_s": audio_s,
        "ingest": received,
        "wall_s": end - start,
        "load_average": load_average(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, nargs="+", default=[200, 400])
    parser.add_argument("--calls-per-worker", type=int, default=200)
    parser.add_argument("--duration-s", type=float, default=20.0)
    parser.add_argument("--ramp-s", type=float, default=5.0)
    parser.add_argument("--serve-ingest", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_ingest is not None:
        base = 20000 + (args.serve_ingest % 20) * 2000
        asyncio.run(ingest_only(args.serve_ingest, (base, base + 1999)))
        return 0
    args.workers, args.local_host, args.tick_phases = None, "127.0.0.1", 4
    print(f"machine: {machine()}\nload average before: {load_average()}", flush=True)
    clips = load_clips(REPO.parent / "shared" / "speech", "en")
    settings = ProgramSettings(duration_s=args.duration_s)
    print(
        "| calls | workers | answered | generator CPU ms per call-second | calls per core | lateness p50 / p99 / max ms | dropped | audio received / sent s | ingest CPU s | load avg |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for n in args.calls:
        r = step(n, args, clips, settings)
        late = r["lateness_ms"]
        print(
            f"| {n} | {r['workers']} | {r['answered']} | {r['cpu_ms_per_call_second']:.3f} | {1000 / r['cpu_ms_per_call_second']:.0f} "
            f"| {late[50]:.1f} / {late[99]:.1f} / {late['max']:.1f} | {r['dropped']} | {r['received_audio_s']:.0f} / {r['sent_audio_s']:.0f} "
            f"| {r['ingest']['cpu_s']:.1f} | {r['load_average']} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
