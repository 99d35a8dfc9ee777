"""An ONNX Runtime engine that times each of its runs: where a benchmark's engine time goes.

A subclass rather than a wrapper, so that it is a whole `Engine` (its `load` opens one) for
`EngineCompute` and the runners built on it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnxruntime as ort

from asr_stream.inference.onnxruntime_backend import OnnxRuntimeEngine


class TimedEngine(OnnxRuntimeEngine):
    """`runs`: the wall time of each run since the last `runs.clear()`."""

    def __init__(self, graph: Path, session: ort.InferenceSession, max_batch: int, threads: int) -> None:
        super().__init__(graph, session, max_batch, threads)
        self.runs: list[float] = []

    @property
    def calls(self) -> int:
        return len(self.runs)

    @property
    def seconds(self) -> float:
        return sum(self.runs)

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        started = time.perf_counter()
        try:
            return super().run(feeds)
        finally:
            self.runs.append(time.perf_counter() - started)
