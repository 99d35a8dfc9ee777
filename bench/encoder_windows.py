"""Whisper's encoder on ONNX Runtime (CPU): one window's time, fp32 export vs the int8 copy the daemon serves.

    .venv/bin/python bench/encoder_windows.py [--model whisper-tiny.en] [--threads 1] [--repeats 7]

The input is the log-mel of a real English shared clip in each live window (5, 10, 20, 30 s: the
partials' windows and the finals'), batch 1, as the CPU daemon's lanes call it (one thread each by
default). Prints the median wall milliseconds per graph and window, with the machine and date, and
how far the int8 copy's cross-attention K/V are from the export's (relative RMS difference).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from transcribe_cpu import REPO, load_average, machine_name

from asr_stream.audio.features import SAMPLE_RATE, log_mel_spectrogram
from asr_stream.audio.wavfile import load_audio
from asr_stream.inference.models import load_prepared
from asr_stream.inference.onnxruntime_backend import OnnxRuntimeEngine
from asr_stream.inference.whisper.graphs import ENCODER, ENCODER_CPU

SPEECH = REPO.parent / "shared" / "speech"
WINDOWS_S = (5, 10, 20, 30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="whisper-tiny.en", choices=["whisper-tiny.en", "whisper-base"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    prepared = load_prepared(args.model, REPO / "engines")
    row = next(row for row in map(json.loads, (SPEECH / "manifest.jsonl").read_text().splitlines()) if row["lang"] == "en")
    audio = load_audio(SPEECH / row["path_wav16k"])[0][0]
    engines = {name: OnnxRuntimeEngine.load(prepared.graph_path(name), threads=args.threads) for name in (ENCODER, ENCODER_CPU)}
    print(f"{args.model}, {args.threads} thread(s), {machine_name()}, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, load {load_average()}")
    print("| window s | encoder ms | encoder_cpu ms | speed-up | K/V relative RMS difference |\n|---:|---:|---:|---:|---:|")
    for window_s in WINDOWS_S:
        mel = log_mel_spectrogram(audio[: window_s * SAMPLE_RATE], n_mels=prepared.dims.n_mels, n_samples=window_s * SAMPLE_RATE)[None]
        outputs, medians = {}, {}
        for name, engine in engines.items():
            outputs[name] = engine.run({"mel": mel})  # warm-up, and the output compared below
            seconds = []
            for _ in range(args.repeats):
                started = time.perf_counter()
                engine.run({"mel": mel})
                seconds.append(time.perf_counter() - started)
            medians[name] = 1000 * statistics.median(seconds)
        reference, quantized = outputs[ENCODER], outputs[ENCODER_CPU]
        difference = max(np.linalg.norm(quantized[key] - value) / np.linalg.norm(value) for key, value in reference.items())
        print(
            f"| {window_s} | {medians[ENCODER]:.1f} | {medians[ENCODER_CPU]:.1f} | {medians[ENCODER] / medians[ENCODER_CPU]:.2f}x | {difference:.3f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
