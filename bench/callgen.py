"""Load generator without SIPp: N concurrent real SIP calls of real speech, figures from the Kafka topic.

Run by hand. On this CPU machine, against a daemon it starts itself (Tansu + `asr-stream serve`):
    .venv/bin/python bench/callgen.py --spawn-daemon deploy/local.yaml --calls 2 4 --ramp-s 2
Against a running daemon and broker (what bench/device/callgen_ladder.sh does on the GPU machine):
    python3 bench/callgen.py --sip 127.0.0.1:5060 --bootstrap 127.0.0.1:9092 --topic asr.transcripts \\
        --calls 500 1000 2000 3000 --ramp-s 30 --duration-s 60 --speech /tmp/speech --out $OUT/callgen.jsonl
Cross-check against SIPp (same daemon, same call audio, same analysis; SIPp must be installed):
    .venv/bin/python bench/callgen.py --spawn-daemon deploy/local.yaml --calls 2 4 --sipp-cross-check --repeats 2

What one step of N does: N calls (indices 0..N-1) start over --ramp-s, spread over worker processes
(--calls-per-worker each, multiprocessing "spawn"). Each worker places its calls with one SIP socket
(INVITE/ACK/BYE, RFC 3261 retransmissions, 503 + Retry-After counted as a failure) and streams every
call's RTP from one 20 ms tick, one UDP socket per call, real time, pre-encoded G.711 (PCMU, or
--codec PCMA). A call's audio is real speech (shared clips in --lang, drawn per call with its seed)
joined by 0.8-2.0 s pauses, repeated to --duration-s if given. A consumer thread here records every
event of the topic with its arrival time; after the last hang-up the step waits for every answered
call's call.ended (up to --drain-s), then reports (asr_stream/devtools/loadgen/figures.py): calls
placed / answered / failed by reason, finals expected vs received, lost calls, per-final latency (the
events' latency_ms, and outside: arrival - send time of the utterance's last speech packet), partials
per segment and their gaps, WER per call and overall, and the generator's own lateness and CPU.

Output: a table on stdout and, with --out, one JSON object per step (every figure, per-call WER).
Everything is bounded: --max-calls, per-step deadlines, and every process and socket is stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import json
import math
import multiprocessing
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np
from kafka.errors import KafkaError

from asr_stream.devtools.loadgen.call_audio import CallProgram, Clip, load_clips
from asr_stream.devtools.loadgen.figures import StepFigures, step_figures
from asr_stream.devtools.loadgen.host import load_average, machine, machine_busy_s, process_cpu_s
from asr_stream.devtools.loadgen.recorder import STEP_QUANTILES, Event, TopicRecorder, counter_changes, scrape
from asr_stream.devtools.loadgen.rtp_pacer import PERIOD_S
from asr_stream.devtools.loadgen.spawned import SpawnedDaemon
from asr_stream.devtools.loadgen.worker import (
    CallRecord,
    ProgramSettings,
    WorkerPlan,
    WorkerReport,
    allow_sockets,
    longest_call_s,
    program_for,
    run_worker,
)
from asr_stream.devtools.local_broker import BrokerStartError
from asr_stream.devtools.sipp import run_sipp, write_call
from asr_stream.errors import OperatorError
from asr_stream.rtp.g711 import alaw_decode, ulaw_decode
from asr_stream.sip.transaction import SipTimers

REPO = Path(__file__).resolve().parents[1]
SETUP_MARGIN_S = 1.0  # from "every worker is ready" to the first INVITE
WORKER_READY_S = 120.0  # building 500 calls' audio takes about a second; spawn + imports a few more


class StepError(RuntimeError):
    """A step could not run (a worker failed or never reported); the message says which and why."""


@dataclasses.dataclass(frozen=True)
class Target:
    sip: tuple[str, int]
    bootstrap: str
    topic: str
    daemon_pid: int | None = None  # when known (spawned, or --daemon-pid), its CPU time is reported per step
    metrics_url: str | None = None  # when known (spawned, or --metrics-url), its counters' changes are too


def hostport(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host, int(port)


def slim(event: Event) -> Event:
    """What the figures read of a partial (its text is the bulk of a long run's events)."""
    if event["event"] != "segment.partial":
        return event
    return {key: event[key] for key in ("event", "call_id", "segment_id", "revision", "emitted_at", "latency_ms")}


# -- callgen steps -------------------------------------------------------------------------------
def plans(n: int, args: argparse.Namespace, target: Target, clips: list[Clip], settings: ProgramSettings) -> list[WorkerPlan]:
    """Call j starts at ramp * j / n and goes to worker j mod W: every worker ramps over the whole ramp."""
    workers = args.workers or math.ceil(n / args.calls_per_worker)
    deadline = args.ramp_s + longest_call_s(clips, settings) + 2 * SipTimers().give_up_s + 10
    return [
        WorkerPlan(
            worker=w,
            target=target.sip,
            local_host=args.local_host,
            calls=[(j, args.ramp_s * j / n) for j in range(w, n, workers)],
            clips=clips,
            settings=settings,
            tick_phase_s=PERIOD_S * w / workers / args.tick_phases,
            tick_phases=args.tick_phases,
            deadline_s=deadline,
        )
        for w in range(workers)
    ]


def _receive(conn: Connection, timeout_s: float, what: str) -> object:
    if not conn.poll(max(timeout_s, 0)):
        raise StepError(f"a worker did not {what} within {timeout_s:.0f} s")
    message = conn.recv()
    if isinstance(message, str) and message != "ready":
        raise StepError(message)
    return message


def run_workers(worker_plans: list[WorkerPlan]) -> tuple[list[WorkerReport], float, float]:
    """Start the workers, give them one start time, collect their reports; (reports, start, end) wall times."""
    context = multiprocessing.get_context("spawn")  # no inherited Kafka sockets or consumer thread
    processes, conns = [], []
    try:
        for plan in worker_plans:
            parent, child = context.Pipe()
            process = context.Process(target=run_worker, args=(plan, child), name=f"callgen-{plan.worker}", daemon=True)
            process.start()
            child.close()
            processes.append(process)
            conns.append(parent)
        for conn in conns:
            _receive(conn, WORKER_READY_S, "get ready")
        start = time.time() + SETUP_MARGIN_S
        for conn in conns:
            conn.send(start)
        deadline = start + max(plan.deadline_s for plan in worker_plans) + 30
        reports = [_receive(conn, deadline - time.time(), "report") for conn in conns]
        return reports, start, time.time()  # type: ignore[return-value]
    finally:
        for process in processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join()
        for conn in conns:
            conn.close()


def drain(recorder: TopicRecorder, call_ids: list[str], timeout_s: float) -> None:
    """Until every answered call's call.ended is on the topic, or `timeout_s`; then a little longer
    so that duplicates and stragglers would show."""
    deadline = time.monotonic() + timeout_s
    while recorder.ended(call_ids) < len(call_ids) and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)


def callgen_step(
    n: int, args: argparse.Namespace, target: Target, recorder: TopicRecorder, clips: list[Clip], settings: ProgramSettings
) -> StepFigures:
    worker_plans = plans(n, args, target, clips, settings)
    consumer_cpu = recorder.cpu_s
    reports, start, end = run_workers(worker_plans)
    calls = [call for report in reports for call in report.calls]
    answered = [c.call_id for c in calls if c.call_id is not None]
    drain(recorder, answered, args.drain_s)
    figures = step_figures("callgen", calls, recorder.events_of(answered), reports, end - start, args.lang)
    figures.problems += [f"worker {r.worker}: {r.malformed_sip} malformed SIP datagrams" for r in reports if r.malformed_sip]
    figures.problems += [f"worker {r.worker}: {r.late_answers} answers after giving up" for r in reports if r.late_answers]
    figures.consumer_cpu_s = recorder.cpu_s - consumer_cpu
    return figures


# -- SIPp steps (the cross-check) ----------------------------------------------------------------
def decode(program: CallProgram) -> np.ndarray:
    return (ulaw_decode if program.codec == "PCMU" else alaw_decode)(program.encoded())


async def sipp_call(index: int, offset_s: float, program: CallProgram, target: Target, workdir: Path) -> CallRecord:
    """Call `index` placed by SIPp: same audio as callgen's call `index`; times from SIPp's trace.

    SIPp starts the RTP stream right after its ACK, so the packet carrying an utterance's last
    speech sample left at ACK + its index * 20 ms (callgen stamps the real send time instead).
    """
    await asyncio.sleep(offset_s)
    scenario = write_call(decode(program), workdir / f"call-{index}", program.codec, hangup_after_s=0.0)
    run = await run_sipp(f"{target.sip[0]}:{target.sip[1]}", ["-sf", str(scenario)], workdir, timeout_s=program.duration_s + 40)
    record = CallRecord(index, worker=-1, invite_at=run.sent_at("INVITE"), packets=program.total_packets)
    ack, outcome = run.sent_at("ACK"), f"sipp exit {run.returncode} {run.statuses()}"
    if ack is None:  # never answered
        record.failure = outcome
        return record
    record.call_id, record.answered_at, record.first_packet_at = run.call_id, ack, ack
    record.ended_by = "us" if run.returncode == 0 else outcome
    record.utterances = [dataclasses.asdict(u) | {"speech_end_sent_at": ack + u.last_packet * PERIOD_S} for u in program.utterances]
    return record


def sipp_step(
    n: int, args: argparse.Namespace, target: Target, recorder: TopicRecorder, clips: list[Clip], settings: ProgramSettings
) -> StepFigures:
    async def place_all(workdir: Path) -> list[CallRecord]:
        programs = [program_for(j, clips, settings) for j in range(n)]
        return list(await asyncio.gather(*(sipp_call(j, args.ramp_s * j / n, programs[j], target, workdir) for j in range(n))))

    start, sipp_cpu = time.time(), children_cpu_s()
    with tempfile.TemporaryDirectory(prefix="callgen-sipp-") as tmp:
        calls = asyncio.run(place_all(Path(tmp)))
    end, sipp_cpu = time.time(), children_cpu_s() - sipp_cpu
    answered = [c.call_id for c in calls if c.call_id is not None]
    drain(recorder, answered, args.drain_s)
    figures = step_figures("sipp", calls, recorder.events_of(answered), [], end - start, args.lang)
    figures.generator_cpu_s, figures.generator_cores = sipp_cpu, sipp_cpu / (end - start)  # the SIPp processes, all reaped
    return figures


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# -- report --------------------------------------------------------------------------------------
HEADER = (
    "| gen | N | answered / failed | finals got / expected (matched) | lost | latency_ms p50 / p95 / p99 | outside ms p50 / p95 / p99 "
    "| outside - own ms | delivery ms, finals p50 / p95 | partials per segment | partial gap p50 / p95 s | partial latency_ms p50 / p95 | WER or CER (per call p50 / max) | gen lateness p99 / max ms "
    "| gen CPU s (cores) | daemon CPU s (cores) | machine busy cores | wall s |\n"
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
)


def _n(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def row(f: StepFigures, label: str | None = None) -> str:
    lat, out, gap, err, late = f.latency_ms, f.outside_ms, f.partial_gap_s, f.error_rate_per_call, f.generator_lateness_ms
    plat, fdel = f.partial_latency_ms, f.final_delivery_ms
    cpu = "-" if f.generator_cpu_s is None else f"{f.generator_cpu_s:.1f} ({f.generator_cores:.2f})"
    daemon = "-" if f.daemon_cpu_s is None else f"{f.daemon_cpu_s:.1f} ({f.daemon_cpu_s / f.wall_s:.2f})"
    busy = "-" if f.machine_busy_cores is None else f"{f.machine_busy_cores:.2f}"
    failed = sum(f.failed.values())
    return (
        f"| {f.generator} | {label or f.calls} | {f.answered} / {failed} | {f.finals_received} / {f.finals_expected} ({f.utterances_matched}) "
        f"| {f.lost_calls} | {_n(lat['p50'])} / {_n(lat['p95'])} / {_n(lat['p99'])} | {_n(out['p50'])} / {_n(out['p95'])} / {_n(out['p99'])} "
        f"| {'-' if f.outside_minus_own_ms is None else f'{f.outside_minus_own_ms:+.0f}'} | {_n(fdel['p50'])} / {_n(fdel['p95'])} "
        f"| {_n(f.partials_per_segment, 2)} | {_n(gap['p50'], 2)} / {_n(gap['p95'], 2)} | {_n(plat['p50'])} / {_n(plat['p95'])} "
        f"| {_n(f.error_rate, 3)} ({_n(err['p50'], 3)} / {_n(err['max'], 3)}) | {_n(late['p99'], 1)} / {_n(late['max'], 1)} | {cpu} | {daemon} | {busy} | {f.wall_s:.0f} |"
    )


def emit(figures: StepFigures, args: argparse.Namespace, label: str | None = None) -> None:
    print(row(figures, label), flush=True)
    notes = [f"failed: {figures.failed}"] if figures.failed else []
    notes += [f"hang-ups: {figures.hangup_problems}"] if figures.hangup_problems else []
    notes += [f"never started: {figures.never_started}"] if figures.never_started else []
    notes += (
        [f"packets dropped {figures.packets_dropped}, refused {figures.packets_refused}"]
        if figures.packets_dropped or figures.packets_refused
        else []
    )
    if counters := figures.daemon_counters:
        notes.append(
            f"daemon: {counters['rtp_packets_total']:.0f} RTP packets ({counters['rtp_lost_packets_total']:.0f} lost), "
            f"{counters['partials_total']:.0f} partials ({counters['scheduler_shed_partials_total']:.0f} shed), "
            f"{counters['inference_batch_size_count']:.0f} batches of {counters.get('mean_batch_size', 0):.2f} "
            f"taking {counters.get('mean_batch_s', 0):.3f} s, Kafka failed/dropped {counters['kafka_failed_total']:.0f}/{counters['kafka_dropped_total']:.0f}"
        )
        if "endpoint_s_p50" in counters:  # the daemon's histograms, so no finer than their buckets
            percentiles = [round(100 * quantile) for quantile in STEP_QUANTILES]
            notes.append(
                "daemon: endpoint -> final p50/p95/p99 "
                + " / ".join(f"{1000 * counters[f'endpoint_s_p{q}']:.0f}" for q in percentiles)
                + " ms; a final's scheduler wait p50/p95/p99 "
                + " / ".join(f"{1000 * counters.get(f'final_wait_s_p{q}', float('nan')):.0f}" for q in percentiles)
                + " ms; a final's emitted -> Kafka ack p50/p95/p99 "
                + " / ".join(f"{1000 * counters.get(f'final_delivery_s_p{q}', float('nan')):.0f}" for q in percentiles)
                + " ms"
            )
    notes += figures.problems[:10]
    for note in notes:
        print(f"    {figures.generator} N={figures.calls}: {note}", flush=True)
    if args.out is not None:
        record = figures.as_json() | {
            "label": label,
            "date": datetime.now().astimezone().isoformat(timespec="seconds"),
            "load_average": load_average(),
        }
        with args.out.open("a") as out:
            out.write(json.dumps(record) + "\n")


# -- main ----------------------------------------------------------------------------------------
def observed(target: Target, step: Callable[[], StepFigures]) -> StepFigures:
    """Run a step; add the daemon's CPU seconds and counter changes over it, where they can be read."""
    cpu_before = process_cpu_s(target.daemon_pid) if target.daemon_pid else None
    metrics_before = scrape(target.metrics_url) if target.metrics_url else None
    busy_before, started = machine_busy_s(), time.monotonic()
    figures = step()
    figures.machine_busy_cores = (machine_busy_s() - busy_before) / (time.monotonic() - started)
    cpu_after = process_cpu_s(target.daemon_pid) if target.daemon_pid else None
    metrics_after = scrape(target.metrics_url) if target.metrics_url else None
    if cpu_before is not None and cpu_after is not None:
        figures.daemon_cpu_s = cpu_after - cpu_before
    if metrics_before is not None and metrics_after is not None:
        figures.daemon_counters = counter_changes(metrics_before, metrics_after)
    return figures


def run(args: argparse.Namespace, target: Target) -> int:
    clips = load_clips(args.speech, args.lang)
    if not clips:
        raise OperatorError(f"no {args.lang} clips of 2.5-12 s in {args.speech}/manifest.jsonl")
    settings = ProgramSettings(args.codec, args.utterances, tuple(args.pause_s), args.duration_s, args.seed)
    try:
        recorder = TopicRecorder(target.bootstrap, target.topic, keep=slim)
        recorder.start()
    except (KafkaError, RuntimeError) as error:  # a wrong --bootstrap or --topic
        raise OperatorError(f"cannot read {target.topic} on {target.bootstrap}: {error}") from None
    try:
        print(HEADER, flush=True)
        if args.warmup:  # an untimed call first: the model's first runs allocate and are slow
            warm = dataclasses.replace(settings, utterances=1, duration_s=None, seed=settings.seed + 1_000_003)
            emit(observed(target, functools.partial(callgen_step, 1, args, target, recorder, clips, warm)), args, label="warm-up")
        steps = [callgen_step, sipp_step] if args.sipp_cross_check else [callgen_step]
        results: list[StepFigures] = []
        for n in args.calls:
            for repeat in range(args.repeats):
                # Cross-checking, the two generators take turns going first, so neither always meets
                # the daemon (and this shared machine) a step later than the other.
                for step in steps[:: 1 if repeat % 2 else -1]:
                    results.append(observed(target, functools.partial(step, n, args, target, recorder, clips, settings)))
                    emit(results[-1], args)
                    time.sleep(args.settle_s)
    finally:
        recorder.stop()
    if args.sipp_cross_check:
        print(cross_check_summary(results), flush=True)
    return 0


def cross_check_summary(results: list[StepFigures]) -> str:
    """Per N and generator, the median and range over repeats of the figures that should agree."""
    lines = [
        "",
        "| N | gen | steps | latency_ms p50 | latency_ms p95 | outside ms p50 | outside ms p95 | finals matched | WER |",
        "|---:|---|---:|---|---|---|---|---|---|",
    ]

    def cell(values: list[float | None], digits: int = 0) -> str:
        known = [v for v in values if v is not None]
        return "-" if not known else f"{np.median(known):.{digits}f} ({min(known):.{digits}f}-{max(known):.{digits}f})"

    for n in sorted({f.calls for f in results}):
        for generator in ("sipp", "callgen"):
            mine = [f for f in results if f.calls == n and f.generator == generator]
            lines.append(
                f"| {n} | {generator} | {len(mine)} | {cell([f.latency_ms['p50'] for f in mine])} | {cell([f.latency_ms['p95'] for f in mine])} "
                f"| {cell([f.outside_ms['p50'] for f in mine])} | {cell([f.outside_ms['p95'] for f in mine])} "
                f"| {' '.join(f'{f.utterances_matched}/{f.finals_expected}' for f in mine)} | {cell([f.error_rate for f in mine], 3)} |"
            )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[2:11]),
    )
    daemon = parser.add_argument_group("the daemon: an existing one (--sip, --bootstrap, --topic) or one started here (--spawn-daemon)")
    daemon.add_argument("--sip", type=hostport, help="the daemon's SIP address, HOST:PORT (UDP)")
    daemon.add_argument("--bootstrap", help="Kafka bootstrap servers the daemon publishes to")
    daemon.add_argument("--topic", help="the daemon's transcript topic")
    daemon.add_argument("--daemon-pid", type=int, help="the running daemon's process id, to report its CPU time per step")
    daemon.add_argument("--metrics-url", help="the running daemon's Prometheus endpoint, e.g. http://127.0.0.1:8080/metrics")
    daemon.add_argument(
        "--spawn-daemon",
        type=Path,
        metavar="CONFIG",
        help="start Tansu and `asr-stream serve --config CONFIG` (its network and Kafka settings replaced)",
    )
    load = parser.add_argument_group("load")
    load.add_argument("--calls", type=int, nargs="+", default=[2], help="the ladder: concurrent calls per step")
    load.add_argument("--max-calls", type=int, default=4000, help="refuse a ladder step above this")
    load.add_argument("--ramp-s", type=float, default=10.0, help="a step's calls start evenly over this many seconds")
    load.add_argument(
        "--duration-s", type=float, default=None, help="each call lasts about this long, its speech repeated (default: its utterances once)"
    )
    load.add_argument("--utterances", type=int, default=4, help="clips per call (each followed by a pause)")
    load.add_argument(
        "--pause-s", type=float, nargs=2, default=[0.8, 2.0], metavar=("MIN", "MAX"), help="pause after each utterance, uniform"
    )
    load.add_argument("--codec", choices=("PCMU", "PCMA"), default="PCMU")
    load.add_argument("--lang", choices=("en", "zh"), default="en", help="which shared clips (zh: scored by CER)")
    load.add_argument("--speech", type=Path, default=REPO.parent / "shared" / "speech", help="directory holding manifest.jsonl")
    load.add_argument("--seed", type=int, default=1, help="call j's clips and pauses come from (seed, j)")
    load.add_argument("--calls-per-worker", type=int, default=500, help="calls per generator process")
    load.add_argument("--workers", type=int, default=None, help="generator processes (default: from --calls-per-worker)")
    load.add_argument("--tick-phases", type=int, default=4, help="each worker's calls send in this many bursts per 20 ms (1: all at once)")
    load.add_argument("--local-host", default="127.0.0.1", help="address the generator binds and offers for SIP and RTP")
    run_group = parser.add_argument_group("run")
    run_group.add_argument("--repeats", type=int, default=1, help="run each step this many times")
    run_group.add_argument("--warmup", action=argparse.BooleanOptionalAction, default=True, help="one untimed call before the ladder")
    run_group.add_argument(
        "--drain-s", type=float, default=60.0, help="after the last hang-up, wait this long at most for every call.ended"
    )
    run_group.add_argument("--settle-s", type=float, default=3.0, help="pause between steps")
    run_group.add_argument(
        "--sipp-cross-check", action="store_true", help="each step also with SIPp placing the same calls (the two alternate going first)"
    )
    run_group.add_argument("--out", type=Path, help="append one JSON object per step to this file")
    args = parser.parse_args(argv)
    if (args.spawn_daemon is None) == (args.sip is None):
        parser.error("give either --spawn-daemon CONFIG or --sip HOST:PORT with --bootstrap and --topic")
    if args.sip is not None and not (args.bootstrap and args.topic):
        parser.error("--sip needs --bootstrap and --topic")
    if max(args.calls) > args.max_calls or min(args.calls) < 1:
        parser.error(f"every step needs 1..{args.max_calls} calls (--max-calls)")
    if min(args.calls_per_worker, args.workers or 1, args.utterances, args.tick_phases) < 1:
        parser.error("--calls-per-worker, --workers, --utterances and --tick-phases must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(f"machine: {machine()}\ndate: {datetime.now().astimezone():%Y-%m-%d %H:%M %Z}\nload average before: {load_average()}", flush=True)
    print(f"command: {' '.join(sys.argv)}", flush=True)
    try:
        busiest = max(args.calls)
        allow_sockets(math.ceil(busiest / args.workers) if args.workers else min(busiest, args.calls_per_worker))
        if args.spawn_daemon is not None:
            with SpawnedDaemon(args.spawn_daemon, args.local_host) as daemon:
                print(f"daemon: SIP {daemon.sip[0]}:{daemon.sip[1]}, Kafka {daemon.bootstrap} topic {daemon.topic}", flush=True)
                status = run(args, Target(daemon.sip, daemon.bootstrap, daemon.topic, daemon.pid, daemon.metrics_url))
        else:
            status = run(args, Target(args.sip, args.bootstrap, args.topic, args.daemon_pid, args.metrics_url))
    except (OperatorError, BrokerStartError) as error:
        print(f"callgen: {error}", file=sys.stderr)
        return 2
    except StepError as error:
        print(f"callgen: {error}", file=sys.stderr)
        return 1
    print(f"load average after: {load_average()}", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
