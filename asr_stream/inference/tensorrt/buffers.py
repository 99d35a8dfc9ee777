"""CUDA memory for TensorRT through cuda-python: device allocations and pinned host staging buffers.

cuda-python (`cuda.bindings.runtime`), not pycuda: it is NVIDIA's maintained binding, needs no
compilation and holds no global context of its own. It is imported inside each function because it
is an optional dependency of GPU nodes (`pip install asr-stream[gpu]`), absent on CPU machines.
"""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np


def buffer_bytes(shape: tuple[int, ...], dtype: np.dtype) -> int:
    """Bytes of a dense array of `shape` and `dtype` (int64 product: profile maxima overflow int32)."""
    return int(np.prod(shape, dtype=np.int64)) * dtype.itemsize


def check(result: tuple[Any, ...]) -> Any:
    """cuda-python returns (error, values...): raise on error, return the value(s)."""
    from cuda.bindings import runtime as cudart  # optional GPU dependency, see the module docstring

    error, *values = result
    if error != cudart.cudaError_t.cudaSuccess:
        raise RuntimeError(f"CUDA call failed: {error.name}")
    return values[0] if len(values) == 1 else tuple(values)


class DeviceBuffer:
    """A cudaMalloc'd allocation of `nbytes`, freed with the object."""

    def __init__(self, nbytes: int) -> None:
        from cuda.bindings import runtime as cudart  # optional GPU dependency, see the module docstring

        self._cudart = cudart
        self.nbytes = nbytes
        self.pointer = int(check(cudart.cudaMalloc(max(nbytes, 1))))

    def upload(self, array: np.ndarray) -> None:
        """Synchronous host-to-device copy (calibration only; serving copies asynchronously)."""
        check(self._cudart.cudaMemcpy(self.pointer, array.ctypes.data, array.nbytes, self._cudart.cudaMemcpyKind.cudaMemcpyHostToDevice))

    def __del__(self) -> None:
        self._cudart.cudaFree(self.pointer)


class PinnedBuffer:
    """Page-locked host memory of `nbytes`, viewable as a numpy array of any shape and dtype."""

    def __init__(self, nbytes: int) -> None:
        from cuda.bindings import runtime as cudart  # optional GPU dependency, see the module docstring

        self._cudart = cudart
        self.nbytes = nbytes
        self.pointer = int(check(cudart.cudaMallocHost(max(nbytes, 1))))
        self._bytes = np.ctypeslib.as_array((ctypes.c_uint8 * max(nbytes, 1)).from_address(self.pointer))

    def view(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        return self._bytes[: buffer_bytes(shape, dtype)].view(dtype).reshape(shape)

    def __del__(self) -> None:
        self._cudart.cudaFreeHost(self.pointer)
