"""ONNX Runtime on CPU: the backend every machine has (and the reference the GPU backends match)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Self

import numpy as np
import onnxruntime as ort

from asr_stream.inference.engine import Precision, Profile, TensorSpec

# Without a profile, a CPU batch larger than this gains no throughput and only adds latency.
DEFAULT_CPU_MAX_BATCH = 16

_ORT_TYPES: dict[str, np.dtype] = {
    "tensor(float)": np.dtype(np.float32),
    "tensor(float16)": np.dtype(np.float16),
    "tensor(int64)": np.dtype(np.int64),
    "tensor(int32)": np.dtype(np.int32),
}


def _spec(arg: ort.NodeArg) -> TensorSpec:
    shape = tuple(dim if isinstance(dim, int) else str(dim) for dim in arg.shape)
    return TensorSpec(name=arg.name, dtype=_ORT_TYPES[arg.type], shape=shape)


class OnnxRuntimeEngine:
    """One InferenceSession per graph on the CPU execution provider."""

    backend = "onnxruntime"

    def __init__(self, graph: Path, session: ort.InferenceSession, max_batch: int, threads: int) -> None:
        self._graph = graph
        self._session = session
        self.max_batch = max_batch
        self._threads = threads
        self.inputs = tuple(_spec(arg) for arg in session.get_inputs())
        self.outputs = tuple(_spec(arg) for arg in session.get_outputs())

    @classmethod
    def load(cls, graph: Path, profile: Profile | None = None, precision: Precision = "fp32", threads: int | None = None) -> Self:
        """Open `graph`; `threads` defaults to every core (the runner calls one session at a time).

        Spinning is off: two sessions in one process on 2 cores ran 3x slower with ONNX Runtime's
        default busy-waiting threads, which steal the cores the other session needs.
        """
        if precision != "fp32":
            raise ValueError(f"onnxruntime CPU backend runs fp32 graphs only, not {precision}")
        threads = threads or os.cpu_count() or 1
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(str(graph), sess_options=options, providers=["CPUExecutionProvider"])
        return cls(Path(graph), session, profile.max_batch if profile else DEFAULT_CPU_MAX_BATCH, threads)

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = self._session.run(None, dict(feeds))
        return {spec.name: value for spec, value in zip(self.outputs, values)}

    def describe(self) -> dict[str, object]:
        return {
            "backend": self.backend,
            "graph": self._graph.name,
            "precision": "fp32",
            "threads": self._threads,
            "max_batch": self.max_batch,
            "provider": "CPUExecutionProvider",
        }
