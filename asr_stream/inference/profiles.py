"""Shape profiles (`profiles/*.yaml`): the one source of input shapes for engine builders and the scheduler.

Why data and not code: TensorRT bakes min/opt/max shapes into an engine, the scheduler must never
send a batch the engine was not built for, and the CUDA-graph buckets of the PyTorch backend must
mirror both. Keeping the numbers in one YAML file per model (read here, validated against the
ONNX graph before any build) makes a mismatch a load-time error with a file name, not a runtime
crash on a GPU at the first large batch.

Two layouts are read. A model with one graph (Conformer-CTC)::

    name: conformer-ctc
    graph: model.onnx
    precision: fp16
    max_batch: 64
    inputs: {audio_signal: {min: [1, 80, 50], opt: [...], max: [...]}, length: {...}}

and a model with several graphs and variants (Whisper), where each variant (e.g. "throughput",
"latency") has its own `max_batch`, `buckets` and per-graph `inputs`; build settings
(`precision`, `workspace_mib`, `builder_optimization_level`) sit at the top and a variant may
override them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import yaml

from asr_stream.errors import OperatorError
from asr_stream.inference.engine import Precision, Profile, ShapeRange

PRECISIONS: tuple[Precision, ...] = ("fp16", "int8", "fp32")
DEFAULT_WORKSPACE_MIB = 4096
DEFAULT_OPTIMIZATION_LEVEL = 3
SINGLE_VARIANT = "default"


class ProfileError(OperatorError):
    """A profile file is wrong; the message names the file and the offending entry."""


@dataclass(frozen=True)
class Buckets:
    """The (batch, frames) shapes the scheduler pads to, ascending; each one a CUDA graph / engine shape."""

    batch: tuple[int, ...]
    frames: tuple[int, ...]

    def batch_for(self, size: int) -> int:
        """The smallest batch bucket holding `size` requests."""
        return _smallest_at_least(self.batch, size, "batch")

    def frames_for(self, frames: int) -> int:
        """The smallest frames bucket holding `frames` mel frames."""
        return _smallest_at_least(self.frames, frames, "frames")

    def pairs(self) -> list[tuple[int, int]]:
        return [(batch, frames) for frames in self.frames for batch in self.batch]


def _smallest_at_least(options: tuple[int, ...], value: int, what: str) -> int:
    for option in options:
        if option >= value:
            return option
    raise ValueError(f"{what} {value} exceeds the largest bucket {options[-1]}")


@dataclass(frozen=True)
class ModelProfile:
    """One variant of a model's profile, resolved: what a build and the scheduler use."""

    name: str
    variant: str
    source: Path
    precision: Precision
    workspace_mib: int
    builder_optimization_level: int
    max_batch: int
    buckets: Buckets | None
    graphs: Mapping[str, Mapping[str, ShapeRange]]  # graph file -> input name -> shapes

    def engine_profile(self, graph: str) -> Profile:
        """The Engine protocol's view of one graph's shapes."""
        return Profile(name=f"{self.name}/{self.variant}", max_batch=self.max_batch, shapes=self.inputs(graph))

    def inputs(self, graph: str) -> Mapping[str, ShapeRange]:
        if graph not in self.graphs:
            raise ProfileError(f"{self.source}: variant {self.variant!r} has no graph {graph!r} (it has: {', '.join(self.graphs)})")
        return self.graphs[graph]

    def digest(self, graph: str) -> str:
        """sha256 of everything that changes the engine built for `graph` (an engine-cache key part)."""
        build = {
            "precision": self.precision,
            "workspace_mib": self.workspace_mib,
            "builder_optimization_level": self.builder_optimization_level,
            "inputs": {name: [list(r.min), list(r.opt), list(r.max)] for name, r in sorted(self.inputs(graph).items())},
        }
        return hashlib.sha256(json.dumps(build, sort_keys=True).encode()).hexdigest()


def variants(path: Path) -> list[str]:
    """The variant names a profile file defines ("default" for a single-variant file)."""
    document = _read(Path(path))
    return list(document["variants"]) if "variants" in document else [SINGLE_VARIANT]


def load_profile(path: str | Path, variant: str | None = None, precision: Precision | None = None) -> ModelProfile:
    """Read and validate one variant (default: the file's first) of a profile file.

    `precision` overrides the file's (the `--precision` flag of `engines build`).
    """
    path = Path(path)
    document = _read(path)
    if "variants" in document:
        names = list(document["variants"])
        variant = variant or names[0]
        if variant not in document["variants"]:
            raise ProfileError(f"{path}: no variant {variant!r} (it has: {', '.join(names)})")
        body = {**{key: value for key, value in document.items() if key != "variants"}, **document["variants"][variant]}
        raw_graphs = _mapping(body.get("graphs"), f"{path}: variants.{variant}.graphs")
    else:
        if variant not in (None, SINGLE_VARIANT):
            raise ProfileError(f"{path}: no variant {variant!r}: the file has a single profile")
        variant, body = SINGLE_VARIANT, document
        raw_graphs = {_required(body, "graph", path): _required(body, "inputs", path)}
    chosen = precision or body.get("precision", "fp16")
    if chosen not in PRECISIONS:
        raise ProfileError(f"{path}: precision {chosen!r} is not one of {', '.join(PRECISIONS)}")
    max_batch = _positive_int(_required(body, "max_batch", path), f"{path}: max_batch")
    graphs = {graph: _graph_inputs(raw, f"{path}: {variant}.{graph}") for graph, raw in raw_graphs.items()}
    profile = ModelProfile(
        name=str(_required(document, "name", path)),
        variant=variant,
        source=path,
        precision=cast(Precision, chosen),
        workspace_mib=_positive_int(body.get("workspace_mib", DEFAULT_WORKSPACE_MIB), f"{path}: workspace_mib"),
        builder_optimization_level=_optimization_level(body.get("builder_optimization_level", DEFAULT_OPTIMIZATION_LEVEL), path),
        max_batch=max_batch,
        buckets=_buckets(body["buckets"], max_batch, f"{path}: {variant}.buckets") if "buckets" in body else None,
        graphs=graphs,
    )
    return profile


def check_against_graph(profile: ModelProfile, graph: str, declared: Mapping[str, Sequence[int | str | None]]) -> None:
    """Raise ProfileError unless the profile's inputs are exactly the graph's, with matching ranks and static dims.

    `declared` is each graph input's shape as the graph states it: an int for a static dim, a name,
    None or -1 for a dynamic one (from `onnx_input_shapes`, an ONNX Runtime session or a TensorRT network).
    """
    ranges = profile.inputs(graph)
    where = f"{profile.source} ({profile.variant}) for {graph}"
    unknown = sorted(set(ranges) - set(declared))
    if unknown:
        raise ProfileError(f"{where}: input {', '.join(unknown)} is not in the graph (the graph's inputs: {', '.join(declared)})")
    missing = sorted(set(declared) - set(ranges))
    if missing:
        raise ProfileError(f"{where}: no shapes for the graph input {', '.join(missing)}")
    for name, shape in declared.items():
        shape_range = ranges[name]
        if len(shape) != len(shape_range.min):
            raise ProfileError(
                f"{where}: input {name} has rank {len(shape)} in the graph {list(shape)} but rank {len(shape_range.min)} in the profile"
            )
        for axis, dim in enumerate(shape):
            if isinstance(dim, int) and dim >= 0 and {shape_range.min[axis], shape_range.opt[axis], shape_range.max[axis]} != {dim}:
                raise ProfileError(
                    f"{where}: input {name} axis {axis} is fixed at {dim} in the graph, the profile says min/opt/max {shape_range.min[axis]}/{shape_range.opt[axis]}/{shape_range.max[axis]}"
                )


def onnx_input_shapes(graph: Path) -> dict[str, list[int | str | None]]:
    """Each graph input's declared shape, read with `onnx` (weights are not loaded)."""
    import onnx  # a build-time dependency: serving never validates profiles against graphs

    model = onnx.load(str(graph), load_external_data=False)
    initializers = {initializer.name for initializer in model.graph.initializer}
    shapes: dict[str, list[int | str | None]] = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        dims = value.type.tensor_type.shape.dim
        shapes[value.name] = [dim.dim_value if dim.HasField("dim_value") else (dim.dim_param or None) for dim in dims]
    return shapes


def _read(path: Path) -> dict[str, Any]:
    try:
        document = yaml.safe_load(path.read_text())
    except OSError as error:
        raise ProfileError(f"cannot read profile {path}: {error.strerror}") from None
    except yaml.YAMLError as error:
        raise ProfileError(f"{path}: not valid YAML: {error}") from None
    return _mapping(document, str(path))


def _mapping(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict) or not value:
        raise ProfileError(f"{where}: expected a non-empty mapping")
    return value


def _required(body: Mapping[str, Any], key: str, path: Path) -> Any:
    if key not in body:
        raise ProfileError(f"{path}: missing {key!r}")
    return body[key]


def _positive_int(value: object, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ProfileError(f"{where}: expected a positive integer, got {value!r}")
    return value


def _optimization_level(value: object, path: Path) -> int:
    if not isinstance(value, int) or not 0 <= value <= 5:
        raise ProfileError(f"{path}: builder_optimization_level must be 0..5 (TensorRT's range), got {value!r}")
    return value


def _graph_inputs(raw: object, where: str) -> dict[str, ShapeRange]:
    inputs = {}
    for name, corners in _mapping(raw, where).items():
        corners = _mapping(corners, f"{where}.{name}")
        if set(corners) != {"min", "opt", "max"}:
            raise ProfileError(f"{where}.{name}: needs exactly min, opt and max, got {', '.join(corners)}")
        shapes = {
            corner: tuple(_positive_int(dim, f"{where}.{name}.{corner}") for dim in corners[corner]) for corner in ("min", "opt", "max")
        }
        if len({len(shape) for shape in shapes.values()}) != 1:
            raise ProfileError(f"{where}.{name}: min, opt and max have different ranks {[list(s) for s in shapes.values()]}")
        for axis, (low, opt, high) in enumerate(zip(shapes["min"], shapes["opt"], shapes["max"])):
            if not low <= opt <= high:
                raise ProfileError(f"{where}.{name}: axis {axis} needs min <= opt <= max, got {low}, {opt}, {high}")
        inputs[name] = ShapeRange(min=shapes["min"], opt=shapes["opt"], max=shapes["max"])
    return inputs


def _buckets(raw: object, max_batch: int, where: str) -> Buckets:
    body = _mapping(raw, where)
    lists = {}
    for axis in ("batch", "frames"):
        values = [_positive_int(value, f"{where}.{axis}") for value in body.get(axis) or []]
        if not values or values != sorted(set(values)):
            raise ProfileError(f"{where}.{axis}: expected a strictly ascending, non-empty list, got {values}")
        lists[axis] = tuple(values)
    if lists["batch"][-1] != max_batch:
        raise ProfileError(f"{where}.batch: the largest bucket {lists['batch'][-1]} must equal max_batch {max_batch}")
    return Buckets(batch=lists["batch"], frames=lists["frames"])
