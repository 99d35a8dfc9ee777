"""TensorRT on an NVIDIA GPU: the Engine protocol over a serialized engine from `engines build`.

Why these choices:
- One execution context per concurrently in-flight batch (`contexts`), each with its own CUDA
  stream and buffers, so the scheduler's worker threads overlap copies and kernels of different
  batches instead of serialising on one context.
- Buffers are allocated once per context at the profile's maximum shapes (device memory with
  cudaMalloc, host staging in pinned memory so copies are truly asynchronous); a run only sets
  the input shapes, so no allocation sits on the request path. Output sizes are read from the
  context after the input shapes are set.

Status: TensorRT-RTX (the only TensorRT installable where this was developed) builds engines on
the H100 but its runtime refuses compute capability 9.0, and full TensorRT cannot be installed
there; so this module's GPU path has not been executed (docs/gpu.md). What needs no library —
build lookup and refusal, shape checks, dtype mapping, buffer sizing — is unit-tested.
"""

from __future__ import annotations

import queue
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any, Self

import numpy as np

from asr_stream.inference.engine import Precision, Profile, ShapeRange, TensorSpec
from asr_stream.inference.models import sha256_of
from asr_stream.inference.profiles import load_profile
from asr_stream.inference.tensorrt.buffers import DeviceBuffer, PinnedBuffer, buffer_bytes, check
from asr_stream.inference.tensorrt.cache import (
    BuildRecord,
    EngineCacheError,
    active_build,
    check_compatible,
    current_platform,
    load_trt,
    trt_directory,
)

DEFAULT_CONTEXTS = 2  # one batch computing while the next one's inputs are copied in

_NUMPY_TYPES = {
    "FLOAT": np.float32,
    "HALF": np.float16,
    "BF16": None,
    "INT8": np.int8,
    "INT32": np.int32,
    "INT64": np.int64,
    "BOOL": np.bool_,
    "UINT8": np.uint8,
}


def numpy_dtype(trt_type_name: str) -> np.dtype:
    """The numpy dtype of a TensorRT DataType name (e.g. "HALF"); ValueError for types numpy lacks."""
    numpy_type = _NUMPY_TYPES.get(trt_type_name)
    if numpy_type is None:
        raise ValueError(f"TensorRT type {trt_type_name} has no numpy equivalent for host buffers")
    return np.dtype(numpy_type)


def shape_problem(name: str, shape: tuple[int, ...], allowed: ShapeRange) -> str | None:
    """Why `shape` cannot be fed to input `name` of an engine built for `allowed`, or None if it can."""
    if len(shape) != len(allowed.min):
        return f"input {name} has rank {len(shape)} {list(shape)}, the engine expects rank {len(allowed.min)}"
    for axis, (size, low, high) in enumerate(zip(shape, allowed.min, allowed.max)):
        if not low <= size <= high:
            return f"input {name} axis {axis} is {size}, the engine's profile allows {low}..{high}: rebuild with a wider profile or split the batch"
    return None


class _Slot:
    """One execution context with its stream and max-sized buffers: one batch in flight."""

    def __init__(self, engine: Any, tensors: Mapping[str, tuple[tuple[int, ...], np.dtype]]) -> None:
        from cuda.bindings import runtime as cudart  # optional GPU dependency (asr-stream[gpu])

        self.context = engine.create_execution_context()
        self.stream = check(cudart.cudaStreamCreate())
        self.device = {name: DeviceBuffer(buffer_bytes(shape, dtype)) for name, (shape, dtype) in tensors.items()}
        self.host = {name: PinnedBuffer(buffer_bytes(shape, dtype)) for name, (shape, dtype) in tensors.items()}
        for name, buffer in self.device.items():
            self.context.set_tensor_address(name, buffer.pointer)


class TensorRTEngine:
    """A deserialized TensorRT engine with a pool of execution contexts (thread-safe `run`)."""

    backend = "tensorrt"

    def __init__(self, trt: ModuleType, engine: Any, record: BuildRecord, graph: str, contexts: int, max_batch: int) -> None:
        self._trt = trt
        self.max_batch = max_batch
        self._engine = engine
        self._record = record
        self._graph = graph
        names = [engine.get_tensor_name(index) for index in range(engine.num_io_tensors)]
        is_input = {name: engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT for name in names}
        dtypes = {name: numpy_dtype(engine.get_tensor_dtype(name).name) for name in names}
        self._ranges = {
            name: ShapeRange(*(tuple(shape) for shape in engine.get_tensor_profile_shape(name, 0))) for name in names if is_input[name]
        }
        probe = engine.create_execution_context()
        for name, shape_range in self._ranges.items():
            probe.set_input_shape(name, shape_range.max)
        max_shapes = {name: self._ranges[name].max if is_input[name] else tuple(probe.get_tensor_shape(name)) for name in names}
        self.inputs = tuple(TensorSpec(name, dtypes[name], tuple(engine.get_tensor_shape(name))) for name in names if is_input[name])
        self.outputs = tuple(TensorSpec(name, dtypes[name], tuple(engine.get_tensor_shape(name))) for name in names if not is_input[name])
        self._slots: queue.Queue[_Slot] = queue.Queue()
        for _ in range(contexts):
            self._slots.put(_Slot(engine, {name: (max_shapes[name], dtypes[name]) for name in names}))
        self._contexts = contexts

    @classmethod
    def load(
        cls,
        graph: Path,
        profile: Profile | None = None,
        precision: Precision = "fp16",
        contexts: int = DEFAULT_CONTEXTS,
        engines_dir: Path | None = None,
    ) -> Self:
        """Deserialize the active build's engine for `graph` (engines/<model>/<graph>.onnx), after checking it fits.

        Refuses (EngineMismatch) an engine built from another graph, profile, precision, TensorRT or GPU.
        """
        graph = Path(graph)
        engines_dir = engines_dir or graph.parent.parent
        model = graph.parent.name
        record = active_build(engines_dir, model)
        if record is None:
            raise EngineCacheError(f"no TensorRT build of {model} in {engines_dir}: run `asr-stream engines build {model}`")
        model_profile = load_profile(record.profile_file, record.variant, precision)
        if profile is not None and profile.name != f"{model_profile.name}/{model_profile.variant}":
            raise EngineCacheError(
                f"the active build of {model} is for profile {model_profile.name}/{model_profile.variant}, not {profile.name}: `asr-stream engines use` another build"
            )
        trt = load_trt()
        check_compatible(record, model_profile, {graph.name: sha256_of([graph])}, current_platform(trt))
        plan = trt_directory(engines_dir, model) / record.key / record.graphs[graph.name].plan
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        engine = runtime.deserialize_cuda_engine(plan.read_bytes())
        if engine is None:
            raise EngineCacheError(f"{trt.__name__} {trt.__version__} could not deserialize {plan}; its log above says why")
        return cls(trt, engine, record, graph.name, contexts, model_profile.max_batch)

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Copy in, execute on a free context's stream, copy out; blocks only this thread."""
        from cuda.bindings import runtime as cudart  # optional GPU dependency (asr-stream[gpu])

        slot = self._slots.get()
        try:
            to_device, to_host = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
            for spec in self.inputs:
                array = np.ascontiguousarray(feeds[spec.name], dtype=spec.dtype)
                problem = shape_problem(spec.name, array.shape, self._ranges[spec.name])
                if problem:
                    raise ValueError(problem)
                slot.context.set_input_shape(spec.name, array.shape)
                slot.host[spec.name].view(array.shape, spec.dtype)[...] = array
                check(
                    cudart.cudaMemcpyAsync(
                        slot.device[spec.name].pointer, slot.host[spec.name].pointer, array.nbytes, to_device, slot.stream
                    )
                )
            if not slot.context.execute_async_v3(slot.stream):
                raise RuntimeError(f"TensorRT could not enqueue {self._graph}")
            shapes = {spec.name: tuple(slot.context.get_tensor_shape(spec.name)) for spec in self.outputs}
            for spec in self.outputs:
                check(
                    cudart.cudaMemcpyAsync(
                        slot.host[spec.name].pointer,
                        slot.device[spec.name].pointer,
                        buffer_bytes(shapes[spec.name], spec.dtype),
                        to_host,
                        slot.stream,
                    )
                )
            check(cudart.cudaStreamSynchronize(slot.stream))
            return {spec.name: slot.host[spec.name].view(shapes[spec.name], spec.dtype).copy() for spec in self.outputs}
        finally:
            self._slots.put(slot)

    def describe(self) -> dict[str, object]:
        platform = self._record.platform
        return {
            "backend": self.backend,
            "graph": self._graph,
            "precision": self._record.precision,
            "build": self._record.version,
            "key": self._record.key,
            "variant": self._record.variant,
            "tensorrt": f"{platform.trt_module} {platform.trt_version}",
            "device": f"{platform.gpu_name} ({platform.compute_capability})",
            "contexts": self._contexts,
            "max_batch": self.max_batch,
        }
