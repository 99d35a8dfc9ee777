"""Whisper on a CUDA GPU through PyTorch: the backend that runs on the H100 today.

Why it exists: TensorRT-RTX's runtime refuses the H100 (compute capability 9.0) and full TensorRT
cannot be installed there (docs/gpu.md), so GPU serving runs the project's own model definition
(`whisper/model.py`, the one the ONNX graphs are exported from) in PyTorch. It keeps what makes a
GPU engine fast:

- fp16 weights and activations (fp32 for the token-identity check against ONNX Runtime);
- batched greedy decoding where every row advances together, over a preallocated
  self-attention cache of fixed capacity (the same masked-cache contract as the decoder graph);
- one CUDA graph per (batch, frames) bucket of the profile (`profiles/<model>.yaml`) for the
  per-token decoder step, including the cache write, the suppress mask and the argmax, so a step
  is one graph launch instead of hundreds of kernel launches from Python.

Decoding rules match `whisper/decode.py` (suppress_ids every step, suppress_ids_begin on the first
sampled token); the loop-guard fallback (temperature retries) is the runner's job, not this one's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from asr_stream.inference.models import model_source
from asr_stream.inference.profiles import Buckets
from asr_stream.inference.whisper.ct2 import read_model_bin
from asr_stream.inference.whisper.model import Whisper

# openai-whisper's default sample length (n_text_ctx // 2): longer output from one 30 s window is a loop.
DEFAULT_MAX_NEW_TOKENS = 224
# Checking for "every row ended" costs a device sync; doing it every few steps keeps the GPU busy.
DONE_CHECK_INTERVAL = 8


@dataclass
class _BucketState:
    """Static tensors of one (batch, frames) bucket: views into shared storage, captured by its CUDA graph."""

    cross_kv: Tensor  # [L, 2, B, H, frames/2, D]
    self_kv: Tensor  # [L, 2, B, H, capacity, D]
    tokens: Tensor  # [B, 1] the token each row feeds next
    offset: Tensor  # [B] its position (equal across rows: every row advances together)
    step: Tensor  # [1] the output column the next token goes to
    output: Tensor  # [B, max_new_tokens]
    graph: torch.cuda.CUDAGraph | None = None


class TorchWhisper:
    """Batched greedy Whisper transcription of log-mel windows on one device."""

    backend = "torch"

    def __init__(
        self,
        model: Whisper,
        suppress_ids: Sequence[int],
        suppress_ids_begin: Sequence[int],
        eot: int,
        buckets: Buckets,
        device: str = "cuda",
        dtype: torch.dtype = torch.float16,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        cuda_graphs: bool = True,
    ) -> None:
        self.model = model.to(device=device, dtype=dtype).eval()
        self.dims = model.dims
        self.device = torch.device(device)
        self.dtype = dtype
        self.buckets = buckets
        self.eot = eot
        self.max_new_tokens = max_new_tokens
        self.cuda_graphs = cuda_graphs and self.device.type == "cuda"
        vocab = self.dims.n_vocab
        self._suppress = torch.zeros(vocab, device=self.device)
        self._suppress[list(suppress_ids)] = float("-inf")
        self._suppress_begin = self._suppress.clone()
        self._suppress_begin[list(suppress_ids_begin)] = float("-inf")
        self._states: dict[tuple[int, int], _BucketState] = {}
        self._storage: dict[int, tuple[Tensor, Tensor]] = {}
        self._graph_pool = torch.cuda.graph_pool_handle() if self.cuda_graphs else None

    @classmethod
    def from_packages(
        cls, name: str, suppress_ids: Sequence[int], suppress_ids_begin: Sequence[int], eot: int, buckets: Buckets, **options: object
    ) -> TorchWhisper:
        """Build from the installed weight packages of model `name` (no ONNX export needed)."""
        weights = read_model_bin(packaged.locate() for packaged in model_source(name).weights)
        return cls(Whisper.from_ct2(weights), suppress_ids, suppress_ids_begin, eot, buckets, **options)  # type: ignore[arg-type]

    def _shared_storage(self, frames: int) -> tuple[Tensor, Tensor]:
        """One cross-K/V and one self-K/V buffer at the largest batch; every batch bucket uses a view of it."""
        if frames not in self._storage:
            dims, batch = self.dims, self.buckets.batch[-1]
            head_shape = (dims.n_text_layer, 2, batch, dims.n_text_head)
            capacity = 4 + self.max_new_tokens  # the longest prompt is 4 tokens
            self._storage[frames] = (
                torch.zeros(*head_shape, frames // 2, dims.head_dim, device=self.device, dtype=self.dtype),
                torch.zeros(*head_shape, capacity, dims.head_dim, device=self.device, dtype=self.dtype),
            )
        return self._storage[frames]

    def _state(self, batch: int, frames: int) -> _BucketState:
        key = (batch, frames)
        if key not in self._states:
            cross_kv, self_kv = self._shared_storage(frames)
            state = _BucketState(
                cross_kv=cross_kv[:, :, :batch],
                self_kv=self_kv[:, :, :batch],
                tokens=torch.zeros(batch, 1, dtype=torch.int64, device=self.device),
                offset=torch.zeros(batch, dtype=torch.int64, device=self.device),
                step=torch.zeros(1, dtype=torch.int64, device=self.device),
                output=torch.full((batch, self.max_new_tokens), self.eot, dtype=torch.int64, device=self.device),
            )
            if self.cuda_graphs:
                state.graph = self._capture(state)
            self._states[key] = state
        return self._states[key]

    def _step(self, state: _BucketState) -> None:
        """One decoder step for every row: feed tokens, store their K/V, pick the next token."""
        logits, new_kv = self.model.decoder(state.tokens, state.offset, state.self_kv, state.cross_kv)
        state.self_kv.index_copy_(4, state.offset[:1], new_kv)
        chosen = (logits.float() + self._suppress).argmax(dim=-1, keepdim=True)
        state.tokens.copy_(chosen)
        state.output.index_copy_(1, state.step, chosen)
        state.offset += 1
        state.step += 1

    def _capture(self, state: _BucketState) -> torch.cuda.CUDAGraph:
        """Record `_step` once; warm-up runs on a side stream first, as CUDA graph capture requires."""
        state.offset.fill_(1)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.inference_mode():
            for _ in range(2):
                state.step.zero_()
                self._step(state)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        state.step.zero_()
        with torch.cuda.graph(graph, pool=self._graph_pool), torch.inference_mode():
            self._step(state)
        return graph

    def warm_up(self) -> None:
        """Capture every bucket's graph now, so no request pays for a capture."""
        for batch, frames in self.buckets.pairs():
            self._state(batch, frames)

    @torch.inference_mode()
    def transcribe(self, mel: np.ndarray, prompts: np.ndarray) -> list[list[int]]:
        """Greedy tokens (no prompt, no end token) of log-mel windows mel [n, n_mels, T] after prompts [n, P]."""
        results: list[list[int]] = []
        largest = self.buckets.batch[-1]
        for start in range(0, len(mel), largest):
            results += self._transcribe_bucket(mel[start : start + largest], prompts[start : start + largest])
        return results

    def _transcribe_bucket(self, mel: np.ndarray, prompts: np.ndarray) -> list[list[int]]:
        rows, frames = len(mel), self.buckets.frames_for(mel.shape[2])
        batch = self.buckets.batch_for(rows)
        state = self._state(batch, frames)
        padded = torch.zeros(batch, self.dims.n_mels, frames, device=self.device, dtype=self.dtype)
        padded[:rows, :, : mel.shape[2]] = torch.from_numpy(mel).to(self.device, self.dtype)
        state.cross_kv.copy_(self.model.decoder.cross_kv(self.model.encoder(padded)))
        prompt = torch.zeros(batch, prompts.shape[1], dtype=torch.int64, device=self.device)
        prompt[:] = torch.from_numpy(prompts[:1]).to(self.device)  # padding rows repeat the first prompt
        prompt[:rows] = torch.from_numpy(prompts).to(self.device)
        self._prefill(state, prompt)
        for step in range(1, self.max_new_tokens):
            if state.graph is not None:
                state.graph.replay()
            else:
                self._step(state)
            if step % DONE_CHECK_INTERVAL == 0 and bool((state.output[:rows, : step + 1] == self.eot).any(dim=1).all()):
                break
        output = state.output[:rows].cpu().numpy()
        return [row[: np.argmax(row == self.eot)].tolist() if (row == self.eot).any() else row.tolist() for row in output]

    def _prefill(self, state: _BucketState, prompt: Tensor) -> None:
        """The prompt step (eager: its length differs from the 1-token steps the graph holds)."""
        length = prompt.shape[1]
        state.offset.zero_()
        logits, new_kv = self.model.decoder(prompt, state.offset, state.self_kv, state.cross_kv)
        state.self_kv[:, :, :, :, :length].copy_(new_kv)
        first = (logits.float() + self._suppress_begin).argmax(dim=-1, keepdim=True)
        state.output.fill_(self.eot)
        state.output[:, :1].copy_(first)
        state.tokens.copy_(first)
        state.offset.fill_(length)
        state.step.fill_(1)

    def describe(self) -> dict[str, object]:
        return {
            "backend": self.backend,
            "device": torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu",
            "precision": {torch.float16: "fp16", torch.float32: "fp32"}.get(self.dtype, str(self.dtype)),
            "cuda_graphs": self.cuda_graphs,
            "buckets": self.buckets.pairs(),
            "max_new_tokens": self.max_new_tokens,
        }
