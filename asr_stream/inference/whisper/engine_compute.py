"""Whisper's per-step compute through two `Engine`s (ONNX Runtime, TensorRT): host numpy arrays.

The encoder graph turns log-mel windows into every decoder layer's cross-attention K/V; the decoder
graph takes new tokens, their offset and a fixed-capacity self-attention cache and returns logits
and only the new tokens' K/V (graphs.py, model.py). The cache lives here, on the host: it starts
small and doubles as the output grows (a few distinct cache shapes keep attention cheap), and rows
that have ended are dropped from it so that a batch gets faster as its rows finish.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import numpy as np

from asr_stream.audio.features import log_mel_spectrogram
from asr_stream.inference.engine import Engine
from asr_stream.inference.whisper.decode import DecodingPass
from asr_stream.inference.whisper.graphs import CROSS_BATCH_AXIS, KV_BATCH_AXIS, KV_POSITION_AXIS, cross_names
from asr_stream.inference.whisper.host_stepper import HostStepper

_FIRST_CACHE_CAPACITY = 64
_VALUES_0 = cross_names(1)[1]  # the first layer's cross-attention values [B, H, S, D]: an encoded batch's sizes


@dataclass(frozen=True)
class HostEncoded:
    """Encoded windows as the encoder graph returns them: each decoder layer's cross_k_i [B, H, D, frames/2]
    and cross_v_i [B, H, frames/2, D], by name (graphs.cross_names)."""

    cross: dict[str, np.ndarray]

    @property
    def rows(self) -> int:
        return self.cross[_VALUES_0].shape[CROSS_BATCH_AXIS]

    def take(self, rows: Sequence[int] | np.ndarray) -> HostEncoded:
        return HostEncoded({name: np.take(tensor, rows, axis=CROSS_BATCH_AXIS) for name, tensor in self.cross.items()})


class EngineSession:
    """The decoder graph over one encoded batch, with the self-attention cache on the host."""

    def __init__(self, engine: Engine, encoded: HostEncoded, n_text_ctx: int, first_capacity: int) -> None:
        self._engine = engine
        self._encoded = encoded
        self._n_text_ctx = n_text_ctx
        values = encoded.cross[_VALUES_0]
        self._layers, self._heads, self._head_dim = len(encoded.cross) // 2, values.shape[1], values.shape[3]
        self._rows = np.arange(encoded.rows)
        self._cache = self._empty_cache(first_capacity)
        self._offset = 0

    def _empty_cache(self, capacity: int) -> np.ndarray:
        return np.zeros((self._layers, 2, len(self._rows), self._heads, capacity, self._head_dim), dtype=np.float32)

    def feed(self, tokens: np.ndarray, rows: np.ndarray) -> np.ndarray:
        if len(rows) != len(self._rows):  # rows ended: drop them from the batch
            keep = np.searchsorted(self._rows, rows)
            self._cache = np.take(self._cache, keep, axis=KV_BATCH_AXIS)
            self._encoded = self._encoded.take(keep)
            self._rows = rows
        offset, needed = self._offset, self._offset + tokens.shape[1]
        if needed > self._cache.shape[KV_POSITION_AXIS]:
            # Doubling keeps the few distinct cache shapes an engine sees (and attention cost) small.
            grown = self._empty_cache(min(self._n_text_ctx, max(needed, 2 * self._cache.shape[KV_POSITION_AXIS])))
            grown[..., :offset, :] = self._cache[..., :offset, :]
            self._cache = grown
        feeds = {
            "tokens": tokens,
            "offset": np.full(tokens.shape[0], offset, dtype=np.int64),
            "self_kv": self._cache,
            **self._encoded.cross,
        }
        out = self._engine.run(feeds)
        self._cache[..., offset:needed, :] = out["new_kv"]
        self._offset = needed
        return out["logits"]


class EngineCompute:
    """`WhisperCompute` over an encoder and a decoder Engine; safe to call from several threads at once."""

    ragged_prefixes = False  # a CPU step is dear: one prefill per prefix length beats forcing tokens step by step

    def __init__(self, encoder: Engine, decoder: Engine, n_text_ctx: int) -> None:
        self.encoder = encoder
        self.decoder = decoder
        self.n_text_ctx = n_text_ctx
        self.backend = encoder.backend

    def exclusive(self) -> AbstractContextManager[object]:
        """Nothing to hold: every call keeps its state in its own arrays (Engine sessions are thread-safe)."""
        return nullcontext()

    @property
    def max_batch(self) -> int:
        return self.encoder.max_batch

    def features(self, windows: Sequence[np.ndarray], n_samples: int, n_mels: int) -> np.ndarray:
        return np.stack([log_mel_spectrogram(window, n_mels=n_mels, n_samples=n_samples) for window in windows])

    def encode(self, mel: np.ndarray) -> HostEncoded:
        if self.backend != "onnxruntime" or len(mel) <= 1:  # a GPU engine wants the whole batch in one call
            return HostEncoded(self.encoder.run({"mel": mel}))
        # On the CPU one window per call, for every model: the int8 encoder quantizes its activations
        # with one scale per call, which in a batch made a caller's words depend on the others' audio,
        # and one window per call was no slower (tiny.en, one thread, against batches of 8: 18.6-20.9
        # vs 22.7-25.4 ms per 5 s window; docs/benchmarks.md, "finals that do not depend on their batch").
        per_window = [self.encoder.run({"mel": mel[row : row + 1]}) for row in range(len(mel))]
        return HostEncoded({name: np.concatenate([out[name] for out in per_window], axis=CROSS_BATCH_AXIS) for name in per_window[0]})

    def select(self, encoded: HostEncoded, rows: Sequence[int]) -> HostEncoded:
        return encoded.take(list(rows))

    def stepper(self, encoded: HostEncoded, plan: DecodingPass) -> HostStepper:
        prompt_length = plan.prompts.shape[1]
        # Room for a typical utterance, whatever the pass: not sized to its limit, which is the batch's
        # longest row's, since attention over a cache of another length rounds differently, enough
        # to flip a near tie in a row's words.
        capacity = min(self.n_text_ctx, max(_FIRST_CACHE_CAPACITY, prompt_length))
        return HostStepper(EngineSession(self.decoder, encoded, self.n_text_ctx, capacity), plan)

    def describe(self) -> dict[str, object]:
        return {"encoder": self.encoder.describe(), "decoder": self.decoder.describe()}
