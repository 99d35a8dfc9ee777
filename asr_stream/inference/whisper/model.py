"""The project's own PyTorch Whisper, in the shape of openai-whisper's `model.py`, for export only.

Why our own definition: the ONNX graphs must have an explicit self-attention KV cache in and out
and cross-attention K/V computed once by the encoder graph, and every reshape must come from
runtime shapes (B, T, H, D) so that the TensorRT builder can honour dynamic batch and length
profiles (the legacy exporter baked `nn.MultiheadAttention`'s batch size into a Reshape).

Numerics follow CTranslate2 (the weights' source format and the tests' oracle): scores are scaled
by 1/sqrt(head_dim), GELU is exact, LayerNorm eps is 1e-5. CTranslate2 scales the query alone;
SDPA (and its ONNX decomposition) scales q and k by the square root each: the rounding differs,
and the oracle test checks that no token does.

Cache layout (axis 2 is the batch in both; 2 = key, value):
    cross_kv  [n_text_layer, 2, B, n_text_head, audio frames / 2, head_dim]
    self_kv   [n_text_layer, 2, B, n_text_head, capacity, head_dim], valid up to each row's offset
The decoder takes cross-attention per layer, keys transposed ([B, H, D, S], `cross_views`): the
ONNX graphs pass them so (graphs.py says why), the PyTorch backend as views of its stacked cache.

Why a fixed-capacity cache with a mask rather than a growing one: one decoder graph serves the first
step and every later one, no tensor is ever zero-length (TensorRT rejects empty profiles), shapes
stay static enough for CUDA graphs, and the graph emits only the new K/V, so no backend copies the
whole cache each step. Attending over masked empty slots costs little next to the vocabulary
projection.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from asr_stream.inference.whisper.ct2 import CT2Model
from asr_stream.inference.whisper.dims import WhisperDims


def split_heads(x: Tensor, n_head: int) -> Tensor:
    """[B, T, H*D] -> [B, H, T, D], with every size taken from the runtime shape."""
    batch, length, state = x.shape
    return x.reshape(batch, length, n_head, state // n_head).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    """[B, H, T, D] -> [B, T, H*D]."""
    batch, n_head, length, head_dim = x.shape
    return x.transpose(1, 2).reshape(batch, length, n_head * head_dim)


def attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
    """Scaled dot-product attention on [B, H, T, D] tensors; `mask` is True where attention is forbidden.

    Through F.scaled_dot_product_attention so that CUDA runs a fused kernel (flash / memory-efficient:
    the encoder's 1500x1500 score matrix is never written to memory) where an explicit
    matmul-softmax-matmul made the encoder dominate large batches. SDPA's boolean mask means the
    opposite (True = may attend), hence the inversion. The ONNX exporter (opset 18) decomposes it
    into MatMul/Softmax with the mask as an additive -inf term, which TensorRT fuses itself.
    """
    allowed = None if mask is None else ~mask
    return merge_heads(F.scaled_dot_product_attention(q, k, v, attn_mask=allowed))


class MultiHeadAttention(nn.Module):
    def __init__(self, n_state: int, n_head: int) -> None:
        super().__init__()
        self.n_head = n_head
        self.query = nn.Linear(n_state, n_state)
        self.key = nn.Linear(n_state, n_state)
        self.value = nn.Linear(n_state, n_state)
        self.out = nn.Linear(n_state, n_state)

    def project_kv(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values of `x` as [B, H, T, D] (used for the cache and for cross-attention)."""
        return split_heads(self.key(x), self.n_head), split_heads(self.value(x), self.n_head)

    def forward(self, x: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.out(attend(split_heads(self.query(x), self.n_head), k, v, mask))

    def attend_transposed(self, x: Tensor, keys_t: Tensor, values: Tensor) -> Tensor:
        """Attention over keys given as [B, H, D, S] (cross-attention): q @ keys_t needs no transpose.

        Written out rather than through SDPA, which wants keys as [B, H, S, D]: for a decoder step
        (a query or a few) the score matrix is small, and the ONNX graph keeps no Transpose. The
        query alone is scaled, as CTranslate2 does.
        """
        q = split_heads(self.query(x), self.n_head)
        weights = torch.softmax((q * q.shape[-1] ** -0.5) @ keys_t, dim=-1)
        return self.out(merge_heads(weights @ values))


class ResidualAttentionBlock(nn.Module):
    def __init__(self, n_state: int, n_head: int, cross_attention: bool) -> None:
        super().__init__()
        self.attn = MultiHeadAttention(n_state, n_head)
        self.attn_ln = nn.LayerNorm(n_state)
        self.cross_attn = MultiHeadAttention(n_state, n_head) if cross_attention else None
        self.cross_attn_ln = nn.LayerNorm(n_state) if cross_attention else None
        self.mlp = nn.Sequential(nn.Linear(n_state, 4 * n_state), nn.GELU(), nn.Linear(4 * n_state, n_state))
        self.mlp_ln = nn.LayerNorm(n_state)

    def encode(self, x: Tensor) -> Tensor:
        """Encoder block: full self-attention over the audio frames."""
        h = self.attn_ln(x)
        x = x + self.attn(h, *self.attn.project_kv(h))
        return x + self.mlp(self.mlp_ln(x))

    def decode(
        self, x: Tensor, cross_k_t: Tensor, cross_v: Tensor, cache_k: Tensor, cache_v: Tensor, mask: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Decoder block over new tokens `x`, attending to the cache and themselves; returns x and the new tokens' K/V."""
        h = self.attn_ln(x)
        k, v = self.attn.project_kv(h)
        x = x + self.attn(h, torch.cat([cache_k, k], dim=2), torch.cat([cache_v, v], dim=2), mask)
        return self._cross_and_mlp(x, cross_k_t, cross_v), k, v

    def decode_in_place(
        self, x: Tensor, cross_k_t: Tensor, cross_v: Tensor, cache_k: Tensor, cache_v: Tensor, slots: tuple[Tensor, Tensor], mask: Tensor
    ) -> Tensor:
        """Decoder block over one new token per row: its K/V are written into the cache at `slots`
        (rows, positions) first and attended to there, over the cache's first `mask.shape[-1]` slots.

        Why besides `decode`: the ONNX graphs take the cache as an input and return the new K/V, so
        `decode` attends over a concatenated copy of the whole cache, every layer and step; a GPU
        step that owns its cache need not copy it (the copies were a fifth of a partial batch's
        device time at batch 512 on the H200, docs/benchmarks.md).
        """
        h = self.attn_ln(x)
        k, v = self.attn.project_kv(h)
        rows, positions = slots
        cache_k[rows, :, positions] = k[:, :, 0]
        cache_v[rows, :, positions] = v[:, :, 0]
        visible = mask.shape[-1]
        x = x + self.attn(h, cache_k[:, :, :visible], cache_v[:, :, :visible], mask)
        return self._cross_and_mlp(x, cross_k_t, cross_v)

    def _cross_and_mlp(self, x: Tensor, cross_k_t: Tensor, cross_v: Tensor) -> Tensor:
        assert self.cross_attn is not None and self.cross_attn_ln is not None
        x = x + self.cross_attn.attend_transposed(self.cross_attn_ln(x), cross_k_t, cross_v)
        return x + self.mlp(self.mlp_ln(x))


class AudioEncoder(nn.Module):
    positional_embedding: Tensor  # a buffer (register_buffer): torch types module attributes as Tensor | Module

    def __init__(self, dims: WhisperDims) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(dims.n_mels, dims.n_audio_state, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(dims.n_audio_state, dims.n_audio_state, kernel_size=3, stride=2, padding=1)
        self.register_buffer("positional_embedding", torch.zeros(dims.n_audio_ctx, dims.n_audio_state))
        # An nn.ModuleList (registered as submodules); typed by what it holds, which torch's stubs call Module.
        self.blocks = cast(
            "Iterable[ResidualAttentionBlock]",
            nn.ModuleList(
                ResidualAttentionBlock(dims.n_audio_state, dims.n_audio_head, cross_attention=False) for _ in range(dims.n_audio_layer)
            ),
        )
        self.ln_post = nn.LayerNorm(dims.n_audio_state)

    def forward(self, mel: Tensor) -> Tensor:
        """mel [B, n_mels, T] -> audio features [B, T/2, n_audio_state]; T may be shorter than the window."""
        x = F.gelu(self.conv1(mel))
        x = F.gelu(self.conv2(x)).transpose(1, 2)
        x = x + self.positional_embedding[: x.shape[1]]
        for block in self.blocks:
            x = block.encode(x)
        return self.ln_post(x)


class TextDecoder(nn.Module):
    def __init__(self, dims: WhisperDims) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(dims.n_vocab, dims.n_text_state)
        self.positional_embedding = nn.Parameter(torch.zeros(dims.n_text_ctx, dims.n_text_state))
        self.blocks = cast(  # an nn.ModuleList, as in AudioEncoder
            "Iterable[ResidualAttentionBlock]",
            nn.ModuleList(
                ResidualAttentionBlock(dims.n_text_state, dims.n_text_head, cross_attention=True) for _ in range(dims.n_text_layer)
            ),
        )
        self.ln = nn.LayerNorm(dims.n_text_state)

    def cross_kv(self, audio_features: Tensor) -> Tensor:
        """Every layer's cross-attention K/V, computed once per utterance: [L, 2, B, H, S, D]."""
        layers = []
        for block in self.blocks:
            assert block.cross_attn is not None, "every decoder block has cross-attention"
            layers.append(torch.stack(block.cross_attn.project_kv(audio_features)))
        return torch.stack(layers)

    def forward(
        self, tokens: Tensor, offset: Tensor, self_kv: Tensor, cross: Sequence[tuple[Tensor, Tensor]], last: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """One decoding call over new tokens, with a fixed-capacity self-attention cache.

        tokens [B, N] sit at positions offset[b] .. offset[b]+N-1; self_kv [L, 2, B, H, C, D] holds
        C >= 1 slots of which the first offset[b] are valid (the rest are masked, their content is
        ignored); `cross` is each layer's (keys [B, H, D, S], values [B, H, S, D]). Returns the
        logits [B, V] of each row's last token (or of its token at index last[b], when rows of one
        call end at different lengths) and the new tokens' K/V [L, 2, B, H, N, D], which the caller
        writes into its cache at offset[b].
        """
        n_new, capacity = tokens.shape[1], self_kv.shape[4]
        new_positions = offset.unsqueeze(1) + torch.arange(n_new, device=tokens.device)
        x = self.token_embedding(tokens) + self.positional_embedding[new_positions]
        mask = self._attention_mask(offset, n_new, capacity)
        new_kv = []
        for layer, block in enumerate(self.blocks):
            x, k, v = block.decode(x, *cross[layer], self_kv[layer, 0], self_kv[layer, 1], mask)
            new_kv.append(torch.stack([k, v]))
        picked = x[:, -1] if last is None else x[torch.arange(x.shape[0], device=x.device), last]
        return self._logits(picked), torch.stack(new_kv)

    def step_in_place(
        self, tokens: Tensor, offset: Tensor, self_kv: Tensor, visible: int, cross: Sequence[tuple[Tensor, Tensor]]
    ) -> Tensor:
        """One new token per row (tokens [B, 1]) at position offset[b], which may differ by row: its
        K/V go into `self_kv` [L, 2, B, H, C, D] at slot offset[b] (`decode_in_place`), and it attends
        over the first `visible` slots (every offset[b] < visible) up to its own. Returns logits [B, V].
        """
        rows = torch.arange(tokens.shape[0], device=tokens.device)
        x = self.token_embedding(tokens) + self.positional_embedding[offset].unsqueeze(1)
        mask = (torch.arange(visible, device=offset.device) > offset.unsqueeze(1))[:, None, None, :]
        for layer, block in enumerate(self.blocks):
            x = block.decode_in_place(x, *cross[layer], self_kv[layer, 0], self_kv[layer, 1], (rows, offset), mask)
        return self._logits(x[:, -1])

    def _logits(self, x: Tensor) -> Tensor:
        return self.ln(x) @ self.token_embedding.weight.T

    @staticmethod
    def _attention_mask(offset: Tensor, n_new: int, capacity: int) -> Tensor:
        """[B, 1, N, C+N], True where forbidden: cache slots at or past offset[b], and future new tokens."""
        batch = offset.shape[0]
        stale = torch.arange(capacity, device=offset.device).unsqueeze(0) >= offset.unsqueeze(1)
        new_index = torch.arange(n_new, device=offset.device)
        future = new_index.unsqueeze(0) > new_index.unsqueeze(1)
        return torch.cat(
            [stale[:, None, None, :].expand(batch, 1, n_new, capacity), future[None, None].expand(batch, 1, n_new, n_new)], dim=-1
        )


def cross_views(cross_kv: Tensor) -> list[tuple[Tensor, Tensor]]:
    """A stacked cross-attention cache [L, 2, B, H, S, D] as the decoder's per-layer (keys [B, H, D, S], values): views, no copies."""
    return [(layer[0].transpose(-1, -2), layer[1]) for layer in cross_kv.unbind(0)]


class Whisper(nn.Module):
    def __init__(self, dims: WhisperDims) -> None:
        super().__init__()
        self.dims = dims
        self.encoder = AudioEncoder(dims)
        self.decoder = TextDecoder(dims)

    @classmethod
    def from_ct2(cls, weights: CT2Model) -> Whisper:
        """Build the model from CTranslate2 weights, splitting the fused projections by rows."""
        model = cls(WhisperDims.from_ct2(weights))
        model.load_state_dict(_state_dict_from_ct2(weights, model.dims), strict=True)
        return model.eval()


def _linear(weights: CT2Model, ct2_prefix: str, ours: str) -> dict[str, np.ndarray]:
    return {f"{ours}.weight": weights[f"{ct2_prefix}/weight"], f"{ours}.bias": weights[f"{ct2_prefix}/bias"]}


def _fused_linear(weights: CT2Model, ct2_prefix: str, ours: list[str]) -> dict[str, np.ndarray]:
    """CTranslate2 stores q/k/v (or k/v) projections stacked by rows; split them back."""
    weight_parts = np.split(weights[f"{ct2_prefix}/weight"], len(ours))
    bias_parts = np.split(weights[f"{ct2_prefix}/bias"], len(ours))
    out: dict[str, np.ndarray] = {}
    for name, weight, bias in zip(ours, weight_parts, bias_parts):
        out |= {f"{name}.weight": weight, f"{name}.bias": bias}
    return out


def _layer_norm(weights: CT2Model, ct2_prefix: str, ours: str) -> dict[str, np.ndarray]:
    return {f"{ours}.weight": weights[f"{ct2_prefix}/gamma"], f"{ours}.bias": weights[f"{ct2_prefix}/beta"]}


def _block(weights: CT2Model, ct2: str, ours: str) -> dict[str, np.ndarray]:
    """The parts every block has: self-attention and MLP with their pre-norms."""
    return (
        _layer_norm(weights, f"{ct2}/self_attention/layer_norm", f"{ours}.attn_ln")
        | _fused_linear(weights, f"{ct2}/self_attention/linear_0", [f"{ours}.attn.query", f"{ours}.attn.key", f"{ours}.attn.value"])
        | _linear(weights, f"{ct2}/self_attention/linear_1", f"{ours}.attn.out")
        | _layer_norm(weights, f"{ct2}/ffn/layer_norm", f"{ours}.mlp_ln")
        | _linear(weights, f"{ct2}/ffn/linear_0", f"{ours}.mlp.0")
        | _linear(weights, f"{ct2}/ffn/linear_1", f"{ours}.mlp.2")
    )


def _state_dict_from_ct2(weights: CT2Model, dims: WhisperDims) -> dict[str, Tensor]:
    state: dict[str, np.ndarray] = {
        "encoder.positional_embedding": weights["encoder/position_encodings/encodings"],
        "decoder.token_embedding.weight": weights["decoder/embeddings/weight"],
        "decoder.positional_embedding": weights["decoder/position_encodings/encodings"],
    }
    state |= _linear(weights, "encoder/conv1", "encoder.conv1") | _linear(weights, "encoder/conv2", "encoder.conv2")
    state |= _layer_norm(weights, "encoder/layer_norm", "encoder.ln_post") | _layer_norm(weights, "decoder/layer_norm", "decoder.ln")
    for i in range(dims.n_audio_layer):
        state |= _block(weights, f"encoder/layer_{i}", f"encoder.blocks.{i}")
    for i in range(dims.n_text_layer):
        ct2, ours = f"decoder/layer_{i}", f"decoder.blocks.{i}"
        state |= _block(weights, ct2, ours)
        state |= _layer_norm(weights, f"{ct2}/attention/layer_norm", f"{ours}.cross_attn_ln")
        state |= _linear(weights, f"{ct2}/attention/linear_0", f"{ours}.cross_attn.query")
        state |= _fused_linear(weights, f"{ct2}/attention/linear_1", [f"{ours}.cross_attn.key", f"{ours}.cross_attn.value"])
        state |= _linear(weights, f"{ct2}/attention/linear_2", f"{ours}.cross_attn.out")
    return {name: torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)) for name, array in state.items()}
