"""GPU benchmark (H100/H200): correctness against ONNX Runtime, offline throughput against HF transformers,
and the number of real-time call channels the real scheduler sustains.

"Ours" is the product's torch backend as `backend: torch` loads it (`runners.torch_runner`: the
shared WhisperRunner with its loop guard, on TorchWhisperCompute with CUDA graphs), fed log-mel
windows computed beforehand (`WhisperRunner.decode_features`) so that the model, not the host's
feature extraction, is timed, as for HF.

Three parts, each bounded in time so that the whole fits one 10-minute device call:

    parity    fp32 torch-CUDA tokens (CUDA graphs) vs ONNX Runtime CPU fp32 (must be identical), fp16 WER vs fp32
    offline   audio-seconds per second and latency per batch vs batch size, ours (fp16, CUDA graphs)
              and HF WhisperForConditionalGeneration (fp16, batched greedy `generate`, our CT2
              weights mapped into its state dict) on the same log-mel windows in the same run
    channels  N simulated call channels replay real speech in real time; every second of speech a
              partial of the open segment and at each end of speech a final go through
              BatchScheduler, as the daemon sends them; the largest N whose p95 end-of-speech ->
              final latency stays <= 400 ms, and GPU memory per engine and per channel

    python bench/gpu.py --speech /tmp/speech --out $OUT/gpu.json parity offline channels

faster-whisper / CTranslate2 is not compared on the GPU: its PyPI wheels link CUDA 12 cuBLAS and
cuDNN 9, the machine has CUDA 13 only and no network, and cuBLAS 12 (~500 MB) exceeds what a
device call can carry.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

import numpy as np
import scipy.io.wavfile
import torch

from asr_stream.audio.features import log_mel_spectrogram
from asr_stream.inference.models import PreparedModel, load_prepared
from asr_stream.inference.onnxruntime_backend import OnnxRuntimeEngine
from asr_stream.inference.runners import torch_runner
from asr_stream.inference.scheduler import BatchScheduler, Priority, SchedulerSettings, Shed
from asr_stream.inference.whisper.runner import WhisperRunner
from asr_stream.inference.whisper.tokenizer import WhisperTokenizer

if TYPE_CHECKING:  # imported where used: only the offline part needs transformers
    from transformers import WhisperForConditionalGeneration

FINAL_P95_LIMIT_S = 0.4
PARTIAL_EVERY_S = 1  # the daemon's partial interval while a segment is open


@dataclass(frozen=True)
class Clip:
    name: str
    language: str
    seconds: float
    text: str
    audio: np.ndarray  # 16 kHz mono
    mel: np.ndarray  # [80, 3000]: the 30 s window the runner feeds


def read_wav(path: Path) -> np.ndarray:
    """16 kHz 16-bit PCM WAV as float32 (scipy: the GPU machine has no soundfile)."""
    rate, samples = scipy.io.wavfile.read(path)
    assert rate == 16000 and samples.dtype == np.int16, (path, rate, samples.dtype)
    return samples.astype(np.float32) / 32768.0


def load_clips(speech: Path, english_only: bool) -> list[Clip]:
    clips = []
    for line in (speech / "manifest.jsonl").read_text().splitlines():
        entry = json.loads(line)
        if english_only and entry["lang"] != "en":
            continue
        audio = read_wav(speech / entry["path_wav16k"])
        clips.append(Clip(entry["id"], entry["lang"], len(audio) / 16000, entry["text"], audio, log_mel_spectrogram(audio)))
    return clips


def words(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split()


def wer(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Corpus word error rate in percent (Levenshtein over words)."""
    errors = total = 0
    for reference, hypothesis in zip(references, hypotheses):
        ref, hyp = words(reference), words(hypothesis)
        row = list(range(len(hyp) + 1))
        for i, ref_word in enumerate(ref, 1):
            previous, row[0] = row[0], i
            for j, hyp_word in enumerate(hyp, 1):
                previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (ref_word != hyp_word))
        errors += row[-1]
        total += len(ref)
    return 100.0 * errors / max(total, 1)


class Model:
    """A prepared model (its ONNX graphs are the parity reference) with its tokenizer, and our torch runner."""

    def __init__(self, name: str, engines_dir: Path) -> None:
        self.name = name
        self.prepared: PreparedModel = load_prepared(name, engines_dir)
        self.tokenizer = WhisperTokenizer.from_file(self.prepared.tokenizer_path, self.prepared.dims.is_multilingual)

    def languages(self, clips: Sequence[Clip]) -> list[str | None]:
        """The clips' languages for a multilingual model (as the daemon's configured language); None for English-only."""
        return [clip.language if self.tokenizer.multilingual else None for clip in clips]

    def prompts(self, clips: Sequence[Clip]) -> np.ndarray:
        return np.array([self.tokenizer.prompt(language, False) for language in self.languages(clips)], dtype=np.int64)

    def ours(self, dtype: torch.dtype) -> WhisperRunner:
        """What `backend: torch` serves (fp16), or fp32 for parity: every CUDA graph captured up front."""
        return torch_runner(self.name, "profiles", dtype=dtype)


def decode(runner: WhisperRunner, model: Model, clips: Sequence[Clip], mel: np.ndarray | None = None) -> list[list[int]]:
    """Tokens of full 30 s windows through the shared runner (loop guard included), in batches it takes."""
    mel = np.stack([clip.mel for clip in clips]) if mel is None else mel
    step = runner.compute.max_batch
    tokens: list[list[int]] = []
    for start in range(0, len(clips), step):
        rows = clips[start : start + step]
        decoded = runner.decode_features(mel[start : start + step], [clip.seconds for clip in rows], model.languages(rows))
        tokens += [window.tokens for window in decoded]
    return tokens


def parity(model: Model, clips: list[Clip]) -> dict[str, object]:
    """Token identity fp32 GPU vs ONNX Runtime CPU fp32, and the fp16 WER shift, over every clip."""
    runner = WhisperRunner.from_prepared(model.prepared, OnnxRuntimeEngine.load)
    reference: list[list[int]] = [[] for _ in clips]
    for language in sorted({clip.language for clip in clips}):
        rows = [i for i, clip in enumerate(clips) if clip.language == language]
        audios = [clips[i].audio for i in rows]
        for i, transcript in zip(rows, runner.transcribe_batch(audios, language=language if model.tokenizer.multilingual else None)):
            reference[i] = transcript.tokens
    fp32 = decode(model.ours(torch.float32), model, clips)
    torch.cuda.empty_cache()
    fp16 = decode(model.ours(torch.float16), model, clips)
    english = [i for i, clip in enumerate(clips) if clip.language == "en"]
    texts = {
        name: [model.tokenizer.decode(tokens[i]) for i in english]
        for name, tokens in (("onnxruntime_fp32", reference), ("torch_fp32", fp32), ("torch_fp16", fp16))
    }
    truth = [clips[i].text for i in english]
    return {
        "clips": len(clips),
        "fp32_identical": sum(a == b for a, b in zip(fp32, reference)),
        "fp16_identical": sum(a == b for a, b in zip(fp16, reference)),
        "fp32_differing": [clips[i].name for i, (a, b) in enumerate(zip(fp32, reference)) if a != b],
        "wer_english": {name: round(wer(truth, hypotheses), 2) for name, hypotheses in texts.items()},
        "english_clips": len(english),
    }


def hf_whisper(model: Model, device: str = "cuda", dtype: torch.dtype = torch.float16) -> WhisperForConditionalGeneration:
    """HF WhisperForConditionalGeneration (fp16, CUDA) holding our CT2 weights: no hub access."""
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    from asr_stream.inference.models import model_source
    from asr_stream.inference.whisper.ct2 import read_model_bin
    from asr_stream.inference.whisper.model import Whisper

    ours = Whisper.from_ct2(read_model_bin(packaged.locate() for packaged in model_source(model.name).weights)).state_dict()
    dims, tokenizer = model.prepared.dims, model.tokenizer
    config = WhisperConfig(
        vocab_size=dims.n_vocab,
        num_mel_bins=dims.n_mels,
        d_model=dims.n_audio_state,
        encoder_layers=dims.n_audio_layer,
        encoder_attention_heads=dims.n_audio_head,
        encoder_ffn_dim=4 * dims.n_audio_state,
        decoder_layers=dims.n_text_layer,
        decoder_attention_heads=dims.n_text_head,
        decoder_ffn_dim=4 * dims.n_text_state,
        max_source_positions=dims.n_audio_ctx,
        max_target_positions=dims.n_text_ctx,
        decoder_start_token_id=tokenizer.sot,
        eos_token_id=tokenizer.eot,
        pad_token_id=tokenizer.eot,
        bos_token_id=tokenizer.eot,
        suppress_tokens=list(model.prepared.suppress_ids),
        begin_suppress_tokens=list(model.prepared.suppress_ids_begin),
    )
    hf = WhisperForConditionalGeneration(config)
    names = {
        "attn.query": "self_attn.q_proj",
        "attn.key": "self_attn.k_proj",
        "attn.value": "self_attn.v_proj",
        "attn.out": "self_attn.out_proj",
        "cross_attn.query": "encoder_attn.q_proj",
        "cross_attn.key": "encoder_attn.k_proj",
        "cross_attn.value": "encoder_attn.v_proj",
        "cross_attn.out": "encoder_attn.out_proj",
        "attn_ln": "self_attn_layer_norm",
        "cross_attn_ln": "encoder_attn_layer_norm",
        "mlp.0": "fc1",
        "mlp.2": "fc2",
        "mlp_ln": "final_layer_norm",
    }
    state = {}
    for name, tensor in ours.items():
        mapped = name.replace("blocks.", "layers.").replace("encoder.positional_embedding", "encoder.embed_positions.weight")
        mapped = mapped.replace("decoder.positional_embedding", "decoder.embed_positions.weight").replace("token_embedding", "embed_tokens")
        mapped = mapped.replace("encoder.ln_post", "encoder.layer_norm").replace("decoder.ln.", "decoder.layer_norm.")
        for old, new in names.items():
            mapped = re.sub(rf"\.{re.escape(old)}\.", f".{new}.", mapped)
        if mapped.endswith("k_proj.bias"):
            continue  # HF has no key bias; CT2's is all zeros
        state[f"model.{mapped}"] = tensor
    state["proj_out.weight"] = state["model.decoder.embed_tokens.weight"]
    missing, unexpected = hf.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"HF mapping incomplete: missing {missing}, unexpected {unexpected}")
    return hf.to(device, dtype).eval()


def hf_transcribe(hf: WhisperForConditionalGeneration, mel: np.ndarray, prompts: np.ndarray, max_new_tokens: int) -> list[list[int]]:
    """Batched greedy decoding through transformers' generic `generate` (Whisper's own wrapper adds long-form logic we don't want)."""
    from transformers import GenerationMixin

    features = torch.from_numpy(mel).to(hf.device, hf.dtype)
    prompt = torch.from_numpy(prompts).to(hf.device)
    with torch.inference_mode():
        out = GenerationMixin.generate(
            hf, input_features=features, decoder_input_ids=prompt, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1
        )
    eot = hf.config.eos_token_id
    generated = [row[prompt.shape[1] :].tolist() for row in out]
    return [tokens[: tokens.index(eot)] if eot in tokens else tokens for tokens in generated]


def timed(function: Callable[[], object], repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        started = time.perf_counter()
        function()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return times


def offline(model: Model, clips: list[Clip], batches: Sequence[int], budget_s: float) -> list[dict[str, object]]:
    """Throughput and latency per batch size, ours and HF side by side, on tiled real clips."""
    ours = model.ours(torch.float16)
    hf = hf_whisper(model)
    rows = []
    deadline = time.monotonic() + budget_s
    for batch in batches:
        chosen = [clips[i % len(clips)] for i in range(batch)]
        mel, prompts = np.stack([clip.mel for clip in chosen]), model.prompts(chosen)
        max_new_tokens = model.prepared.dims.n_text_ctx - prompts.shape[1]  # our limit too: prompt + output <= the text context
        audio_seconds = sum(clip.seconds for clip in chosen)
        row: dict[str, object] = {"model": model.name, "batch": batch, "audio_s": round(audio_seconds, 1)}
        systems = {"ours": partial(decode, ours, model, chosen, mel), "hf": partial(hf_transcribe, hf, mel, prompts, max_new_tokens)}
        tokens = {}
        for name, run in systems.items():
            if time.monotonic() > deadline:
                row[name] = "skipped: time budget"
                continue
            tokens[name] = run()  # warm-up (HF allocates its cache on first use)
            times = timed(run, 3)
            median = statistics.median(times)
            row[name] = {"batch_latency_ms": round(1000 * median, 1), "audio_s_per_s": round(audio_seconds / median, 1)}
        if len(tokens) == len(systems):
            row["hf_token_agreement"] = round(sum(a == b for a, b in zip(tokens["ours"], tokens["hf"])) / batch, 3)
            row["speedup_vs_hf"] = round(row["ours"]["audio_s_per_s"] / row["hf"]["audio_s_per_s"], 2)  # type: ignore[index]
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows  # HF's model is freed with this frame; main() empties the CUDA cache


def partial_mels(clips: Sequence[Clip]) -> dict[tuple[int, int], np.ndarray]:
    """(clip, whole seconds spoken) -> the 30 s log-mel of the open segment so far, as a partial sees it."""
    return {
        (index, spoken): log_mel_spectrogram(clip.audio[: spoken * 16000])
        for index, clip in enumerate(clips)
        for spoken in range(PARTIAL_EVERY_S, int(clip.seconds) + 1, PARTIAL_EVERY_S)
    }


def percentile_ms(sorted_seconds: Sequence[float], share: float) -> float | None:
    return round(1000 * sorted_seconds[int(share * (len(sorted_seconds) - 1))], 1) if sorted_seconds else None


class ChannelLevel(TypedDict):
    """One level of the channels search, as the report's JSON has it (latencies in ms, None without any)."""

    channels: int
    finals: int
    p50_ms: float | None
    p95_ms: float | None
    max_ms: float | None
    partials_sent: int
    partials_served: int
    partial_p95_ms: float | None
    mean_batch: float
    audio_s_per_s: float
    gpu_reserved_mib: int


async def simulate(
    runner: WhisperRunner,
    model: Model,
    clips: list[Clip],
    partials: dict[tuple[int, int], np.ndarray],
    channels: int,
    seconds: float,
    max_batch: int,
) -> ChannelLevel:
    """N channels speak clips in real time with 0.5-2 s pauses; every second of speech submits a
    partial of the open segment (not awaited: speech goes on), each end of speech a final.

    A payload is (clip, seconds spoken) for a partial and (clip, 0) for the final's whole clip.
    """

    def run_batch(payloads: Sequence[tuple[int, int]]) -> list[list[int]]:
        mels = [partials[payload] if payload[1] else clips[payload[0]].mel for payload in payloads]
        seconds = [float(spoken) if spoken else clips[index].seconds for index, spoken in payloads]
        languages = model.languages([clips[index] for index, _ in payloads])
        return [window.tokens for window in runner.decode_features(np.stack(mels), seconds, languages)]

    scheduler: BatchScheduler[tuple[int, int], list[int]] = BatchScheduler(
        run_batch, SchedulerSettings(max_batch=max_batch, max_wait_s=0.02, max_queue=100_000, final_deadline_s=FINAL_P95_LIMIT_S)
    )
    await scheduler.start()
    latencies: list[float] = []
    partial_latencies: list[float] = []
    partials_sent = [0]
    audio_done = [0.0]
    end = time.monotonic() + seconds
    rng = random.Random(channels)
    pending: set[asyncio.Task[None]] = set()

    async def partial(number: int, clip_index: int, spoken: int) -> None:
        submitted = time.monotonic()
        try:
            await scheduler.submit(number, (clip_index, spoken), Priority.PARTIAL)
            partial_latencies.append(time.monotonic() - submitted)
        except Shed:
            pass  # superseded by the channel's next partial, or shed to protect the finals

    async def channel(number: int) -> None:
        await asyncio.sleep(rng.uniform(0, 3.0))  # calls do not all start speaking together
        clip_index = rng.randrange(len(clips))
        while time.monotonic() < end:
            for spoken in range(PARTIAL_EVERY_S, int(clips[clip_index].seconds) + 1, PARTIAL_EVERY_S):
                await asyncio.sleep(PARTIAL_EVERY_S)  # the caller speaks
                task = asyncio.create_task(partial(number, clip_index, spoken))
                pending.add(task)
                task.add_done_callback(pending.discard)
                partials_sent[0] += 1
            await asyncio.sleep(clips[clip_index].seconds % PARTIAL_EVERY_S)  # the rest of the utterance
            submitted = time.monotonic()
            await scheduler.submit((number, clip_index), (clip_index, 0), Priority.FINAL)
            latencies.append(time.monotonic() - submitted)
            audio_done[0] += clips[clip_index].seconds
            await asyncio.sleep(rng.uniform(0.5, 2.0))  # a pause before the next utterance
            clip_index = (clip_index + 1) % len(clips)

    started = time.monotonic()
    await asyncio.gather(*(channel(n) for n in range(channels)))
    elapsed = time.monotonic() - started
    await asyncio.gather(*pending)
    await scheduler.stop()
    latencies.sort()
    partial_latencies.sort()
    return {
        "channels": channels,
        "finals": len(latencies),
        "p50_ms": percentile_ms(latencies, 0.5),
        "p95_ms": percentile_ms(latencies, 0.95),
        "max_ms": percentile_ms(latencies, 1.0),
        "partials_sent": partials_sent[0],
        "partials_served": len(partial_latencies),
        "partial_p95_ms": percentile_ms(partial_latencies, 0.95),
        "mean_batch": round(scheduler.stats.items / max(scheduler.stats.batches, 1), 1),
        "audio_s_per_s": round(audio_done[0] / elapsed, 1),
        "gpu_reserved_mib": round(torch.cuda.max_memory_reserved() / 2**20),
    }


def channels_search(model: Model, clips: list[Clip], levels: Sequence[int], seconds: float) -> dict[str, object]:
    runner = model.ours(torch.float16)
    partials = partial_mels(clips)
    torch.cuda.synchronize()
    engine_mib = torch.cuda.memory_reserved() / 2**20
    results = []
    for level in levels:
        torch.cuda.reset_peak_memory_stats()
        result = asyncio.run(simulate(runner, model, clips, partials, level, seconds, runner.compute.max_batch))
        print(json.dumps(result), flush=True)
        results.append(result)
        if result["p95_ms"] is None or result["p95_ms"] > 1000 * FINAL_P95_LIMIT_S:
            break
    passing = [r for r in results if r["p95_ms"] is not None and r["p95_ms"] <= 1000 * FINAL_P95_LIMIT_S]
    best = max(passing, key=lambda r: r["channels"]) if passing else None
    per_channel = (best["gpu_reserved_mib"] - engine_mib) / best["channels"] if best else None
    return {
        "model": model.name,
        "engine_mib": round(engine_mib),
        "levels": results,
        "max_channels_p95_le_400ms": best["channels"] if best else 0,
        "extra_mib_per_channel": round(per_channel, 3) if per_channel is not None else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("parts", nargs="+", choices=["parity", "offline", "channels"])
    parser.add_argument("--speech", type=Path, required=True)
    parser.add_argument("--engines-dir", type=Path, default=Path("engines"))
    parser.add_argument("--models", nargs="+", default=["whisper-tiny.en", "whisper-base"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8, 32, 64, 128])
    parser.add_argument("--channel-model", default="whisper-base")
    parser.add_argument("--channels", nargs="+", type=int, default=[500, 1000, 1500, 2000, 2500, 3000, 4000])
    parser.add_argument("--channel-seconds", type=float, default=20.0)
    parser.add_argument("--offline-budget-s", type=float, default=90.0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    report: dict[str, object] = {"device": torch.cuda.get_device_name(), "date": time.strftime("%Y-%m-%d"), "argv": sys.argv}
    for name in args.models:
        model = Model(name, args.engines_dir)
        clips = load_clips(args.speech, english_only=not model.tokenizer.multilingual)
        if "parity" in args.parts:
            report[f"parity/{name}"] = parity(model, clips)
            print(json.dumps(report[f"parity/{name}"]), flush=True)
        if "offline" in args.parts:
            report[f"offline/{name}"] = offline(model, clips, args.batches, args.offline_budget_s)
        if "channels" in args.parts and name == args.channel_model:
            report[f"channels/{name}"] = channels_search(model, clips, args.channels, args.channel_seconds)
        torch.cuda.empty_cache()
        args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
