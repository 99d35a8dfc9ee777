"""A `Stepper` that chooses tokens on the host from a backend's logits, row by row where rules need it.

Every graph backend (ONNX Runtime, TensorRT) steps this way: its logits arrive as host arrays
anyway. The PyTorch backend uses it only for timestamp decoding, whose rules depend on each row's
history (`timestamp_rules.py`); otherwise it chooses on the GPU inside a CUDA graph.

Rows that have chosen the end token are no longer fed: the session may drop them from its batch.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from asr_stream.inference.whisper.decode import DecodingPass
from asr_stream.inference.whisper.timestamp_rules import log_softmax


class DecoderSession(Protocol):
    """A backend's decoder over one encoded batch, stepped by the host."""

    def feed(self, tokens: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Feed tokens [len(rows), N] to `rows` at their next N positions; their logits [len(rows), V] (float32).

        `rows` ascend and are a subset of the previous call's: the rows still decoding.
        """
        ...


def sample_inverse_cdf(scores: np.ndarray, temperature: float, uniforms: np.ndarray) -> np.ndarray:
    """Per row, the first token whose cumulative softmax(scores / temperature) exceeds uniforms[row] x total."""
    probabilities = np.exp(log_softmax(scores.astype(np.float64) / temperature))
    cdf = np.cumsum(probabilities, axis=-1)
    targets = uniforms * cdf[:, -1]
    return np.minimum((cdf <= targets[:, None]).sum(axis=-1), scores.shape[-1] - 1)


class HostStepper:
    """Applies a `DecodingPass`'s rules to host logits; the session does the model compute."""

    def __init__(self, session: DecoderSession, plan: DecodingPass) -> None:
        assert plan.forced is None, "a host-stepped pass takes its forced prefix in the prompt (ragged_prefixes is False)"
        self._session = session
        self._plan = plan
        self._output = np.full((plan.rows, plan.limit), plan.eot, dtype=np.int64)
        self._chosen = 0
        self._active = np.arange(plan.rows)

    def prefill(self) -> None:
        self._choose(self._session.feed(self._plan.prompts, self._active), self._plan.first_mask)

    def step(self) -> None:
        last = self._output[self._active, self._chosen - 1][:, None]
        self._choose(self._session.feed(last, self._active), self._plan.step_mask)

    def done(self) -> bool:
        return len(self._active) == 0

    def tokens(self) -> np.ndarray:
        return self._output[:, : self._chosen]

    def _choose(self, logits: np.ndarray, mask: np.ndarray) -> None:
        plan = self._plan
        scores = logits + mask
        if plan.timestamp_rules is not None:
            for scores_row, row in zip(scores, self._active):
                plan.timestamp_rules.apply(scores_row, self._output[row, : self._chosen].tolist())
        if plan.temperature == 0.0:
            chosen = scores.argmax(axis=-1)
        else:
            assert plan.uniforms is not None
            chosen = sample_inverse_cdf(scores, plan.temperature, plan.uniforms[self._chosen, self._active])
        self._output[self._active, self._chosen] = chosen
        self._chosen += 1
        self._active = self._active[chosen != plan.eot]
