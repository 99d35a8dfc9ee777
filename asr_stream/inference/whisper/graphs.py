"""Names of the exported Whisper graphs and of their inputs and outputs.

The contract between `export.py` (which writes the graphs, with torch) and `runner.py` (which feeds
them through any engine, without torch). Shapes are documented in `model.py`.

Cross-attention K/V cross the interface one tensor per layer, keys already transposed, because a
decoder step reads them all: a single stacked input made ONNX Runtime split (copy) the whole stack
and transpose every layer's keys at each step, 40 % of a CPU step (docs/benchmarks.md, "Whisper on
CPU"). The encoder's outputs are the decoder's inputs of the same names, batch first.
"""

from __future__ import annotations

ENCODER = "encoder"
DECODER = "decoder"
# The same graphs with int8 weights, for ONNX Runtime on the CPU (cpu_graphs.py): the encoder's
# MatMuls (activations quantized at run time), every weight MatMul of the decoder (weight-only).
ENCODER_CPU = "encoder_cpu"
DECODER_CPU = "decoder_cpu"
GRAPH_FILES = {ENCODER: "encoder.onnx", DECODER: "decoder.onnx", ENCODER_CPU: "encoder.cpu.onnx", DECODER_CPU: "decoder.cpu.onnx"}

# encoder: mel [B, n_mels, T] float32 -> per decoder layer i:
#   cross_k_i [B, H, D, T/2] (keys transposed), cross_v_i [B, H, T/2, D], float32
ENCODER_INPUTS = ("mel",)
# decoder: tokens [B, N] int64, offset [B] int64, self_kv [L, 2, B, H, C, D], every cross_k_i / cross_v_i
#   -> logits [B, V] (last token of each row), new_kv [L, 2, B, H, N, D]
DECODER_STATE_INPUTS = ("tokens", "offset", "self_kv")
DECODER_OUTPUTS = ("logits", "new_kv")
KV_BATCH_AXIS = 2  # of self_kv and new_kv
KV_POSITION_AXIS = 4
CROSS_BATCH_AXIS = 0  # of every cross_k_i / cross_v_i


def cross_names(n_text_layer: int) -> tuple[str, ...]:
    """cross_k_0, cross_v_0, cross_k_1, ...: the encoder's outputs and the decoder's cross-attention inputs."""
    return tuple(f"cross_{kind}_{layer}" for layer in range(n_text_layer) for kind in ("k", "v"))


def decoder_inputs(n_text_layer: int) -> tuple[str, ...]:
    return (*DECODER_STATE_INPUTS, *cross_names(n_text_layer))
