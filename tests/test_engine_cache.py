"""Engine cache without TensorRT: keys, manifests, list/use/rollback, refusals and precision flags."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from asr_stream.inference.profiles import load_profile
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
from asr_stream.inference.tensorrt.calibration import CalibrationBatches

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
    [reference] = onnxruntime.InferenceSession(str(source)).run(None, {"mel": mel})
    [half] = onnxruntime.InferenceSession(str(tmp_path / "encoder.fp16.onnx")).run(None, {"mel": mel.astype(np.float16)})
    assert half.dtype == np.float16
    assert np.linalg.norm(half.astype(np.float32) - reference) / np.linalg.norm(reference) < 5e-3
