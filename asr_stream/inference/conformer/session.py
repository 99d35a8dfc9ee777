"""TEMPORARY: a direct ONNX Runtime session, until asr_stream/inference/engine.py (the backend-neutral
Engine protocol another engineer is writing) lands; then the importer and runner switch to it and
this module is deleted.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime


class OnnxGraph:
    """One CPU session whose first output is the CTC log-probs."""

    def __init__(self, path: Path, threads: int = 1) -> None:
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        # Spinning threads of several sessions starve each other on few cores (docs: NOTES, ONNX Runtime).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        return self._session.run(None, feeds)[0]


def open_graph(path: Path) -> OnnxGraph:
    return OnnxGraph(path)
