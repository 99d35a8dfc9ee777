"""Does a caller's final depend on the other calls in its batch, and what does the CPU pay per window and step?

    .venv/bin/python bench/batch_invariance.py [--engines-dir engines] [--model whisper-tiny.en] [--threads 1]

The 39 English shared clips go through the daemon's own live model on ONNX Runtime (`load_model(...,
live=True)`: the CPU graphs, the final windows 10/20/30 s), as finals, twice: each clip alone, and in
batches of up to 8 clips of one window (what the scheduler batches together). Printed: the corpus
WER both ways, how many clips got other tokens in a batch than alone, and the CPU cost of the
served graphs on one thread: the encoder per window (a 5 s and a 10 s window, 8 windows per
`encode` call, as a batch of finals) and a decoder step at 1, 2, 4 and 8 rows (median of 30, cache
of 64 slots). Run it at each commit with that commit's code and graphs to compare.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np

from asr_stream.audio.wavfile import load_audio
from asr_stream.devtools.scoring import corpus_wer
from asr_stream.inference.live import Utterance
from asr_stream.inference.models import load_prepared
from asr_stream.inference.onnxruntime_backend import OnnxRuntimeEngine
from asr_stream.inference.runners import DECODER_GRAPHS, encoder_graph, load_model
from asr_stream.inference.whisper.engine_compute import EngineCompute, EngineSession
from asr_stream.inference.whisper.runner import WhisperRunner

SPEECH = Path(__file__).resolve().parents[2] / "shared" / "speech"
BATCH = 8


def finals(model_name: str, engines_dir: Path, clips: list[np.ndarray], references: list[str]) -> None:
    model = load_model(model_name, engines_dir, live=True)
    requests = [Utterance(clip) for clip in clips]
    buckets: dict[object, list[int]] = {}
    for index, request in enumerate(requests):
        buckets.setdefault(model.utterance_bucket(request), []).append(index)
    alone = [model.live([request])[0] for request in requests]
    together = list(alone)
    for rows in buckets.values():
        for start in range(0, len(rows), BATCH):
            part = rows[start : start + BATCH]
            for index, result in zip(part, model.live([requests[i] for i in part])):
                together[index] = result
    changed = sum(a.tokens != b.tokens for a, b in zip(alone, together))
    wer_alone = corpus_wer(references, [result.text for result in alone])
    wer_together = corpus_wer(references, [result.text for result in together])
    print(
        f"finals: WER alone {wer_alone:.4f}, in batches of <= {BATCH} {wer_together:.4f}; other tokens in a batch: {changed}/{len(clips)}"
    )


def median_ms(run: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return 1000 * float(np.median(times))


def costs(model_name: str, engines_dir: Path, clips: list[np.ndarray], threads: int) -> None:
    prepared = load_prepared(model_name, engines_dir)
    encoder, decoder = encoder_graph(model_name, "onnxruntime"), DECODER_GRAPHS["onnxruntime"]
    runner = WhisperRunner.from_prepared(prepared, partial(OnnxRuntimeEngine.load, threads=threads), encoder=encoder, decoder=decoder)
    compute = runner.compute
    assert isinstance(compute, EngineCompute)
    for window_s in (5, 10):
        mel = runner.features(clips[:BATCH], window_s)
        per_window = median_ms(partial(compute.encode, mel), 3) / BATCH
        print(f"encoder ({encoder}), {window_s} s windows, {BATCH} per call: {per_window:.1f} ms per window")
    encoded = compute.encode(runner.features(clips[:BATCH], 10))
    prompt = runner.tokenizer.prompt("en" if runner.tokenizer.multilingual else None, False)
    steps = []
    for rows in (1, 2, 4, 8):
        session = EngineSession(compute.decoder, encoded.take(list(range(rows))), prepared.dims.n_text_ctx, 64)
        session.feed(np.array([prompt] * rows, dtype=np.int64), np.arange(rows))
        token = np.full((rows, 1), runner.tokenizer.encode(" the")[0], dtype=np.int64)
        steps.append(f"{rows} rows {median_ms(partial(session.feed, token, np.arange(rows)), 30):.2f}")
    print(f"decoder ({decoder}) step, ms: " + ", ".join(steps))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--engines-dir", type=Path, default=Path("engines"))
    parser.add_argument("--model", default="whisper-tiny.en")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads for the cost figures")
    args = parser.parse_args()
    rows = [row for row in map(json.loads, (SPEECH / "manifest.jsonl").read_text().splitlines()) if row["lang"] == "en"]
    clips = [load_audio(SPEECH / row["path_wav16k"])[0][0] for row in rows]
    finals(args.model, args.engines_dir, clips, [row["text"] for row in rows])
    costs(args.model, args.engines_dir, clips, args.threads)


if __name__ == "__main__":
    main()
