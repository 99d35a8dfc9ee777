"""The Whisper graphs ONNX Runtime serves on the CPU: the exported ones with int8 weights where that pays.

Decoder (`write_cpu_decoder`): at the batch sizes of live calls a decoder step is memory-bound on
one MatMul, the projection of the last hidden state onto the vocabulary, whose fp32 weights
([n_text_state, n_vocab]: 80 MB for tiny.en, 106 MB for base) are read whole at every step: 43 %
of a CPU step by ONNX Runtime's profiler. Stored in int8 (one scale per vocabulary entry) they are
a quarter of that: a step takes a third less. Only this MatMul: quantizing every MatMul of both
graphs was measured no faster and cost WER (docs/benchmarks.md); the decoder's other MatMuls work on
one token at a time, where a step is bound by per-node overhead rather than arithmetic.

Encoder (`write_cpu_encoder`): every MatMul in int8 (per-channel weights, activations quantized
at run time). The encoder is compute-bound (hundreds of positions per window), which is what int8
kernels speed up: on the AMD EPYC (AVX-512 VNNI) CI-class machine a 5 s window of tiny.en took
59 -> 27 ms on one thread and a 10 s window 123 -> 60 ms (bench/encoder_windows.py); the corpus
WER of the 39 shared English clips' finals did not move (docs/benchmarks.md, "Partials that
scale"). CPUs without VNNI may gain less (that earlier all-MatMul quantization ran on an Intel
Xeon). Every
export writes it; the daemon serves it only for the models where it was measured
(`inference.runners.INT8_ENCODER_MODELS`).

TensorRT and PyTorch keep the fp32 exports (they run them in fp16 on a GPU). Export-time code
(onnx, onnxruntime.quantization); serving only loads the written files.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from onnxruntime.quantization import QuantType, quantize_dynamic

_PROJECTION_WEIGHT = "vocabulary_projection"


def write_cpu_decoder(decoder: Path, target: Path) -> Path:
    """Write `decoder` (an exported fp32 Whisper decoder graph) with an int8 vocabulary projection to `target`."""
    model = onnx.load(str(decoder))
    projection = _untie_projection(model)
    with tempfile.TemporaryDirectory() as scratch:
        untied = Path(scratch) / "decoder.onnx"
        onnx.save(model, str(untied))
        _quantize(untied, target, nodes_to_quantize=[projection])
    return target


def write_cpu_encoder(encoder: Path, target: Path) -> Path:
    """Write `encoder` (an exported fp32 Whisper encoder graph) with every MatMul in int8 to `target`."""
    _quantize(encoder, target, op_types_to_quantize=["MatMul"])
    return target


def _quantize(graph: Path, target: Path, **which: list[str]) -> None:
    """Dynamic int8 quantization, per-channel weights, of the nodes `which` selects."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer advises its pre-processing pass (shape inference) on the root logger
    try:
        quantize_dynamic(graph, target, per_channel=True, weight_type=QuantType.QInt8, **which)
    finally:
        root.setLevel(level)


def _untie_projection(model: onnx.ModelProto) -> str:
    """Give the logits MatMul a weight initializer of its own; returns the MatMul's name.

    The export ties the projection to the token embedding (logits = x @ embedding^T, as Whisper
    does), which ONNX writes as a Transpose of the embedding's initializer; the quantizer needs a
    constant weight, and the embedding's lookup must stay fp32.
    """
    graph = model.graph
    [projection] = [node for node in graph.node if node.op_type == "MatMul" and "logits" in node.output]
    [transpose] = [node for node in graph.node if projection.input[1] in node.output and node.op_type == "Transpose"]
    [embedding] = [tensor for tensor in graph.initializer if tensor.name == transpose.input[0]]
    permutation = next(attribute.ints for attribute in transpose.attribute if attribute.name == "perm")
    weight = np.ascontiguousarray(np.transpose(numpy_helper.to_array(embedding), list(permutation)))
    graph.initializer.append(numpy_helper.from_array(weight, _PROJECTION_WEIGHT))
    projection.input[1] = _PROJECTION_WEIGHT
    if not any(transpose.output[0] in node.input for node in graph.node):
        graph.node.remove(transpose)
    return projection.name
