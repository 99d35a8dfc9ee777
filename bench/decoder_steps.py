"""Whisper's decoder on ONNX Runtime (CPU): how long one call takes, over a whole pass of the English clips.

    .venv/bin/python bench/decoder_steps.py [--engines-dir engines] [--decoder decoder|decoder_cpu] [--repeats 2]

Each of the 39 English shared clips is transcribed alone (`WhisperRunner.transcribe_batch`, the live
daemon's final windows 10/20/30 s, 2 ONNX Runtime threads) while every decoder call is timed. Prints
one JSON line per repeat: the pass's wall and process CPU seconds, decoder calls, the median call and
their sum, the corpus WER, and a digest of every clip's tokens (equal digests: token-identical output).
For a change of the graphs' interface, run it at each commit with that commit's code and graphs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np
from timed_engine import TimedEngine  # bench/ is not a package: found as the script's own directory

from asr_stream.audio.wavfile import load_audio
from asr_stream.devtools.scoring import corpus_wer
from asr_stream.inference.models import load_prepared
from asr_stream.inference.onnxruntime_backend import OnnxRuntimeEngine
from asr_stream.inference.whisper.engine_compute import EngineCompute
from asr_stream.inference.whisper.graphs import DECODER, ENCODER
from asr_stream.inference.whisper.runner import LIVE_MARGIN_S, LIVE_WINDOWS_S, WhisperRunner

SPEECH = Path(__file__).resolve().parents[2] / "shared" / "speech"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--engines-dir", type=Path, default=Path("engines"))
    parser.add_argument("--decoder", default=DECODER, help="decoder (the fp32 export) or decoder_cpu (what ONNX Runtime serves)")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    rows = [row for row in map(json.loads, (SPEECH / "manifest.jsonl").read_text().splitlines()) if row["lang"] == "en"]
    audios = [load_audio(SPEECH / row["path_wav16k"])[0][0] for row in rows]
    prepared = load_prepared("whisper-tiny.en", args.engines_dir)
    decoder = TimedEngine.load(prepared.graph_path(args.decoder), threads=2)
    compute = EngineCompute(OnnxRuntimeEngine.load(prepared.graph_path(ENCODER), threads=2), decoder, prepared.dims.n_text_ctx)
    runner = WhisperRunner.for_spec(prepared, compute, LIVE_WINDOWS_S, LIVE_MARGIN_S)
    for _ in range(args.repeats):
        decoder.runs.clear()
        wall, cpu = time.perf_counter(), time.process_time()
        tokens = [runner.transcribe_batch([audio])[0].tokens for audio in audios]
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        texts = [runner.tokenizer.decode(t) for t in tokens]
        figures = {
            "decoder": args.decoder,
            "wall_s": round(wall, 2),
            "cpu_s": round(cpu, 2),
            "decoder_calls": decoder.calls,
            "call_ms_median": round(1000 * float(np.median(decoder.runs)), 2),
            "calls_s": round(decoder.seconds, 2),
            "wer": round(corpus_wer([row["text"] for row in rows], texts), 4),
            "tokens_sha": hashlib.sha256(json.dumps(tokens).encode()).hexdigest()[:12],
        }
        print(json.dumps(figures))


if __name__ == "__main__":
    main()
