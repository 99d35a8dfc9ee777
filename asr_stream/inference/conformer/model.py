"""The project's Conformer-CTC in PyTorch, shaped like NeMo's ConformerEncoder + ConvASRDecoder.

Export-only code: serving runs the ONNX graph and never imports this module (nor torch).

NeMo's structure is kept block for block (conv2d "striding" subsampling, macaron feed-forward
halves, Transformer-XL relative-position attention with pos_bias_u/v and rel_shift, GLU +
depthwise conv + BatchNorm + Swish convolution module, x sqrt(d_model) input scaling, 1x1 conv
CTC head with blank last), so the exported graph has NeMo's signature and NeMo's behaviour.

Two deliberate choices for export:
- Every reshape takes its sizes from the runtime tensor (`x.shape`), never from constants, so the
  graph has dynamic batch and time and TensorRT can build a profile over both.
- Padding is masked everywhere information crosses time (between subsampling convs, attention
  keys, depthwise conv input), so a padded batch gives each utterance the outputs it gets alone.
  (NeMo does not mask between its subsampling convs, so there padding can nudge an utterance's
  last frames.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from asr_stream.inference.conformer.frames import subsampled_lengths


@dataclass(frozen=True)
class ConformerConfig:
    """Hyper-parameters; the defaults are a small model for tests, NeMo's "medium" is d_model 256, 18 layers."""

    vocab_size: int  # SentencePiece pieces; the CTC head has vocab_size + 1 outputs, blank last
    n_mels: int = 80
    d_model: int = 64
    n_heads: int = 4
    n_layers: int = 2
    ff_expansion: int = 4
    conv_kernel: int = 31
    subsampling_factor: int = 4
    subsampling_channels: int = 64
    dropout: float = 0.1

    @property
    def subsampling_stages(self) -> int:
        stages = int(math.log2(self.subsampling_factor))
        if 2**stages != self.subsampling_factor or stages < 1:
            raise ValueError(f"subsampling_factor must be a power of two >= 2, got {self.subsampling_factor}")
        return stages


def time_mask(lengths: torch.Tensor, max_length: int | torch.SymInt) -> torch.Tensor:
    """[B, T] True on valid frames."""
    # torch's stubs type arange's bounds as plain numbers; a SymInt (a traced dynamic size) is what export passes.
    return torch.arange(max_length, device=lengths.device)[None, :] < lengths[:, None]  # type: ignore[arg-type]


class ConvSubsampling(nn.Module):
    """NeMo's "striding" subsampling: (Conv2d 3x3 stride 2 + ReLU) x log2(factor), then Linear to d_model."""

    def __init__(self, config: ConformerConfig) -> None:
        super().__init__()
        channels = config.subsampling_channels
        self.convs = nn.ModuleList(
            nn.Conv2d(1 if i == 0 else channels, channels, kernel_size=3, stride=2, padding=1) for i in range(config.subsampling_stages)
        )
        self.out = nn.Linear(channels * subsampled_lengths(config.n_mels, config.subsampling_factor), config.d_model)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """features [B, T, n_mels] -> [B, T', d_model], lengths [B] -> [B]."""
        x = features[:, None]  # [B, 1, T, F]
        for conv in self.convs:
            lengths = subsampled_lengths(lengths, 2)
            x = torch.relu(conv(x))
            x = x * time_mask(lengths, x.shape[2])[:, None, :, None].to(x.dtype)
        batch, channels, frames, freq = x.shape
        return self.out(x.transpose(1, 2).reshape(batch, frames, channels * freq)), lengths


def relative_positions(frames: torch.SymInt | int, d_model: int, device: torch.device) -> torch.Tensor:
    """Sinusoidal encodings [1, 2T-1, d_model] of relative positions T-1 ... -(T-1) (NeMo's RelPositionalEncoding).

    Computed from the runtime length rather than sliced from a table, so the graph has no maximum length.
    The positions are counted in int64 and then cast: a float `Range` node keeps its float32 type
    when the graph is retyped to fp16 for a strongly typed TensorRT(-RTX) build, which then fails.
    """
    positions = torch.arange(frames - 1, -frames, -1, device=device).to(torch.float32)[:, None]  # type: ignore[arg-type]  # SymInt, as in time_mask
    inverse_freq = torch.exp(torch.arange(0, d_model, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    angles = positions * inverse_freq
    return torch.stack([torch.sin(angles), torch.cos(angles)], dim=-1).reshape(1, -1, d_model)


def rel_shift(scores: torch.Tensor) -> torch.Tensor:
    """Turn [B, H, T, 2T-1] scores against positions (T-1 ... -(T-1)) into [B, H, T, T] indexed by i - j.

    Transformer-XL's pad-and-reshape trick (as NeMo's RelPositionMultiHeadAttention.rel_shift),
    which avoids a gather and exports as plain Pad/Reshape/Slice.
    """
    batch, heads, query_len, pos_len = scores.shape
    padded = nn.functional.pad(scores, (1, 0)).reshape(batch, heads, pos_len + 1, query_len)
    return padded[:, :, 1:].reshape(batch, heads, query_len, pos_len)[:, :, :, :query_len]


class RelPositionSelfAttention(nn.Module):
    """Multi-head self-attention with Transformer-XL relative positions (content bias u, position bias v)."""

    def __init__(self, d_model: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.n_heads, self.d_head = n_heads, d_model // n_heads
        self.linear_q = nn.Linear(d_model, d_model)
        self.linear_k = nn.Linear(d_model, d_model)
        self.linear_v = nn.Linear(d_model, d_model)
        self.linear_out = nn.Linear(d_model, d_model)
        self.linear_pos = nn.Linear(d_model, d_model, bias=False)
        self.pos_bias_u = nn.Parameter(torch.zeros(n_heads, self.d_head))
        self.pos_bias_v = nn.Parameter(torch.zeros(n_heads, self.d_head))
        nn.init.xavier_uniform_(self.pos_bias_u)
        nn.init.xavier_uniform_(self.pos_bias_v)
        self.dropout = nn.Dropout(dropout)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T, d_model] -> [B, T, H, d_head], sizes from the runtime shape."""
        return x.reshape(x.shape[0], x.shape[1], self.n_heads, self.d_head)

    def forward(self, x: torch.Tensor, pos_emb: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        """x [B, T, d_model], pos_emb [1, 2T-1, d_model], key_mask [B, T] True on valid frames."""
        batch, frames, d_model = x.shape
        q = self._heads(self.linear_q(x))
        k = self._heads(self.linear_k(x)).transpose(1, 2)
        v = self._heads(self.linear_v(x)).transpose(1, 2)
        p = self.linear_pos(pos_emb).reshape(1, -1, self.n_heads, self.d_head).transpose(1, 2)
        content = torch.matmul((q + self.pos_bias_u).transpose(1, 2), k.transpose(-2, -1))
        position = rel_shift(torch.matmul((q + self.pos_bias_v).transpose(1, 2), p.transpose(-2, -1)))
        scores = (content + position) / math.sqrt(self.d_head)
        scores = scores.masked_fill(~key_mask[:, None, None, :], -10000.0)
        weights = self.dropout(torch.softmax(scores, dim=-1))
        return self.linear_out(torch.matmul(weights, v).transpose(1, 2).reshape(batch, frames, d_model))


class FeedForward(nn.Module):
    def __init__(self, d_model: int, expansion: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(d_model, d_model * expansion), nn.SiLU(), nn.Dropout(dropout), nn.Linear(d_model * expansion, d_model)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ConvolutionModule(nn.Module):
    """Pointwise conv -> GLU -> (mask) depthwise conv -> BatchNorm -> Swish -> pointwise conv."""

    def __init__(self, d_model: int, kernel: int) -> None:
        super().__init__()
        self.pointwise_in = nn.Conv1d(d_model, 2 * d_model, 1)
        self.depthwise = nn.Conv1d(d_model, d_model, kernel, padding=(kernel - 1) // 2, groups=d_model)
        self.norm = nn.BatchNorm1d(d_model)
        self.pointwise_out = nn.Conv1d(d_model, d_model, 1)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """x [B, T, d_model], valid [B, T]."""
        x = nn.functional.glu(self.pointwise_in(x.transpose(1, 2)), dim=1)
        x = x * valid[:, None, :].to(x.dtype)
        x = nn.functional.silu(self.norm(self.depthwise(x)))
        return self.pointwise_out(x).transpose(1, 2)


class ConformerLayer(nn.Module):
    """Macaron layer: x + FF/2, + self-attention, + convolution, + FF/2, LayerNorm (NeMo's ConformerLayer)."""

    def __init__(self, config: ConformerConfig) -> None:
        super().__init__()
        d = config.d_model
        self.norm_ff1, self.ff1 = nn.LayerNorm(d), FeedForward(d, config.ff_expansion, config.dropout)
        self.norm_attn, self.attn = nn.LayerNorm(d), RelPositionSelfAttention(d, config.n_heads, config.dropout)
        self.norm_conv, self.conv = nn.LayerNorm(d), ConvolutionModule(d, config.conv_kernel)
        self.norm_ff2, self.ff2 = nn.LayerNorm(d), FeedForward(d, config.ff_expansion, config.dropout)
        self.norm_out = nn.LayerNorm(d)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, pos_emb: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        x = x + 0.5 * self.dropout(self.ff1(self.norm_ff1(x)))
        x = x + self.dropout(self.attn(self.norm_attn(x), pos_emb, valid))
        x = x + self.dropout(self.conv(self.norm_conv(x), valid))
        x = x + 0.5 * self.dropout(self.ff2(self.norm_ff2(x)))
        return self.norm_out(x)


class ConformerCTC(nn.Module):
    """audio_signal [B, n_mels, T] float32 + length [B] int64 -> CTC log-probs [B, T', vocab_size + 1]."""

    def __init__(self, config: ConformerConfig) -> None:
        super().__init__()
        self.config = config
        self.subsampling = ConvSubsampling(config)
        self.input_dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(ConformerLayer(config) for _ in range(config.n_layers))
        self.ctc_head = nn.Conv1d(config.d_model, config.vocab_size + 1, 1)

    def forward(self, audio_signal: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
        x, lengths = self.subsampling(audio_signal.transpose(1, 2), length)
        x = self.input_dropout(x * math.sqrt(self.config.d_model))
        pos_emb = relative_positions(x.shape[1], self.config.d_model, x.device)
        valid = time_mask(lengths, x.shape[1])
        for layer in self.layers:
            x = layer(x, pos_emb, valid)
        logits = self.ctc_head(x.transpose(1, 2)).transpose(1, 2)
        return torch.log_softmax(logits, dim=-1)
