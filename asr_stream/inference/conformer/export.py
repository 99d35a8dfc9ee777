"""Export a ConformerCTC to ONNX with NeMo's signature (export-time code: imports torch).

Graph: inputs `audio_signal` [B, n_mels, T] float32 and `length` [B] int64, output `logprobs`
[B, T', V+1]; B and T dynamic, as `nemo ... model.export("model.onnx")` produces, so a graph
exported here and one exported by NeMo are served the same way.
"""

from __future__ import annotations

from pathlib import Path

import torch

from asr_stream.inference.conformer.manifest import FEATURES_INPUT, LENGTH_INPUT, LOG_PROBS_OUTPUT
from asr_stream.inference.conformer.model import ConformerCTC
from asr_stream.inference.onnx_export import export_graph

# Example sizes for tracing: >= 2 so torch.export keeps the dims symbolic (it pins 0 and 1).
_EXAMPLE_BATCH, _EXAMPLE_FRAMES = 2, 203


def export_onnx(model: ConformerCTC, path: Path) -> Path:
    """Write `model` (put in eval mode) to `path` as a single-file ONNX graph with dynamic batch and time."""
    model.eval()
    n_mels = model.config.n_mels
    audio_signal = torch.randn(_EXAMPLE_BATCH, n_mels, _EXAMPLE_FRAMES)
    length = torch.tensor([_EXAMPLE_FRAMES, _EXAMPLE_FRAMES - 50], dtype=torch.int64)
    batch, frames = torch.export.Dim("batch", min=1, max=1024), torch.export.Dim("frames", min=1, max=100_000)
    return export_graph(
        model,
        (audio_signal, length),
        path,
        input_names=[FEATURES_INPUT, LENGTH_INPUT],
        output_names=[LOG_PROBS_OUTPUT],
        dynamic_shapes={"audio_signal": {0: batch, 2: frames}, "length": {0: batch}},  # keyed by forward()'s parameters
    )
