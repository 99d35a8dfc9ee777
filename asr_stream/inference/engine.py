"""The engine protocol: what every inference backend (ONNX Runtime, TensorRT, PyTorch) provides.

Model runners (Whisper, later Conformer-CTC) are written against this and never import a backend,
so a backend is one file and swapping it is a configuration choice. The protocol is deliberately
small: one loaded graph, named tensors in and out as numpy arrays, and enough self-description
(input/output specs, `max_batch`, `describe()`) for the scheduler, logs and metrics.

Backends that keep tensors on a device may add faster paths of their own; a runner only relies on
what is declared here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol, Self, runtime_checkable

import numpy as np

from asr_stream.errors import OperatorError

Precision = Literal["fp32", "fp16", "int8"]


class BackendError(OperatorError):
    """A backend cannot serve here: unknown name, a library or GPU it needs is missing, or a model family it does not run."""


@dataclass(frozen=True)
class TensorSpec:
    """One named graph input or output. A `str` in `shape` names a dynamic dim (e.g. "batch")."""

    name: str
    dtype: np.dtype
    shape: tuple[int | str, ...]


@dataclass(frozen=True)
class ShapeRange:
    """TensorRT-style min/opt/max shapes of one input."""

    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]


@dataclass(frozen=True)
class Profile:
    """Shapes a loaded engine must accept: the single source for builders and the scheduler's buckets.

    Backends with no build step (ONNX Runtime) only take `max_batch` from it.
    """

    name: str
    max_batch: int
    shapes: Mapping[str, ShapeRange] = field(default_factory=dict)


@runtime_checkable
class Engine(Protocol):
    """One loaded graph, ready to run. Implementations must be safe to call from one thread at a time."""

    backend: str  # e.g. "onnxruntime", "tensorrt"

    @classmethod
    def load(cls, graph: Path, profile: Profile | None = None, precision: Precision = "fp32") -> Self:
        """Load (or build, then load) `graph` for `profile` at `precision`; raise ValueError if unsupported."""
        ...

    @property
    def inputs(self) -> tuple[TensorSpec, ...]: ...

    @property
    def outputs(self) -> tuple[TensorSpec, ...]: ...

    @property
    def max_batch(self) -> int:
        """The largest batch `run` accepts; the scheduler never sends more."""
        ...

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once: every input by name -> every output by name (host numpy arrays)."""
        ...

    def describe(self) -> dict[str, object]:
        """Backend, graph, precision, profile, threads or device: for logs and metrics labels."""
        ...
