"""Export the PyTorch Whisper (`model.py`) to the ONNX graphs named in `graphs.py`.

The only module, with `model.py` and `cpu_graphs.py`, that imports torch and onnx: serving never needs them.
torch 2.13's exporter is dynamo-based; dynamic dims are declared with example sizes >= 2 because
`torch.export` pins a dim whose example is 0 or 1.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn
from torch.export import Dim

from asr_stream.inference.onnx_export import export_graph
from asr_stream.inference.whisper import graphs
from asr_stream.inference.whisper.cpu_graphs import write_cpu_decoder, write_cpu_encoder
from asr_stream.inference.whisper.model import Whisper, cross_views

ONNX_OPSET = 18

# The version of the graphs this code writes. Bump it with every change to model.py or this file
# that changes an exported graph (its ops or numerics): `models prepare` records it, so graphs
# exported by older code are not reused. 2: attention through F.scaled_dot_product_attention.
# 3: no stack traces (absolute source paths) in node metadata, so graphs are byte-identical
# whichever checkout exported them. 4: cross-attention K/V one tensor per layer, keys transposed
# (graphs.py), and the CPU's decoder with an int8 vocabulary projection (cpu_graphs.py). 5: the
# CPU's encoder with int8 MatMuls. 6: the CPU's decoder with weight-only int8 MatMuls (MatMulNBits).
EXPORT_VERSION = 6


class EncoderGraph(nn.Module):
    """mel -> every decoder layer's cross-attention keys (transposed) and values, so the decoder never sees raw audio features."""

    def __init__(self, model: Whisper) -> None:
        super().__init__()
        self.model = model

    def forward(self, mel: Tensor) -> tuple[Tensor, ...]:
        return tuple(tensor for layer in cross_views(self.model.decoder.cross_kv(self.model.encoder(mel))) for tensor in layer)


class DecoderGraph(nn.Module):
    """The decoder with its cross-attention inputs flat, in `graphs.cross_names` order."""

    def __init__(self, model: Whisper) -> None:
        super().__init__()
        self.decoder = model.decoder

    def forward(self, tokens: Tensor, offset: Tensor, self_kv: Tensor, *cross: Tensor) -> tuple[Tensor, Tensor]:
        return self.decoder(tokens, offset, self_kv, list(zip(cross[::2], cross[1::2])))


def export_whisper(model: Whisper, out_dir: Path) -> dict[str, Path]:
    """Write encoder.onnx, decoder.onnx and their CPU copies (encoder.cpu.onnx, decoder.cpu.onnx) into `out_dir`; returns graph name -> path."""
    dims = model.dims
    batch = Dim("batch", min=1, max=1024)
    # conv2 has stride 2, so an even frame count keeps T/2 exact; the window is the maximum.
    half_frames = Dim("half_frames", min=1, max=dims.n_audio_ctx)
    new_tokens = Dim("new_tokens", min=1, max=dims.n_text_ctx)
    capacity = Dim("capacity", min=1, max=dims.n_text_ctx)
    audio_ctx = Dim("audio_ctx", min=1, max=dims.n_audio_ctx)
    example_batch, example_frames = 2, dims.n_frames
    kv_shape = (dims.n_text_layer, 2, example_batch, dims.n_text_head)
    cross_names = graphs.cross_names(dims.n_text_layer)
    paths = {name: out_dir / filename for name, filename in graphs.GRAPH_FILES.items()}
    with torch.no_grad():
        mel = torch.zeros(example_batch, dims.n_mels, example_frames)
        export_graph(
            EncoderGraph(model).eval(),
            (mel,),
            paths[graphs.ENCODER],
            input_names=graphs.ENCODER_INPUTS,
            output_names=cross_names,
            dynamic_shapes={"mel": {0: batch, 2: 2 * half_frames}},
            opset_version=ONNX_OPSET,
        )
        head = (example_batch, dims.n_text_head)
        # A tensor of its own per input: the exporter makes one graph input of a tensor passed twice.
        keys_t, values = (*head, dims.head_dim, dims.n_audio_ctx), (*head, dims.n_audio_ctx, dims.head_dim)
        cross = [torch.zeros(keys_t if name.startswith("cross_k") else values) for name in cross_names]
        decoder_args = (
            torch.zeros(example_batch, 3, dtype=torch.int64),
            torch.zeros(example_batch, dtype=torch.int64),
            torch.zeros(*kv_shape, 8, dims.head_dim),
            *cross,
        )
        decoder_dynamic = {
            "tokens": {0: batch, 1: new_tokens},
            "offset": {0: batch},
            "self_kv": {2: batch, 4: capacity},
            "cross": ({0: batch, 3: audio_ctx}, {0: batch, 2: audio_ctx}) * dims.n_text_layer,
        }
        export_graph(
            DecoderGraph(model).eval(),
            decoder_args,
            paths[graphs.DECODER],
            input_names=graphs.decoder_inputs(dims.n_text_layer),
            output_names=graphs.DECODER_OUTPUTS,
            dynamic_shapes=decoder_dynamic,
            opset_version=ONNX_OPSET,
        )
    write_cpu_encoder(paths[graphs.ENCODER], paths[graphs.ENCODER_CPU])
    write_cpu_decoder(paths[graphs.DECODER], paths[graphs.DECODER_CPU])
    return paths
