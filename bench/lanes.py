"""Two compute lanes on one GPU: one Python process with a thread per lane (the daemon's inference
process today) against a process per lane.

    python3 bench/lanes.py --model whisper-base --seconds 20 --speech /tmp/speech

Why: through the whole daemon at 2,000 calls (docs/benchmarks.md, "GPU: the partial lane measured
from inside") the partial lane's batches took three times as long as the same batches alone while
the GPU was ~11 % busy, and py-spy found the lanes' threads at syncs and launches. If the two lanes
slow each other down in one process but not in two, the cause is the shared interpreter (the GIL
and the host work it serialises), and a process per lane is the lever. Measured on the H200: they
slow each other as much in two processes, so it is not (docs/benchmarks.md).

Each lane runs back-to-back batches for `--seconds` and counts rows: the final lane batches of
`--final-batch` finals (whole clips of at most 10 s), the partial lane `--partial-batch` partials
(`profile_live.partial_mix`: 1.5-4.5 s open segments forcing an earlier partial's agreed tokens).
Four settings, in order: each lane alone, both lanes as threads of one process (the daemon's
`torch_live_runners` split: two CUDA streams over one copy of the weights, finals more urgent, no
pausing), and each lane in a process of its own (its own weights and CUDA context).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from profile_live import partial_mix  # bench/ is not a package: found through the path above

from asr_stream.audio.wavfile import load_audio
from asr_stream.inference.live import LiveResult, Utterance
from asr_stream.inference.runners import torch_live_runners
from asr_stream.inference.whisper.runner import WhisperRunner, live_partial_windows, live_windows


class _Live:
    """`profile_live.partial_mix` asks a model's `live`; here it is one lane's runner."""

    def __init__(self, runner: WhisperRunner) -> None:
        self._runner = runner

    def live(self, requests: list[Utterance]) -> list[LiveResult]:
        return self._runner.transcribe_live(requests, "en")


def clips_of(speech: Path) -> list[np.ndarray]:
    manifest = [json.loads(line) for line in (speech / "manifest.jsonl").read_text().splitlines() if line.strip()]
    return [load_audio(speech / row["path_wav16k"])[0][0] for row in manifest if row["lang"] == "en" and row["duration_s"] <= 10]


def runners(args: argparse.Namespace, two_lanes: bool) -> tuple[WhisperRunner, WhisperRunner | None]:
    windows_s, margin_s = live_windows(args.model)
    return torch_live_runners(args.model, args.profiles_dir, windows_s, margin_s, live_partial_windows(args.model), partial_lane=two_lanes)


def batches(runner: WhisperRunner, kind: str, clips: list[np.ndarray], args: argparse.Namespace) -> list[Utterance]:
    if kind == "final":
        return [Utterance(clips[k % len(clips)]) for k in range(args.final_batch)]
    return partial_mix(_Live(runner), clips, args.partial_batch, np.random.default_rng(1))


def run_for(runner: WhisperRunner, requests: list[Utterance], seconds: float, start: Callable[[], object]) -> float:
    """Rows per second of back-to-back batches for `seconds` (after `start()` returns)."""
    runner.transcribe_live(requests, "en")  # warm
    start()
    rows, began = 0, time.perf_counter()
    while time.perf_counter() - began < seconds:
        runner.transcribe_live(requests, "en")
        rows += len(requests)
    return rows / (time.perf_counter() - began)


def in_one_process(args: argparse.Namespace, kinds: tuple[str, ...]) -> dict[str, float]:
    final, partial = runners(args, two_lanes=len(kinds) == 2)
    # One kind: the single compute (zip stops at `kinds`); two: the final and the partial lane.
    lanes = {kind: runner for kind, runner in zip(kinds, (final, partial)) if runner is not None}
    clips = clips_of(args.speech)
    work = {kind: batches(runner, kind, clips, args) for kind, runner in lanes.items()}
    barrier = threading.Barrier(len(work))
    rates: dict[str, float] = {}

    def lane(kind: str) -> None:
        rates[kind] = run_for(lanes[kind], work[kind], args.seconds, barrier.wait)

    threads = [threading.Thread(target=lane, args=(kind,)) for kind in work]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return rates


def _lane_process(args: argparse.Namespace, kind: str, barrier, results) -> None:
    runner, _ = runners(args, two_lanes=False)
    requests = batches(runner, kind, clips_of(args.speech), args)
    results[kind] = run_for(runner, requests, args.seconds, barrier.wait)


def in_two_processes(args: argparse.Namespace) -> dict[str, float]:
    context = multiprocessing.get_context("spawn")  # CUDA cannot be forked
    with context.Manager() as manager:
        barrier, results = manager.Barrier(2), manager.dict()
        processes = [context.Process(target=_lane_process, args=(args, kind, barrier, results)) for kind in ("final", "partial")]
        for process in processes:
            process.start()
        for process in processes:
            process.join()
        return dict(results)


SETTINGS: dict[str, tuple[str, Callable[[argparse.Namespace], dict[str, float]]]] = {
    "final": ("final lane alone", lambda args: in_one_process(args, ("final",))),
    "partial": ("partial lane alone", lambda args: in_one_process(args, ("partial",))),
    "threads": ("both, threads of one process", lambda args: in_one_process(args, ("final", "partial"))),
    "processes": ("both, a process each", in_two_processes),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="whisper-base")
    parser.add_argument("--speech", type=Path, default=Path("../shared/speech"))
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--final-batch", type=int, default=24)
    parser.add_argument("--partial-batch", type=int, default=77)
    parser.add_argument("--profiles-dir", type=Path, default=Path("profiles"), help="where <model>.yaml gives the batch buckets")
    parser.add_argument("--settings", nargs="+", choices=SETTINGS, default=list(SETTINGS))
    args = parser.parse_args()
    print(f"{args.model}: final batches of {args.final_batch}, partial batches of {args.partial_batch}, {args.seconds:g} s each setting")
    print("| setting | final rows/s | partial rows/s |\n|---|---:|---:|")
    for setting in args.settings:
        name, measure = SETTINGS[setting]
        rates = measure(args)
        print(f"| {name} | {rates.get('final', float('nan')):.0f} | {rates.get('partial', float('nan')):.0f} |", flush=True)


if __name__ == "__main__":
    main()
