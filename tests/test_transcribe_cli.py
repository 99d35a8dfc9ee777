"""`asr-stream transcribe` as users run it: a subprocess of the installed entry point."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
from conftest import load_mono
from test_conformer_export import exported  # noqa: F401 (fixture: a NeMo-style export + tokenizer)

from asr_stream.devtools.scoring import corpus_wer, normalize
from asr_stream.inference.conformer.importer import add_conformer
from asr_stream.inference.conformer.runner import ConformerRunner
from asr_stream.inference.onnxruntime_backend import OnnxRuntimeEngine

ASR_STREAM = Path(sys.executable).parent / "asr-stream"


def run_cli(*args: str | Path, engines_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(ASR_STREAM), "--engines-dir", str(engines_dir), "transcribe", *map(str, args)], capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def good_clip(english_clips: list[dict]) -> dict:
    return next(row for row in english_clips if row["id"] == "en8k_asterisk_tt-allbusy")


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory: pytest.TempPathFactory, good_clip: dict) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bad")
    files = {
        "missing": folder / "missing.wav",
        "not_audio": folder / "notes.wav",
        "truncated": folder / "truncated.wav",
        "zero_length": folder / "empty.wav",
        "silence": folder / "silence.wav",
    }
    files["not_audio"].write_text("this is not audio\n")
    files["truncated"].write_bytes(good_clip["wav"].read_bytes()[:20_000])
    soundfile.write(files["zero_length"], np.zeros(0, np.int16), 16000, subtype="PCM_16")
    soundfile.write(files["silence"], np.zeros(3 * 16000, np.int16), 16000, subtype="PCM_16")
    return files


@pytest.mark.parametrize("case", ["missing", "not_audio", "truncated", "zero_length", "silence"])
def test_bad_input_is_one_line_and_others_still_transcribed(case, bad_files, good_clip, engines_dir):
    bad = bad_files[case]
    result = run_cli(bad, good_clip["wav"], engines_dir=engines_dir)
    assert result.returncode == 1
    error_lines = result.stderr.strip().splitlines()
    assert len(error_lines) == 1 and str(bad) in error_lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert normalize(result.stdout) == normalize(good_clip["text"])


def test_json_for_a_stereo_call_at_8khz(tmp_path, english_clips, engines_dir):
    """Two parties on two channels of an 8 kHz recording: each channel is transcribed on its own."""
    left, right = (
        next(row for row in english_clips if row["id"] == name) for name in ("en8k_asterisk_tt-allbusy", "en8k_asterisk_queue-youarenext")
    )
    channels = [soundfile.read(row["wav"], dtype="float32")[0][::2] for row in (left, right)]  # 16 kHz -> 8 kHz
    stereo = np.zeros((max(map(len, channels)), 2), np.float32)
    for index, channel in enumerate(channels):
        stereo[: len(channel), index] = channel
    call = tmp_path / "call.wav"
    soundfile.write(call, stereo, 8000, subtype="PCM_16")
    result = run_cli("--json", "--timestamps", call, engines_dir=engines_dir)
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.strip().splitlines()
    record = json.loads(line)
    assert set(record) == {"file", "text", "language", "model", "engine", "segments"}
    assert (record["file"], record["language"], record["model"], record["engine"]) == (str(call), "en", "whisper-tiny.en", "onnxruntime")
    for channel, row in enumerate((left, right)):
        text = " ".join(segment["text"] for segment in record["segments"] if segment["channel"] == channel)
        assert corpus_wer([row["text"]], [text]) < 0.1, text  # tiny.en says "representatives" once
    assert all(0 <= segment["start"] < segment["end"] for segment in record["segments"])


def test_unprepared_model_says_how_to_prepare(tmp_path, good_clip):
    result = run_cli(good_clip["wav"], engines_dir=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        f"asr-stream: model whisper-tiny.en is not prepared in {tmp_path}: run `asr-stream models prepare whisper-tiny.en`"
    ]


def test_english_only_model_refuses_another_language(good_clip, engines_dir):
    result = run_cli("--language", "de", good_clip["wav"], engines_dir=engines_dir)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("backend", "message"),
    [
        ("torch", "backend torch needs a CUDA GPU: torch.cuda.is_available() is False on this machine; use backend onnxruntime"),
        ("cuda", "unknown backend 'cuda'; known: onnxruntime, tensorrt, torch"),
    ],
)
def test_a_backend_that_cannot_run_here_is_one_line_and_exit_2(backend, message, good_clip, engines_dir):
    if backend == "torch" and importlib.util.find_spec("torch") is not None:
        import torch

        if torch.cuda.is_available():
            pytest.skip("checks the refusal on a machine without CUDA")
    result = run_cli("--backend", backend, good_clip["wav"], engines_dir=engines_dir)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [f"asr-stream: {message}"]


@pytest.mark.slow
def test_an_imported_conformer_is_transcribed_offline(exported, tmp_path, good_clip):
    """Any model family the daemon serves, through the same loader: the small random Conformer-CTC (its text is noise)."""
    _, graph, tokenizer, preprocessor = exported
    engines = tmp_path / "engines"
    directory = add_conformer("conformer-random", graph, tokenizer, preprocessor, engines, language="en")
    result = run_cli("--model", "conformer-random", "--json", good_clip["wav"], engines_dir=engines)
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.strip().splitlines()
    record = json.loads(line)
    expected = ConformerRunner.load(directory, OnnxRuntimeEngine.load).transcribe_batch([load_mono(good_clip["wav"])])[0]
    assert expected.words, "the random model emits some words on speech"
    assert (record["model"], record["engine"], record["language"], record["text"]) == (
        "conformer-random",
        "onnxruntime",
        "en",
        expected.text,
    )
    [segment] = record["segments"]
    assert segment == {"start": expected.words[0].start_ms / 1000, "end": expected.words[-1].end_ms / 1000, "text": expected.text.strip()}
    refused = run_cli("--model", "conformer-random", "--language", "de", good_clip["wav"], engines_dir=engines)
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        "asr-stream: model conformer-random transcribes 'en' (declared when it was added), not 'de'"
    ]
