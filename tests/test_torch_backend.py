"""PyTorch backend: token-identical to ONNX Runtime (fp32, CPU here; fp16 + CUDA graphs on a GPU)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the PyTorch backend needs torch (pip install .[export])")

from asr_stream.audio.features import log_mel_spectrogram  # noqa: E402
from asr_stream.audio.wavfile import load_audio  # noqa: E402
from asr_stream.inference.models import ModelError, load_prepared  # noqa: E402
from asr_stream.inference.onnxruntime_backend import OnnxRuntimeEngine  # noqa: E402
from asr_stream.inference.profiles import Buckets  # noqa: E402
from asr_stream.inference.torch_backend import DONE_CHECK_INTERVAL, TorchWhisper  # noqa: E402
from asr_stream.inference.whisper.runner import WhisperRunner  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SPEECH = ROOT.parent / "shared" / "speech"
MODEL = "whisper-tiny.en"


@pytest.fixture(scope="module")
def prepared():
    try:
        return load_prepared(MODEL, ROOT / "engines")
    except ModelError as error:
        pytest.skip(f"needs the exported {MODEL} graphs (make test prepares them): {error}")


def english_clips(count: int) -> list[np.ndarray]:
    """The shortest `count - 1` English clips and the longest one (many tokens: past the done-check interval)."""
    entries = [json.loads(line) for line in (SPEECH / "manifest.jsonl").read_text().splitlines()]
    english = sorted((e for e in entries if e["lang"] == "en"), key=lambda e: e["duration_s"])
    return [load_audio(SPEECH / e["path_wav16k"])[0][0] for e in english[: count - 1] + english[-1:]]


def transcribe_with_torch(
    prepared, runner: WhisperRunner, audios: list[np.ndarray], buckets: Buckets, device: str, dtype
) -> list[list[int]]:
    backend = TorchWhisper.from_packages(
        MODEL, prepared.suppress_ids, prepared.suppress_ids_begin, runner.tokenizer.eot, buckets, device=device, dtype=dtype
    )
    mel = np.stack([log_mel_spectrogram(audio) for audio in audios])
    prompts = np.array([runner.tokenizer.prompt(None, False)] * len(audios), dtype=np.int64)
    return backend.transcribe(mel, prompts)


@pytest.mark.slow
def test_fp32_on_cpu_is_token_identical_to_onnxruntime(prepared) -> None:
    """Three real clips in a batch bucket of 4 (one padding row): padding must not change any row."""
    runner = WhisperRunner.from_prepared(prepared, OnnxRuntimeEngine.load)
    audios = english_clips(3)
    reference = [transcript.tokens for transcript in runner.transcribe_batch(audios)]
    ours = transcribe_with_torch(prepared, runner, audios, Buckets(batch=(1, 4), frames=(3000,)), "cpu", torch.float32)
    assert ours == reference
    assert max(len(tokens) for tokens in ours) > 2 * DONE_CHECK_INTERVAL


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (fp16 with CUDA graphs)")
def test_fp16_with_cuda_graphs_matches_fp32_reference_on_gpu(prepared) -> None:
    runner = WhisperRunner.from_prepared(prepared, OnnxRuntimeEngine.load)
    audios = english_clips(8)
    reference = [transcript.tokens for transcript in runner.transcribe_batch(audios)]
    ours = transcribe_with_torch(prepared, runner, audios, Buckets(batch=(1, 8), frames=(3000,)), "cuda", torch.float16)
    same = sum(a == b for a, b in zip(ours, reference))
    assert same >= len(audios) - 1, (ours, reference)
