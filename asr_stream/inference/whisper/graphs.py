"""Names of the exported Whisper graphs and of their inputs and outputs.

The contract between `export.py` (which writes the graphs, with torch) and `runner.py` (which feeds
them through any engine, without torch). Shapes are documented in `model.py`.
"""

from __future__ import annotations

ENCODER = "encoder"
DECODER = "decoder"
GRAPH_FILES = {ENCODER: "encoder.onnx", DECODER: "decoder.onnx"}

# encoder: mel [B, n_mels, T] float32 -> cross_kv [L, 2, B, H, T/2, D] float32
ENCODER_INPUTS = ("mel",)
ENCODER_OUTPUTS = ("cross_kv",)
# decoder: tokens [B, N] int64, offset [B] int64, self_kv [L, 2, B, H, C, D], cross_kv
#   -> logits [B, V] (last token of each row), new_kv [L, 2, B, H, N, D]
DECODER_INPUTS = ("tokens", "offset", "self_kv", "cross_kv")
DECODER_OUTPUTS = ("logits", "new_kv")
KV_BATCH_AXIS = 2
KV_POSITION_AXIS = 4
