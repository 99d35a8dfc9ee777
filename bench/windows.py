"""Window buckets for Whisper: WER and CPU time of each window scheme on real speech.

    .venv/bin/python bench/windows.py --model whisper-tiny.en --repeats 3

A scheme is the runner's `windows_s` (the windows a piece of audio may be encoded in) and
`margin_s` (padding the audio must keep inside its window). The full 30 s window is the
reference; a shorter bucket whose output trips the loop guard is retried from the full window,
and the table counts those retries. All English clips of /work/shared/speech are held out (no
scheme was tuned on them), one utterance per call as the live daemon sends VAD segments. Times
are the process CPU seconds (ONNX Runtime's worker threads included) and wall seconds, medians
of interleaved repeats, since other jobs share the machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from transcribe_cpu import REPO, english_clips, load_average, machine_name, timed_runner

from asr_stream.devtools.scoring import corpus_wer
from asr_stream.inference.models import load_prepared

# (windows_s, margin_s); the first is the reference every other scheme is compared with.
SCHEMES: tuple[tuple[tuple[int, ...], float], ...] = (
    ((30,), 0.0),
    ((10, 20, 30), 0.0),
    ((10, 20, 30), 1.0),
    ((15, 30), 0.0),
    ((20, 30), 0.0),
    ((5, 10, 20, 30), 1.0),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="whisper-tiny.en", choices=["whisper-tiny.en", "whisper-base"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"lscpu model name {machine_name()!r}, command: {' '.join(sys.argv)}")
    clips = english_clips()
    references = [row["text"] for row, _ in clips]
    prepared = load_prepared(args.model, REPO / "engines")
    runners = {scheme: timed_runner(prepared, args.threads, *scheme) for scheme in SCHEMES}  # (runner, encoder, decoder)
    for runner, _, _ in runners.values():
        runner.transcribe_batch([clips[0][1]], language="en")  # warm-up
    cpu: dict[tuple, list[float]] = defaultdict(list)
    wall: dict[tuple, list[float]] = defaultdict(list)
    texts: dict[tuple, list[str]] = {}
    retries: dict[tuple, int] = {}
    loads = [load_average()]
    for _ in range(args.repeats):
        for scheme, (runner, encoder, _) in runners.items():
            calls_before = encoder.calls
            cpu_start, wall_start = time.process_time(), time.perf_counter()
            texts[scheme] = [runner.transcribe_batch([audio], language="en")[0].text for _, audio in clips]
            cpu[scheme].append(time.process_time() - cpu_start)
            wall[scheme].append(time.perf_counter() - wall_start)
            retries[scheme] = encoder.calls - calls_before - len(clips)  # every clip fits one window
        loads.append(load_average())
    categories = sorted({row["category"] for row, _ in clips})
    print(f"\n{args.model}: {len(clips)} English clips, {args.threads} threads, median of {args.repeats}")
    print(f"load average (1, 5, 15 min) before and after each repeat: {' | '.join(loads)}\n")
    print("| windows_s | margin_s | corpus WER | CPU s | wall s | CPU vs 30 s | full-window retries | " + " | ".join(categories) + " |")
    print("|---|---:|---:|---:|---:|---:|---:|" + "---:|" * len(categories))
    reference_cpu = statistics.median(cpu[SCHEMES[0]])
    for scheme in SCHEMES:
        windows_s, margin_s = scheme
        per_category = []
        for category in categories:
            picked = [k for k, (row, _) in enumerate(clips) if row["category"] == category]
            per_category.append(f"{corpus_wer([references[k] for k in picked], [texts[scheme][k] for k in picked]):.3f}")
        median_cpu = statistics.median(cpu[scheme])
        print(
            f"| {','.join(map(str, windows_s))} | {margin_s:g} | {corpus_wer(references, texts[scheme]):.4f} | {median_cpu:.1f} | "
            f"{statistics.median(wall[scheme]):.1f} | {median_cpu / reference_cpu:.2f} | {retries[scheme]} | "
            + " | ".join(per_category)
            + " |"
        )


if __name__ == "__main__":
    main()
