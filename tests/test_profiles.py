"""Shape profiles: the shipped files load and fit their graphs; every kind of mistake is refused by name."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from asr_stream.inference.profiles import Buckets, ProfileError, check_against_graph, load_profile, onnx_input_shapes, variants
from asr_stream.inference.whisper.graphs import cross_names

ROOT = Path(__file__).resolve().parents[1]
PROFILES = ROOT / "profiles"
WHISPER = ["whisper-tiny.en", "whisper-base", "whisper-small"]
# The decoder graph as the exporter declares it: names for dynamic dims, ints for static ones.
TINY_DECODER = {
    "tokens": ["batch", "new_tokens"],
    "offset": ["batch"],
    "self_kv": [4, 2, "batch", 6, "capacity", 64],
    **{f"cross_k_{layer}": ["batch", 6, 64, "audio_ctx"] for layer in range(4)},
    **{f"cross_v_{layer}": ["batch", 6, "audio_ctx", 64] for layer in range(4)},
}


@pytest.mark.parametrize("model", WHISPER)
def test_whisper_profiles_have_both_variants_and_the_live_windows(model: str) -> None:
    path = PROFILES / f"{model}.yaml"
    assert variants(path) == ["throughput", "latency"]
    throughput, latency = (load_profile(path, name) for name in ("throughput", "latency"))
    assert throughput.precision == "fp16" and throughput.max_batch > latency.max_batch
    for profile in (throughput, latency):
        mel = profile.inputs("encoder.onnx")["mel"]
        # From a 5 s partial window to the full 30 s one (runner.LIVE_PARTIAL_WINDOWS_S).
        assert (mel.min[2], mel.max[2]) == (500, 3000)
        decoder = profile.inputs("decoder.onnx")
        layers = decoder["self_kv"].min[0]
        assert {name for name in decoder if name.startswith("cross_")} == set(cross_names(layers))
        assert all(decoder[f"cross_k_{layer}"].min[3] == decoder[f"cross_v_{layer}"].min[2] == 250 for layer in range(layers))
        assert decoder["tokens"].max[1] == 448  # a prompt with a forced prefix, up to the text context
        assert profile.buckets is not None and profile.buckets.batch[-1] == profile.max_batch
    assert throughput.inputs("encoder.onnx")["mel"].opt[0] > latency.inputs("encoder.onnx")["mel"].opt[0]


def test_single_graph_layout_of_the_conformer_profile() -> None:
    profile = load_profile(PROFILES / "conformer-ctc.yaml")
    assert (profile.variant, profile.max_batch, profile.buckets) == ("default", 64, None)
    assert set(profile.inputs("model.onnx")) == {"audio_signal", "length"}


def test_precision_override_and_refusal() -> None:
    path = PROFILES / "whisper-base.yaml"
    assert load_profile(path, "latency", "int8").precision == "int8"
    with pytest.raises(ProfileError, match="precision 'int4' is not one of"):
        load_profile(path, "latency", "int4")  # type: ignore[arg-type]


def test_digest_changes_with_shapes_and_precision() -> None:
    path = PROFILES / "whisper-tiny.en.yaml"
    base = load_profile(path, "latency").digest("decoder.onnx")
    assert base == load_profile(path, "latency").digest("decoder.onnx")
    assert base != load_profile(path, "throughput").digest("decoder.onnx")
    assert base != load_profile(path, "latency", "fp32").digest("decoder.onnx")


def test_the_tiny_decoder_profile_fits_the_declared_graph() -> None:
    check_against_graph(load_profile(PROFILES / "whisper-tiny.en.yaml"), "decoder.onnx", TINY_DECODER)


@pytest.mark.parametrize(
    ("declared", "message"),
    [
        ({**TINY_DECODER, "token_ids": ["batch", "n"]}, "no shapes for the graph input token_ids"),
        ({name: shape for name, shape in TINY_DECODER.items() if name != "offset"}, "input offset is not in the graph"),
        ({**TINY_DECODER, "offset": ["batch", 1]}, "input offset has rank 2 in the graph"),
        ({**TINY_DECODER, "self_kv": [4, 2, "batch", 8, "capacity", 64]}, "self_kv axis 3 is fixed at 8"),
    ],
)
def test_graph_mismatches_are_named(declared: dict, message: str) -> None:
    with pytest.raises(ProfileError, match=message):
        check_against_graph(load_profile(PROFILES / "whisper-tiny.en.yaml"), "decoder.onnx", declared)


def test_exported_graph_shapes_match_the_shipped_profile() -> None:
    graph = ROOT / "engines" / "whisper-tiny.en" / "encoder.onnx"
    if not graph.is_file():
        pytest.skip("needs the exported whisper-tiny.en graphs (make test prepares them)")
    check_against_graph(load_profile(PROFILES / "whisper-tiny.en.yaml"), "encoder.onnx", onnx_input_shapes(graph))


def write(tmp_path: Path, document: dict) -> Path:
    path = tmp_path / "profile.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


SINGLE = {"name": "m", "graph": "model.onnx", "max_batch": 8, "inputs": {"x": {"min": [1, 10], "opt": [4, 20], "max": [8, 30]}}}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"inputs": {"x": {"min": [1, 40], "opt": [4, 20], "max": [8, 30]}}}, "axis 1 needs min <= opt <= max, got 40, 20, 30"),
        ({"inputs": {"x": {"min": [1], "opt": [4, 20], "max": [8, 30]}}}, "min, opt and max have different ranks"),
        ({"inputs": {"x": {"min": [1, 10], "max": [8, 30]}}}, "needs exactly min, opt and max"),
        ({"max_batch": 0}, "max_batch: expected a positive integer"),
        ({"builder_optimization_level": 9}, "builder_optimization_level must be 0..5"),
        ({"buckets": {"batch": [1, 4], "frames": [10]}}, "the largest bucket 4 must equal max_batch 8"),
        ({"buckets": {"batch": [4, 1, 8], "frames": [10]}}, "strictly ascending"),
    ],
)
def test_malformed_profiles_are_refused(tmp_path: Path, change: dict, message: str) -> None:
    with pytest.raises(ProfileError, match=message):
        load_profile(write(tmp_path, {**SINGLE, **change}))


def test_unknown_variant_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="no variant 'fast' \\(it has: throughput, latency\\)"):
        load_profile(PROFILES / "whisper-base.yaml", "fast")
    with pytest.raises(ProfileError, match="cannot read profile"):
        load_profile(tmp_path / "absent.yaml")


def test_buckets_round_up_and_refuse_oversize() -> None:
    buckets = Buckets(batch=(1, 4, 16), frames=(1500, 3000))
    assert [buckets.batch_for(n) for n in (1, 2, 4, 5, 16)] == [1, 4, 4, 16, 16]
    assert buckets.frames_for(1600) == 3000
    assert buckets.pairs()[:3] == [(1, 1500), (4, 1500), (16, 1500)]
    with pytest.raises(ValueError, match="batch 17 exceeds the largest bucket 16"):
        buckets.batch_for(17)
