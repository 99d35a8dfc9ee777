"""Engine cache without TensorRT: keys, manifests, list/use/rollback, refusals and precision flags."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile

from asr_stream.audio.wavfile import load_audio
from asr_stream.errors import OperatorError
from asr_stream.inference.models import MANIFEST, load_prepared
from asr_stream.inference.onnxruntime_backend import OnnxRuntimeEngine
from asr_stream.inference.profiles import ProfileError, load_profile
from asr_stream.inference.tensorrt.build import fp16_graph, precision_flags
from asr_stream.inference.tensorrt.cache import (
    BuildRecord,
    EngineCacheError,
    EngineMismatch,
    GraphBuild,
    Platform,
    active_build,
    build_key,
    check_compatible,
    format_builds,
    list_builds,
    trt_directory,
    use_build,
)
from asr_stream.inference.tensorrt.calibration import CalibrationBatches, whisper_calibration
from asr_stream.inference.tensorrt.commands import build_command, list_command, use_command
from asr_stream.inference.whisper.engine_compute import EngineCompute
from asr_stream.inference.whisper.runner import WhisperRunner

PROFILE = Path(__file__).resolve().parents[1] / "profiles" / "whisper-tiny.en.yaml"
H100 = Platform("tensorrt", "10.13.0", "NVIDIA H100 80GB HBM3", "9.0")
DIGESTS = {"encoder.onnx": "a" * 64, "decoder.onnx": "b" * 64}


def record_for(version: int, profile, platform: Platform = H100, digests: dict[str, str] = DIGESTS) -> BuildRecord:
    key = build_key("whisper-tiny.en", profile, digests, platform)
    graphs = {
        graph: GraphBuild(digest, profile.digest(graph), graph.replace(".onnx", ".plan"), 1 << 20, 1.5) for graph, digest in digests.items()
    }
    return BuildRecord(
        version, key, "whisper-tiny.en", profile.variant, profile.precision, str(PROFILE), platform, graphs, "2026-11-22T05:00:00+00:00"
    )


def store(engines_dir: Path, record: BuildRecord) -> None:
    directory = trt_directory(engines_dir, record.model) / record.key
    directory.mkdir(parents=True)
    (directory / "manifest.json").write_text(record.to_json())


def test_key_depends_on_every_input() -> None:
    latency = load_profile(PROFILE, "latency")
    key = build_key("whisper-tiny.en", latency, DIGESTS, H100)
    assert key == build_key("whisper-tiny.en", load_profile(PROFILE, "latency"), dict(DIGESTS), H100)
    others = [
        build_key("whisper-base", latency, DIGESTS, H100),
        build_key("whisper-tiny.en", load_profile(PROFILE, "throughput"), DIGESTS, H100),
        build_key("whisper-tiny.en", load_profile(PROFILE, "latency", "fp32"), DIGESTS, H100),
        build_key("whisper-tiny.en", latency, {**DIGESTS, "decoder.onnx": "c" * 64}, H100),
        build_key("whisper-tiny.en", latency, DIGESTS, Platform("tensorrt", "10.14.0", H100.gpu_name, "9.0")),
        build_key("whisper-tiny.en", latency, DIGESTS, Platform("tensorrt", "10.13.0", "NVIDIA L4", "8.9")),
    ]
    assert len({key, *others}) == 1 + len(others)


def test_manifest_round_trip() -> None:
    record = record_for(3, load_profile(PROFILE, "latency"))
    assert BuildRecord.from_json(record.to_json()) == record


def test_list_use_and_rollback(tmp_path: Path) -> None:
    first, second = record_for(1, load_profile(PROFILE, "latency")), record_for(2, load_profile(PROFILE, "throughput"))
    store(tmp_path, first)
    store(tmp_path, second)
    assert [record.version for record in list_builds(tmp_path, "whisper-tiny.en")] == [1, 2]
    assert active_build(tmp_path, "whisper-tiny.en") is None
    assert use_build(tmp_path, "whisper-tiny.en", "2") == second
    assert active_build(tmp_path, "whisper-tiny.en") == second
    assert use_build(tmp_path, "whisper-tiny.en", first.key[:6]) == first  # rollback by key prefix
    assert active_build(tmp_path, "whisper-tiny.en") == first
    listing = format_builds(list_builds(tmp_path, "whisper-tiny.en"), first).splitlines()
    assert listing[0].startswith("*   1") and listing[1].startswith("    2")
    with pytest.raises(EngineCacheError, match=re.escape("build '7' of whisper-tiny.en does not exist; builds: 1 ")):
        use_build(tmp_path, "whisper-tiny.en", "7")


def test_compatible_build_passes() -> None:
    profile = load_profile(PROFILE, "latency")
    check_compatible(record_for(1, profile), profile, DIGESTS, H100)


@pytest.mark.parametrize(
    ("served_platform", "served_digests", "precision", "reason"),
    [
        (Platform("tensorrt", "10.14.0", H100.gpu_name, "9.0"), DIGESTS, None, "built with tensorrt 10.13.0, running tensorrt 10.14.0"),
        (
            Platform("tensorrt", "10.13.0", "NVIDIA L4", "8.9"),
            DIGESTS,
            None,
            r"built on NVIDIA H100 80GB HBM3 \(compute 9.0\), this GPU is NVIDIA L4 \(compute 8.9\)",
        ),
        (H100, {**DIGESTS, "encoder.onnx": "d" * 64}, None, r"encoder.onnx was re-exported since \(sha256 aaaaaaaaaaaa -> dddddddddddd\)"),
        (H100, DIGESTS, "fp32", "built in fp16, fp32 requested"),
    ],
)
def test_mismatch_says_why_and_how_to_rebuild(served_platform: Platform, served_digests: dict, precision, reason: str) -> None:
    record = record_for(4, load_profile(PROFILE, "latency"))
    with pytest.raises(EngineMismatch, match=reason) as raised:
        check_compatible(record, load_profile(PROFILE, "latency", precision), served_digests, served_platform)
    assert "rebuild with `asr-stream engines build whisper-tiny.en --profile" in str(raised.value)


def test_precision_flags_follow_what_the_library_offers() -> None:
    full = SimpleNamespace(__name__="tensorrt", __version__="10.13.0", BuilderFlag=SimpleNamespace(FP16="fp16-flag", INT8="int8-flag"))
    rtx = SimpleNamespace(__name__="tensorrt_rtx", __version__="1.7.1.116", BuilderFlag=SimpleNamespace(TF32="tf32"))
    assert precision_flags(full, "fp32") == [] and precision_flags(rtx, "fp32") == []
    assert precision_flags(full, "fp16") == ["fp16-flag"]
    assert precision_flags(full, "int8") == ["int8-flag", "fp16-flag"]
    assert precision_flags(rtx, "fp16") == []  # strongly typed: the fp16 graph carries the precision
    with pytest.raises(
        EngineCacheError, match=re.escape("tensorrt_rtx 1.7.1.116 builds strongly typed networks only: int8 needs Q/DQ nodes")
    ):
        precision_flags(rtx, "int8")


def test_retyped_builds_have_their_own_key() -> None:
    """An fp16 build from a retyped graph must not share a key with one from the flag (or an older retyping)."""
    profile = load_profile(PROFILE, "latency")
    assert build_key("whisper-tiny.en", profile, DIGESTS, H100) != build_key("whisper-tiny.en", profile, DIGESTS, H100, retyped=True)


def test_calibration_batches_and_cache_round_trip(tmp_path: Path) -> None:
    feeds = iter([{"mel": np.ones((2, 80, 3000), np.float32)}])
    batches = CalibrationBatches(feeds, tmp_path / "calibration" / "abc.cache")
    assert batches.read_cache() is None
    assert batches.next_batch()["mel"].shape == (2, 80, 3000)
    assert batches.next_batch() is None
    batches.write_cache(b"TRT-table")
    assert batches.read_cache() == b"TRT-table"


def test_fp16_graph_is_fp16_typed_and_close_to_fp32(engines_dir: Path, tmp_path: Path) -> None:
    """A strongly typed builder runs each layer in the graph's types: no fp32 tensor may be left."""
    import onnx
    import onnxruntime

    source = engines_dir / "whisper-tiny.en" / "encoder.onnx"
    typed = onnx.load(str(fp16_graph(source, tmp_path / "encoder.fp16.onnx")))
    values = [*typed.graph.input, *typed.graph.output, *typed.graph.value_info]
    float_types = {value.type.tensor_type.elem_type for value in values} | {tensor.data_type for tensor in typed.graph.initializer}
    assert onnx.TensorProto.FLOAT16 in float_types and onnx.TensorProto.FLOAT not in float_types
    mel = np.random.default_rng(0).uniform(-1.0, 1.5, (1, 80, 3000)).astype(np.float32)
    references = onnxruntime.InferenceSession(str(source)).run(None, {"mel": mel})
    halves = onnxruntime.InferenceSession(str(tmp_path / "encoder.fp16.onnx")).run(None, {"mel": mel.astype(np.float16)})
    assert len(halves) == len(references) == 8  # tiny.en's 4 decoder layers' cross keys and values
    for half, reference in zip(halves, references):
        assert half.dtype == np.float16
        assert np.linalg.norm(half.astype(np.float32) - reference) / np.linalg.norm(reference) < 5e-3


def test_whisper_calibration_feeds_what_the_runner_feeds(engines_dir: Path, tmp_path: Path, english_clips: list[dict]) -> None:
    """INT8 calibration batches are the served encoder inputs (each channel one utterance) and the decoder's first step."""
    mono = [row["wav"] for row in english_clips[:2]]
    left, right = (soundfile.read(row["wav"], dtype="float32")[0] for row in english_clips[2:4])
    stereo = np.zeros((max(len(left), len(right)), 2), np.float32)
    stereo[: len(left), 0], stereo[: len(right), 1] = left, right
    soundfile.write(tmp_path / "call.wav", stereo, 16000, subtype="FLOAT")
    wavs = [*mono, tmp_path / "call.wav"]
    batches = whisper_calibration(engines_dir, "whisper-tiny.en", wavs, batch=3)

    # What the runner itself feeds its encoder when it transcribes the same four utterances, three at a time.
    served = WhisperRunner.from_prepared(load_prepared("whisper-tiny.en", engines_dir), OnnxRuntimeEngine.load)
    assert isinstance(served.compute, EngineCompute)
    encoder_inputs: list[np.ndarray] = []  # per batch (ONNX Runtime then runs it one window per call; TensorRT whole)
    encode, run = served.compute.encode, served.compute.encoder.run
    served.compute.encode = lambda mel: encoder_inputs.append(mel) or encode(mel)  # type: ignore[method-assign]
    audios = [channel for path in wavs for channel in load_audio(path)[0]]
    assert len(audios) == 4
    for start in (0, 3):
        served.transcribe_batch(audios[start : start + 3])

    encoder = batches["encoder.onnx"]
    mels = [encoder.next_batch()["mel"], encoder.next_batch()["mel"]]
    assert encoder.next_batch() is None
    assert [mel.shape for mel in mels] == [(3, 80, 3000), (1, 80, 3000)]
    for mel, fed in zip(mels, encoder_inputs, strict=True):
        np.testing.assert_array_equal(mel, fed)
    decoder = batches["decoder.onnx"]
    for mel in mels:
        feeds = decoder.next_batch()
        encoded = run({"mel": mel})
        assert set(encoded) == {"cross_k_0", "cross_v_0", "cross_k_1", "cross_v_1", "cross_k_2", "cross_v_2", "cross_k_3", "cross_v_3"}
        for name, tensor in encoded.items():
            np.testing.assert_array_equal(feeds[name], tensor)
        rows = len(mel)
        assert feeds["tokens"].tolist() == [[served.tokenizer.sot]] * rows and feeds["offset"].tolist() == [0] * rows
        assert feeds["self_kv"].shape == (4, 2, rows, 6, 1, 64) and not feeds["self_kv"].any()
    assert decoder.next_batch() is None
    assert encoder.cache_file.parent == decoder.cache_file.parent == trt_directory(engines_dir, "whisper-tiny.en") / "calibration"
    assert encoder.cache_file != decoder.cache_file


def test_engines_commands_refuse_operator_mistakes_in_one_line(engines_dir: Path, tmp_path: Path, capsys) -> None:
    """`engines build|list|use` mistakes are OperatorErrors (one line, exit 2 from the CLI), found before TensorRT is needed."""
    unprepared = tmp_path / "unprepared"
    (unprepared / "whisper-tiny.en").mkdir(parents=True)
    (unprepared / "whisper-tiny.en" / MANIFEST).write_text((engines_dir / "whisper-tiny.en" / MANIFEST).read_text())  # graphs missing
    not_here = f"model whisper-nope is not in {tmp_path}: run `asr-stream models prepare whisper-nope`"
    cases = [
        (lambda: list_command("whisper-nope", str(tmp_path)), EngineCacheError, not_here),
        (lambda: use_command("whisper-nope", "1", str(tmp_path)), EngineCacheError, not_here),
        (lambda: build_command("whisper-nope", engines_dir=str(tmp_path)), EngineCacheError, not_here),
        (
            lambda: use_command("whisper-tiny.en", "9", str(engines_dir)),
            EngineCacheError,
            "build '9' of whisper-tiny.en does not exist; builds: none",
        ),
        (
            lambda: build_command("whisper-tiny.en", str(PROFILE), "latency", engines_dir=str(unprepared)),
            EngineCacheError,
            f"{unprepared / 'whisper-tiny.en' / 'encoder.onnx'} does not exist: run `asr-stream models prepare whisper-tiny.en` first",
        ),
        (
            lambda: build_command("whisper-tiny.en", str(tmp_path / "none.yaml"), engines_dir=str(engines_dir)),
            ProfileError,
            "cannot read profile",
        ),
    ]
    for command, error_type, message in cases:
        with pytest.raises(error_type) as raised:
            command()
        assert isinstance(raised.value, OperatorError) and message in str(raised.value) and "\n" not in str(raised.value)
    assert capsys.readouterr().out == ""
    assert list_command("whisper-tiny.en", str(engines_dir)) == 0
    assert capsys.readouterr().out == "no TensorRT builds\n"
