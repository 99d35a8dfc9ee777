"""Whisper on CPU: our ONNX Runtime runner against ctranslate2 and faster-whisper, same weights, same clips.

    .venv/bin/python bench/transcribe_cpu.py --models whisper-tiny.en whisper-base --repeats 3

Every system transcribes every English clip of /work/shared/speech one utterance at a time (the
daemon's latency case), audio in -> text out, with the same thread count. Systems:

- ours: `WhisperRunner` on the prepared ONNX graphs (`engines/<model>`), greedy, loop guard on,
  in the full 30 s window and in tiny.en's live window buckets (docs/whisper-windows.md; measured
  on base too, where they lost accuracy);
- ct2 fp32 / int8: `ctranslate2.models.Whisper` on the PyPI package's CTranslate2 directory, fed
  our log-mel (counted in the time), greedy (beam_size=1) with the same prompt;
- fw fp32 / int8: `faster_whisper.WhisperModel` on that directory, beam_size=1, without
  timestamps, no VAD (its own mel and its own temperature fallback).

Repeats run the systems interleaved, so a burst of load from other jobs hits all of them; the
table reports the median total. WER is the corpus WER after `scoring.normalize`, and "same text"
counts clips whose text equals ctranslate2 fp32's, so a speed-up bought with different output is
visible. `--breakdown` splits our time into encoder runs, decoder steps and the rest (mel, logit
rules, cache handling in numpy).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import date
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from timed_engine import TimedEngine  # bench/ is not a package: found as the script's own directory

from asr_stream.audio.features import log_mel_spectrogram
from asr_stream.audio.wavfile import load_audio
from asr_stream.devtools.scoring import corpus_wer
from asr_stream.inference.models import MODELS, PreparedModel, load_prepared
from asr_stream.inference.whisper.engine_compute import EngineCompute
from asr_stream.inference.whisper.graphs import DECODER, ENCODER
from asr_stream.inference.whisper.runner import FULL_WINDOW_S, LIVE_MARGIN_S, LIVE_WINDOWS_S, WhisperRunner

REPO = Path(__file__).resolve().parents[1]
SPEECH = REPO.parent / "shared" / "speech"
Transcribe = Callable[[np.ndarray], str]


def english_clips() -> list[tuple[dict, np.ndarray]]:
    rows = [json.loads(line) for line in (SPEECH / "manifest.jsonl").read_text().splitlines() if line.strip()]
    return [(row, load_audio(SPEECH / row["path_wav16k"])[0][0]) for row in rows if row["lang"] == "en"]


@contextmanager
def ct2_directory(model: str) -> Iterator[Path]:
    """The package's CTranslate2 directory; split weights (base) are joined into a temporary one."""
    source = MODELS[model]
    if len(source.weights) == 1:
        yield source.weights[0].locate().parent
        return
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        with open(directory / "model.bin", "wb") as joined:
            for part in source.weights:
                with open(part.locate(), "rb") as chunk:
                    shutil.copyfileobj(chunk, joined)
        config_dir = source.config.locate().parent
        for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
            shutil.copy(config_dir / name, directory / name)
        yield directory


def timed_runner(
    prepared: PreparedModel, threads: int, windows_s: Sequence[int] = (FULL_WINDOW_S,), margin_s: float = 0.0
) -> tuple[WhisperRunner, TimedEngine, TimedEngine]:
    """A runner on the prepared graphs `WhisperRunner.from_prepared` loads by default, and its timed encoder and decoder."""
    encoder = TimedEngine.load(prepared.graph_path(ENCODER), threads=threads)
    decoder = TimedEngine.load(prepared.graph_path(DECODER), threads=threads)
    compute = EngineCompute(encoder, decoder, prepared.dims.n_text_ctx)
    return WhisperRunner.for_spec(prepared, compute, windows_s, margin_s), encoder, decoder


def ctranslate2_system(directory: Path, runner: WhisperRunner, compute_type: str, threads: int) -> Transcribe:
    import ctranslate2

    model = ctranslate2.models.Whisper(str(directory), device="cpu", compute_type=compute_type, intra_threads=threads, inter_threads=1)
    prompt = runner.tokenizer.prompt("en" if runner.tokenizer.multilingual else None, timestamps=False)

    def transcribe(audio: np.ndarray) -> str:
        features = ctranslate2.StorageView.from_array(log_mel_spectrogram(audio, n_mels=runner.dims.n_mels)[None])
        return runner.tokenizer.decode(model.generate(features, [prompt], beam_size=1)[0].sequences_ids[0]).strip()

    return transcribe


def faster_whisper_system(directory: Path, compute_type: str, threads: int) -> Transcribe:
    from faster_whisper import WhisperModel

    model = WhisperModel(str(directory), device="cpu", compute_type=compute_type, cpu_threads=threads, num_workers=1)

    def transcribe(audio: np.ndarray) -> str:
        segments, _ = model.transcribe(audio, language="en", beam_size=1, without_timestamps=True, vad_filter=False)
        return "".join(segment.text for segment in segments).strip()

    return transcribe


def load_average() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.split("load average:")[-1].strip()


def machine_name() -> str:
    """lscpu's model name: the benchmark tables name the CPU they were measured on."""
    return subprocess.run(["lscpu"], capture_output=True, text=True).stdout.split("Model name:")[-1].splitlines()[0].strip()


def bench_model(model: str, clips: list[tuple[dict, np.ndarray]], threads: int, repeats: int, breakdown: bool) -> None:
    audio_seconds = sum(len(audio) for _, audio in clips) / 16_000
    references = [row["text"] for row, _ in clips]
    with ct2_directory(model) as directory:
        runner, encoder, decoder = timed_runner(load_prepared(model, REPO / "engines"), threads)
        live = WhisperRunner(runner.decoder, LIVE_WINDOWS_S, LIVE_MARGIN_S)  # the same engines, in the live windows

        def ours_transcribe(audio: np.ndarray) -> str:
            return runner.transcribe_batch([audio], language="en")[0].text

        systems: dict[str, Transcribe] = {
            "ours (onnxruntime fp32)": ours_transcribe,
            "ours, live windows 10/20/30 s": lambda audio: live.transcribe_batch([audio], language="en")[0].text,
        }
        for compute_type in ("float32", "int8"):
            systems[f"ctranslate2 {compute_type}"] = ctranslate2_system(directory, runner, compute_type, threads)
        for compute_type in ("float32", "int8"):
            systems[f"faster-whisper {compute_type}"] = faster_whisper_system(directory, compute_type, threads)
        for transcribe in systems.values():
            transcribe(clips[0][1])  # warm-up: first-run allocations and lazy initialisation
        loads = [load_average()]
        totals: dict[str, list[float]] = {name: [] for name in systems}
        texts: dict[str, list[str]] = {}
        for _ in range(repeats):
            for name, transcribe in systems.items():
                start = time.perf_counter()
                texts[name] = [transcribe(audio) for _, audio in clips]
                totals[name].append(time.perf_counter() - start)
            loads.append(load_average())
        if breakdown:
            encoder.runs.clear()
            decoder.runs.clear()
            start = time.perf_counter()
            for _, audio in clips:
                ours_transcribe(audio)
            total = time.perf_counter() - start
            encoder_s, decoder_s = encoder.seconds, decoder.seconds
            print(
                f"\nours breakdown ({model}, one pass, s): total {total:.2f}, encoder {encoder_s:.2f}, decoder steps {decoder_s:.2f}, rest {total - encoder_s - decoder_s:.2f}"
            )
    oracle = texts["ctranslate2 float32"]
    print(f"\n### {model}: {len(clips)} English clips, {audio_seconds:.1f} s of audio, {threads} threads, median of {repeats}")
    print(f"load average (1, 5, 15 min) before and after each repeat: {' | '.join(loads)}\n")
    print("| system | RTF | total s (median) | runs (s) | corpus WER | same text as ct2 fp32 |")
    print("|---|---:|---:|---|---:|---:|")
    for name in systems:
        median = statistics.median(totals[name])
        same = sum(a == b for a, b in zip(texts[name], oracle))
        runs = ", ".join(f"{seconds:.1f}" for seconds in totals[name])
        print(
            f"| {name} | {median / audio_seconds:.4f} | {median:.2f} | {runs} | {corpus_wer(references, texts[name]):.4f} | {same}/{len(clips)} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["whisper-tiny.en", "whisper-base"], choices=["whisper-tiny.en", "whisper-base"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--breakdown", action="store_true", help="also split our time into encoder, decoder steps and the rest")
    args = parser.parse_args()
    print(f"{date.today()}, lscpu model name {machine_name()!r}, command: {' '.join(sys.argv)}")
    clips = english_clips()
    for model in args.models:
        bench_model(model, clips, args.threads, args.repeats, args.breakdown)


if __name__ == "__main__":
    main()
