"""Partials that scale (issue 13): each lever measured on the shared clips, offline, one segment at a time.

    .venv/bin/python bench/partials.py --schemes baseline short-windows prefix prefix+final
    .venv/bin/python bench/partials.py --model whisper-base --schemes baseline prefix
    .venv/bin/python bench/partials.py --calls 8 --schemes baseline prefix prefix+final   # whole calls
    .venv/bin/python bench/partials.py --schemes prefix int8-vocab && .venv/bin/python bench/partials.py --calls 8 --schemes prefix int8-vocab
    .venv/bin/python bench/partials.py --threads 1 --schemes int8-vocab int8-encoder fine-windows

Every English shared clip is one open segment, trimmed to its voice and padded 0.3 s on each side
as the segmenter pads: the segment grows in real time and gets a partial every second (at 1.3 s,
2.3 s, ... of audio while speech lasts, as `PartialPolicy` schedules an uninterrupted speaker), then
its final. Each request goes through the daemon's own code: `WhisperRunner.transcribe_live` (one
request per call, ONNX Runtime, 2 threads) and `SegmentTranscript` (what is committed and forced
next, what is stable). Per scheme:

- CPU ms per partial and per final (process time; ORT's threads included), decoder calls per partial;
- partial WER vs the final: each partial against the final's first as many words (a partial's
  last word is often cut by the audio's end, so this is never 0); churn: the share of words shown
  in a partial that a later partial or the final changed (case and punctuation ignored); stable
  churn: the same for the partial's `stable_text` only;
- final WER (corpus, against the references) and the offline WER of the same runner (full clip,
  `transcribe_batch`), so a scheme can be checked against the +0.01 bar.

`--calls N` instead runs whole calls through the daemon's channel path, deterministically: bench/
load.py's first N calls (3 utterances each, through the G.711 channel SIPp would use), fed in
20 ms frames to a `ChannelTranscriber` (real Silero VAD and segmenter) on a clock that moves with
the audio, every request answered at once by the live model. It gives the finals' WER per scheme
without the timing noise of a live run, next to the offline WER of the same audio (per utterance
and per whole call, full window). `--offsets-ms` starts every call's audio that much later: the VAD's
32 ms windows then fall elsewhere on the speech, which moves segment edges by a window, the way two
live runs of the same call differ. `--segmenter KEY=VALUE` changes the segmenter's settings;
`--noise-db` puts white noise under each call, so pauses and pads are not digital silence.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from timed_engine import TimedEngine

from asr_stream.app.blas_threads import limit_blas_threads
from asr_stream.audio.segmenter import SegmenterConfig
from asr_stream.audio.wavfile import load_audio
from asr_stream.devtools.scoring import churn, corpus_wer, normalize
from asr_stream.inference.live import LiveResult, Utterance
from asr_stream.inference.models import load_prepared
from asr_stream.inference.onnxruntime_backend import OnnxRuntimeEngine
from asr_stream.inference.runners import LoadedModel, load_model
from asr_stream.inference.whisper.engine_compute import EngineCompute
from asr_stream.inference.whisper.graphs import DECODER, DECODER_CPU, ENCODER, ENCODER_CPU
from asr_stream.inference.whisper.runner import WhisperRunner, live_windows
from asr_stream.transcript.channel import ChannelTranscriber
from asr_stream.transcript.events import SegmentFinal, SegmentPartial
from asr_stream.transcript.partials import PartialPolicy
from asr_stream.transcript.state import Labels, SegmentTranscript

REPO = Path(__file__).resolve().parents[1]
SPEECH = REPO.parent / "shared" / "speech"
RATE = 16_000
PAD_S = 0.3
INTERVAL_S = 1.0


@dataclass(frozen=True)
class Scheme:
    partial_windows_s: tuple[int, ...] | None  # None: the final's windows
    reuse_prefix: bool = False
    final_prefix: bool = False
    int8: bool = False  # every MatMul of both graphs (quantize_dynamic)
    # DECODER_CPU: the decoder the daemon runs on ONNX Runtime (since EXPORT_VERSION 6 every weight MatMul
    # weight-only int8; the int8-vocab figures in docs/benchmarks.md are of its earlier int8 projection)
    decoder: str = DECODER
    encoder: str = ENCODER  # ENCODER_CPU: the encoder's MatMuls in int8, as the daemon runs it on ONNX Runtime


SCHEMES = {
    "baseline": Scheme(None),
    "short-windows": Scheme((5, 10, 20, 30)),
    "prefix": Scheme((5, 10, 20, 30), reuse_prefix=True),
    "prefix-live-windows": Scheme(None, reuse_prefix=True),
    "prefix+final": Scheme((5, 10, 20, 30), reuse_prefix=True, final_prefix=True),
    "int8": Scheme(None, int8=True),
    "int8+prefix": Scheme((5, 10, 20, 30), reuse_prefix=True, int8=True),
    "int8-vocab": Scheme((5, 10, 20, 30), reuse_prefix=True, decoder=DECODER_CPU),
    "fine-windows": Scheme((2, 3, 4, 5, 6, 7, 8, 10, 12, 15, 20, 30), reuse_prefix=True, decoder=DECODER_CPU),
    "int8-encoder": Scheme((5, 10, 20, 30), reuse_prefix=True, decoder=DECODER_CPU, encoder=ENCODER_CPU),
}


def int8_graph(graph: Path, cache: Path) -> Path:
    """ONNX Runtime dynamic quantization (int8 weights of MatMul/Gemm), cached next to the bench's temp dir."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    target = cache / f"{graph.parent.name}-{graph.stem}.int8.onnx"
    if not target.exists():
        cache.mkdir(parents=True, exist_ok=True)
        quantize_dynamic(graph, target, weight_type=QuantType.QInt8)
    return target


def make_runner(model: str, scheme: Scheme, threads: int, cache: Path) -> tuple[WhisperRunner, TimedEngine]:
    prepared = load_prepared(model, REPO / "engines")
    graphs = {
        ENCODER: Path("/tmp/enc-int8-mm.onnx") if scheme.encoder != ENCODER else prepared.graph_path(ENCODER),
        DECODER: prepared.graph_path(scheme.decoder),
    }
    if scheme.int8:
        graphs = {name: int8_graph(path, cache) for name, path in graphs.items()}
    decoder = TimedEngine.load(graphs[DECODER], threads=threads)
    compute = EngineCompute(OnnxRuntimeEngine.load(graphs[ENCODER], threads=threads), decoder, prepared.dims.n_text_ctx)
    windows_s, margin_s = live_windows(model)
    return WhisperRunner.for_spec(prepared, compute, windows_s, margin_s, partial_windows_s=scheme.partial_windows_s), decoder


def trim_voice(audio: np.ndarray, floor_db: float = -35.0) -> np.ndarray:
    frames = audio[: audio.size // 160 * 160].reshape(-1, 160)
    rms = np.sqrt((frames**2).mean(axis=1) + 1e-12)
    loud = np.flatnonzero(rms >= rms.max() * 10 ** (floor_db / 20))
    return audio[loud[0] * 160 : (loud[-1] + 1) * 160]


@dataclass
class Tally:
    partial_cpu: list[float] = field(default_factory=list)
    partial_decoder_calls: list[int] = field(default_factory=list)
    final_cpu: list[float] = field(default_factory=list)
    partial_pairs: tuple[list[str], list[str]] = field(default_factory=lambda: ([], []))
    changed: int = 0
    shown: int = 0
    stable_changed: int = 0
    stable_shown: int = 0
    finals: list[str] = field(default_factory=list)
    offline: list[str] = field(default_factory=list)
    first_partial_words: list[int] = field(default_factory=list)


def run_segment(runner: WhisperRunner, decoder: TimedEngine, scheme: Scheme, audio: np.ndarray, tally: Tally) -> None:
    pad = np.zeros(round(PAD_S * RATE), np.float32)
    segment = np.concatenate([pad, audio, pad])
    speech_end = len(pad) + len(audio)
    transcript = SegmentTranscript(Labels("bench", "m", "e"), "c", 0, 0)
    partials: list[str] = []
    stables: list[str] = []
    length = round((PAD_S + INTERVAL_S) * RATE)
    while length < speech_end:
        request = Utterance(segment[:length], partial=True, prefix=transcript.committed if scheme.reuse_prefix else ())
        calls, cpu = decoder.calls, time.process_time()
        result = runner.transcribe_live([request], language="en")[0]
        tally.partial_cpu.append(time.process_time() - cpu)
        tally.partial_decoder_calls.append(decoder.calls - calls)
        event = transcript.partial(result.text, 0, "en", 0, result.tokens)
        if event is not None:
            partials.append(event.text)
            stables.append(event.stable_text)
        length += round(INTERVAL_S * RATE)
    cpu = time.process_time()
    final = runner.transcribe_live([Utterance(segment, prefix=transcript.committed if scheme.final_prefix else ())], language="en")[0]
    tally.final_cpu.append(time.process_time() - cpu)
    tally.finals.append(final.text)
    final_words = normalize(final.text).split()
    for text in partials:
        words = normalize(text).split()
        tally.partial_pairs[0].append(" ".join(final_words[: len(words)]))
        tally.partial_pairs[1].append(text)
    changed, shown = churn([*partials, final.text])
    tally.changed, tally.shown = tally.changed + changed, tally.shown + shown
    changed, shown = churn([*stables, final.text])
    tally.stable_changed, tally.stable_shown = tally.stable_changed + changed, tally.stable_shown + shown


class _AnswerAtOnce:
    """The channel's model queue, answered in the caller's thread: deterministic, no batching."""

    def __init__(self, model: LoadedModel) -> None:
        self._model = model

    async def submit(self, key: object, payload: Utterance, priority: object) -> LiveResult:
        return self._model.live([payload])[0]


class _MediaClock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


async def _call_finals(model: LoadedModel, audio: np.ndarray, policy: PartialPolicy, segmenter: SegmenterConfig) -> str:
    clock = _MediaClock()
    emitted: list[SegmentPartial | SegmentFinal] = []
    channel = ChannelTranscriber(
        labels=Labels("bench", model.name, model.backend),
        channel="caller",
        scheduler=_AnswerAtOnce(model),
        emit=emitted.append,
        segmenter_config=segmenter,
        partials=policy,
        clock=clock,
    )
    for start in range(0, len(audio), RATE // 50):
        clock.now += 0.02
        channel.feed(audio[start : start + RATE // 50])
        await asyncio.sleep(0)
    await channel.finish()
    return " ".join(event.text for event in emitted if isinstance(event, SegmentFinal))


def whole_calls(
    model_name: str, n_calls: int, schemes: list[str], offsets_ms: list[int], segmenter: SegmenterConfig, noise_db: float | None
) -> None:
    import load  # bench/load.py: the same calls as the live load test

    clips = load.english_clips(2.5, 10.0)
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(1)
        calls = [load.build_call(i, clips, 3, Path(tmp), rng) for i in range(n_calls)]
        audios = [load_audio(call.wav)[0][0] for call in calls]
    noise = np.random.default_rng(7)

    def heard(audio: np.ndarray, lead_ms: int = 0) -> np.ndarray:
        """What the daemon hears: `lead_ms` of silence first, line noise under it all if asked, through G.711."""
        audio = np.concatenate((np.zeros(lead_ms * RATE // 1000, np.float32), audio))
        if noise_db is not None:  # line noise: pauses and pads are then not digital silence
            audio = audio + (10 ** (noise_db / 20) * noise.standard_normal(len(audio))).astype(np.float32)
        return load.telephone(audio)

    references = [" ".join(u.text for u in call.utterances) for call in calls]
    offline = load_model(model_name, REPO / "engines")
    per_offset = []  # the yardstick moves with the audio's start too: one utterance at a time, each shifted alike
    for ms in offsets_ms:
        texts = [" ".join(offline.transcribe_batch([heard(u.audio, ms)])[0].text for u in call.utterances) for call in calls]
        per_offset.append(corpus_wer(references, texts))
    whole = [offline.transcribe_batch([heard(audio)])[0].text for audio in audios]
    print(
        f"{n_calls} calls: offline WER per utterance {' / '.join(f'{rate:.4f}' for rate in per_offset)} (mean {np.mean(per_offset):.4f}), "
        f"per whole call {corpus_wer(references, whole):.4f}"
    )
    live = load_model(model_name, REPO / "engines", live=True)
    print(f"segmenter: {segmenter}")
    print(f"| scheme | {' | '.join(f'WER, call audio {ms} ms later' for ms in offsets_ms)} | mean |")
    print(f"|---|{'---:|' * (len(offsets_ms) + 1)}")
    for name in schemes:
        scheme = SCHEMES[name]
        # Partials change a final only through `final_prefix`: without it they are skipped (the finals are the same, sooner).
        interval_s = INTERVAL_S if scheme.final_prefix else 1e9
        policy = PartialPolicy(interval_s=interval_s, reuse_prefix=scheme.reuse_prefix, final_prefix=scheme.final_prefix)
        rates = []
        for ms in offsets_ms:
            hypotheses = [asyncio.run(_call_finals(live, heard(audio, ms), policy, segmenter)) for audio in audios]
            rates.append(corpus_wer(references, hypotheses))
        print(f"| {name} | {' | '.join(f'{rate:.4f}' for rate in rates)} | {np.mean(rates):.4f} |", flush=True)


def segmenter_config(overrides: list[str]) -> SegmenterConfig:
    """`KEY=VALUE` overrides of the daemon's segmenter defaults, each VALUE read as its default's type (int or float)."""
    defaults = SegmenterConfig()
    fields = {key: type(getattr(defaults, key))(value) for key, _, value in (o.partition("=") for o in overrides)}
    return dataclasses.replace(defaults, **fields)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="whisper-tiny.en", choices=["whisper-tiny.en", "whisper-base"])
    parser.add_argument("--schemes", nargs="+", default=list(SCHEMES), choices=list(SCHEMES))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clips", type=int, default=0, help="only the first N English clips (0: all)")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/asr-bench-int8"), help="where int8 graphs are written")
    parser.add_argument("--calls", type=int, default=0, help="whole calls through the channel path instead (see above)")
    parser.add_argument(
        "--offsets-ms",
        type=int,
        nargs="+",
        default=[0],
        help="with --calls: start each call's audio this much later (VAD windows fall elsewhere)",
    )
    parser.add_argument(
        "--segmenter", nargs="*", default=[], metavar="KEY=VALUE", help="with --calls: segmenter settings, e.g. min_silence_ms=800"
    )
    parser.add_argument("--noise-db", type=float, help="with --calls: white noise this many dB below full scale under each call")
    args = parser.parse_args()
    limit_blas_threads()  # as the daemon does: numpy's spinning BLAS threads would be counted as the model's CPU
    if args.calls:
        try:
            segmenter = segmenter_config(args.segmenter)
        except (AttributeError, TypeError, ValueError) as error:  # an unknown key, a value not of its type, or settings it refuses
            parser.error(f"--segmenter {' '.join(args.segmenter)}: {error}")
        whole_calls(args.model, args.calls, args.schemes, args.offsets_ms, segmenter, args.noise_db)
        return
    rows = [json.loads(line) for line in (SPEECH / "manifest.jsonl").read_text().splitlines()]
    rows = [row for row in rows if row["lang"] == "en"][: args.clips or None]
    clips = [trim_voice(load_audio(SPEECH / row["path_wav16k"])[0][0]) for row in rows]
    references = [row["text"] for row in rows]
    print(f"{args.model}, {len(clips)} English clips ({sum(len(c) for c in clips) / RATE:.0f} s), {args.threads} threads")
    print(f"load average before: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    header = (
        "| scheme | partials | CPU ms per partial | decoder calls per partial | CPU ms per final | partial WER vs final "
        "| churn | stable churn | final WER | offline WER | load avg |"
    )
    print(header + "\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|", flush=True)
    for name in args.schemes:
        scheme = SCHEMES[name]
        runner, decoder = make_runner(args.model, scheme, args.threads, args.cache)
        runner.transcribe_live([Utterance(clips[0], partial=True)], language="en")  # warm-up
        tally = Tally()
        for audio in clips:
            run_segment(runner, decoder, scheme, audio, tally)
            tally.offline.append(runner.transcribe_batch([audio], language="en")[0].text)
        partial_wer = corpus_wer(*tally.partial_pairs)
        print(
            f"| {name} | {len(tally.partial_cpu)} | {1000 * np.mean(tally.partial_cpu):.0f} | {np.mean(tally.partial_decoder_calls):.1f} "
            f"| {1000 * np.mean(tally.final_cpu):.0f} | {partial_wer:.3f} | {tally.changed / max(tally.shown, 1):.3f} "
            f"| {tally.stable_changed / max(tally.stable_shown, 1):.3f} | {corpus_wer(references, tally.finals):.4f} "
            f"| {corpus_wer(references, tally.offline):.4f} | {' '.join(Path('/proc/loadavg').read_text().split()[:3])} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
