"""The Whisper graphs ONNX Runtime serves on the CPU: the exported ones with int8 weights where that pays.

Decoder (`write_cpu_decoder`): at the batch sizes of live calls a decoder step is memory-bound on
its weights, above all the projection of the last hidden state onto the vocabulary ([n_text_state,
n_vocab]: 80 MB for tiny.en, 106 MB for base in fp32), read whole at every step. Every MatMul with
a constant weight becomes weight-only int8 (`MatMulNBits`, 8 bits, a scale per block of 32 inputs,
activations quantized per row and block inside the kernel): a tiny.en step on one thread at one /
two rows takes 1.96-1.99 / 2.50-2.57 ms against 2.77 / 3.23-3.25 ms with the earlier dynamically
quantized projection, the same at four rows and 5-10 % more at eight (live CPU batches average
1.1-1.2 rows); and, unlike dynamic quantization, whose one activation scale per call spans every
row, a row's logits never depend on the other rows of its batch (a caller's final must not depend
on who else is talking; docs/benchmarks.md, "finals that do not depend on their batch").

Encoder (`write_cpu_encoder`): every MatMul in int8 (per-channel weights, activations quantized
at run time, one scale per call: so ONNX Runtime encodes one window per call, `EngineCompute`). The
encoder is compute-bound (hundreds of positions per window), which is what int8 kernels speed up
(weight-only int8 was no faster than fp32 here): on the AMD EPYC (AVX-512 VNNI) CI-class machine a 5 s window of tiny.en took
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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from onnxruntime.quantization import QuantType, quantize_dynamic

_PROJECTION_WEIGHT = "vocabulary_projection"


#: Weight-only int8 for the CPU decoder: blocks of 32 inputs per scale; accuracy level 4 computes in
#: int8 with activations quantized per row and block (a row's result is its own: measured bit-identical
#: alone and in batches of 2-16, where blocks of 128 were not).
NBITS, NBITS_BLOCK, NBITS_ACCURACY_LEVEL = 8, 32, 4


def write_cpu_decoder(decoder: Path, target: Path) -> Path:
    """Write `decoder` (an exported fp32 Whisper decoder graph) with weight-only int8 MatMuls to `target`."""
    model = onnx.load(str(decoder))
    _untie_projection(model)
    with _quiet_root_logger():
        # Imported here: importing it configures the root logger (logging.basicConfig), which every
        # reader of EXPORT_VERSION would otherwise get; _quiet_root_logger puts the handlers back.
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        quantizer = MatMulNBitsQuantizer(model, bits=NBITS, block_size=NBITS_BLOCK, is_symmetric=True, accuracy_level=NBITS_ACCURACY_LEVEL)
        quantizer.process()
    quantizer.model.save_model_to_file(str(target))
    return target


def write_cpu_encoder(encoder: Path, target: Path) -> Path:
    """Write `encoder` (an exported fp32 Whisper encoder graph) with every MatMul in int8 to `target`."""
    _quantize(encoder, target, op_types_to_quantize=["MatMul"])
    return target


def _quantize(graph: Path, target: Path, **which: list[str]) -> None:
    """Dynamic int8 quantization, per-channel weights, of the nodes `which` selects."""
    with _quiet_root_logger():
        quantize_dynamic(graph, target, per_channel=True, weight_type=QuantType.QInt8, **which)


@contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """ONNX Runtime's quantizers log advice and every skipped node at the root logger's level, and one
    of them adds a handler to it on import: errors only meanwhile, and the root's handlers as they were."""
    root = logging.getLogger()
    level, handlers = root.level, root.handlers[:]
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)
        root.handlers[:] = handlers


def _untie_projection(model: onnx.ModelProto) -> None:
    """Give the logits MatMul a weight initializer of its own.

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
