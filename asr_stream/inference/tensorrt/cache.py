"""Serialized TensorRT engines under `engines/<model>/trt/<key>/`: records, keys, list, use, roll back.

Why a keyed cache with a manifest: a TensorRT engine is valid only for the exact graph, shapes,
precision, TensorRT version and GPU it was built on, and deserialising a wrong one fails late and
obscurely (or, worse, runs with the wrong shapes). So every build directory is named by a hash of
those five things, its manifest records them, and loading compares them against the running
platform first, refusing with a message that says which one differs and the command to rebuild.
Builds are never overwritten: `engines list` shows them, `engines use VERSION` switches the
active one (a rollback is `use` of an older version), `active` names the one served.

Layout::

    engines/<model>/trt/<key>/manifest.json   what the build was made from and for
    engines/<model>/trt/<key>/<graph>.plan    one serialized engine per ONNX graph
    engines/<model>/trt/active                the key of the build in use
    engines/<model>/trt/calibration/<sha>.cache   INT8 calibration tables, reused across builds
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType

from asr_stream.errors import OperatorError
from asr_stream.inference.engine import Precision
from asr_stream.inference.models import MANIFEST as MODEL_MANIFEST
from asr_stream.inference.profiles import ModelProfile

MANIFEST = "manifest.json"
ACTIVE = "active"
PLAN_SUFFIX = ".plan"
MANIFEST_FORMAT = 1
# Bump when `build.fp16_graph` would write a different graph: it is part of the key of strongly typed fp16 builds.
FP16_RETYPE_VERSION = 1


class EngineCacheError(OperatorError):
    """A build cannot be made, found or used; the message is one line for the operator."""


class EngineMismatch(EngineCacheError):
    """A cached engine was built for another graph, profile, precision, TensorRT or GPU."""


@dataclass(frozen=True)
class Platform:
    """What a serialized engine is bound to besides its inputs: the TensorRT build and the GPU."""

    trt_module: str  # "tensorrt" or "tensorrt_rtx"
    trt_version: str
    gpu_name: str
    compute_capability: str  # "9.0"


@dataclass(frozen=True)
class GraphBuild:
    """One graph's engine in a build: what it came from and what it cost."""

    onnx_sha256: str
    profile_sha256: str
    plan: str
    plan_bytes: int
    build_seconds: float


@dataclass(frozen=True)
class BuildRecord:
    """manifest.json of one build directory."""

    version: int
    key: str
    model: str
    variant: str
    precision: Precision
    profile_file: str
    platform: Platform
    graphs: Mapping[str, GraphBuild]
    built_at: str

    def to_json(self) -> str:
        return json.dumps({"format": MANIFEST_FORMAT, **asdict(self)}, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> BuildRecord:
        data = json.loads(text)
        data.pop("format", None)
        data["platform"] = Platform(**data["platform"])
        data["graphs"] = {name: GraphBuild(**graph) for name, graph in data["graphs"].items()}
        return cls(**data)


def build_key(model: str, profile: ModelProfile, graph_digests: Mapping[str, str], platform: Platform, retyped: bool = False) -> str:
    """16 hex digits naming a build: model, variant's shapes and settings, each ONNX sha256, the platform,
    and, when the builder parsed fp16-typed copies (`retyped`), the version of that conversion."""
    material: dict[str, object] = {
        "model": model,
        "variant": profile.variant,
        "precision": profile.precision,
        "graphs": {graph: {"onnx": digest, "profile": profile.digest(graph)} for graph, digest in sorted(graph_digests.items())},
        "platform": asdict(platform),
    }
    if retyped:
        material["fp16_retype"] = FP16_RETYPE_VERSION
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:16]


def model_directory(engines_dir: str | Path, model: str) -> Path:
    """engines_dir/model as prepared or imported; EngineCacheError naming the command that makes it otherwise."""
    directory = Path(engines_dir) / model
    if not (directory / MODEL_MANIFEST).is_file():
        raise EngineCacheError(
            f"model {model} is not in {engines_dir}: run `asr-stream models prepare {model}` (or `asr-stream models add conformer {model} ...`) first"
        )
    return directory


def trt_directory(engines_dir: str | Path, model: str) -> Path:
    return Path(engines_dir) / model / "trt"


def calibration_cache_path(engines_dir: str | Path, model: str, graph_digest: str) -> Path:
    return trt_directory(engines_dir, model) / "calibration" / f"{graph_digest[:16]}.cache"


def list_builds(engines_dir: str | Path, model: str) -> list[BuildRecord]:
    """Every build of `model`, oldest first."""
    root = trt_directory(engines_dir, model)
    records = [BuildRecord.from_json(path.read_text()) for path in root.glob(f"*/{MANIFEST}")] if root.is_dir() else []
    return sorted(records, key=lambda record: record.version)


def active_build(engines_dir: str | Path, model: str) -> BuildRecord | None:
    pointer = trt_directory(engines_dir, model) / ACTIVE
    if not pointer.is_file():
        return None
    key = pointer.read_text().strip()
    return next((record for record in list_builds(engines_dir, model) if record.key == key), None)


def use_build(engines_dir: str | Path, model: str, version: str) -> BuildRecord:
    """Make the build numbered `version` (or whose key starts with it) the active one: deploy or roll back."""
    builds = list_builds(engines_dir, model)
    chosen = [record for record in builds if str(record.version) == version or record.key.startswith(version)]
    if len(chosen) != 1:
        known = ", ".join(f"{record.version} ({record.key})" for record in builds) or "none"
        reason = "is ambiguous" if chosen else "does not exist"
        raise EngineCacheError(f"build {version!r} of {model} {reason}; builds: {known}")
    write_active(trt_directory(engines_dir, model), chosen[0].key)
    return chosen[0]


def write_active(root: Path, key: str) -> None:
    """Replace the pointer atomically, so a reader never sees a half-written key."""
    temporary = root / f".{ACTIVE}.tmp"
    temporary.write_text(key + "\n")
    temporary.replace(root / ACTIVE)


def check_compatible(record: BuildRecord, profile: ModelProfile, graph_digests: Mapping[str, str], platform: Platform) -> None:
    """Raise EngineMismatch naming every difference between a build and what would be served now."""
    rebuild = f"rebuild with `asr-stream engines build {record.model} --profile {profile.source} --variant {profile.variant} --precision {profile.precision}`"
    reasons = []
    if record.platform.trt_module != platform.trt_module or record.platform.trt_version != platform.trt_version:
        reasons.append(
            f"built with {record.platform.trt_module} {record.platform.trt_version}, running {platform.trt_module} {platform.trt_version}"
        )
    if (record.platform.gpu_name, record.platform.compute_capability) != (platform.gpu_name, platform.compute_capability):
        reasons.append(
            f"built on {record.platform.gpu_name} (compute {record.platform.compute_capability}), this GPU is {platform.gpu_name} (compute {platform.compute_capability})"
        )
    if record.precision != profile.precision:
        reasons.append(f"built in {record.precision}, {profile.precision} requested")
    if record.variant != profile.variant:
        reasons.append(f"built for variant {record.variant}, {profile.variant} requested")
    for graph, digest in sorted(graph_digests.items()):
        built = record.graphs.get(graph)
        if built is None:
            reasons.append(f"has no engine for {graph}")
        elif built.onnx_sha256 != digest:
            reasons.append(f"{graph} was re-exported since (sha256 {built.onnx_sha256[:12]} -> {digest[:12]})")
        elif built.profile_sha256 != profile.digest(graph):
            reasons.append(f"the shapes or build settings of {graph} in {profile.source} changed")
    if reasons:
        raise EngineMismatch(
            f"engine build {record.version} ({record.key}) of {record.model} cannot be used: {'; '.join(reasons)}; {rebuild}"
        )


def format_builds(builds: list[BuildRecord], active: BuildRecord | None) -> str:
    """`engines list` output: one line per build, the active one starred."""
    lines = []
    for record in builds:
        mark = "*" if active is not None and record.key == active.key else " "
        sizes = ", ".join(f"{graph} {build.plan_bytes / 2**20:.1f} MiB" for graph, build in sorted(record.graphs.items()))
        lines.append(
            f"{mark} {record.version:>3}  {record.key}  {record.variant:<10} {record.precision:<4}  {record.platform.trt_module} {record.platform.trt_version}  {record.platform.gpu_name} ({record.platform.compute_capability})  {record.built_at}  {sizes}"
        )
    return "\n".join(lines) if lines else "no TensorRT builds"


def load_trt() -> ModuleType:
    """TensorRT if installed, else TensorRT-RTX (same builder API); a one-line error if neither is.

    Imported here, not at module level: TensorRT is an optional GPU-node dependency.
    """
    try:
        import tensorrt

        return tensorrt
    except ImportError:
        pass
    try:
        import tensorrt_rtx

        return tensorrt_rtx
    except ImportError:
        raise EngineCacheError(
            "neither tensorrt (>= 10) nor tensorrt_rtx is installed: pip install tensorrt (or tensorrt-rtx-cu13)"
        ) from None


def current_platform(trt: ModuleType, device: int = 0) -> Platform:
    """The running TensorRT and GPU `device`, read through cuda-python (no pycuda, no torch)."""
    try:
        from cuda.bindings import runtime as cudart  # optional GPU dependency (asr-stream[gpu])
    except ImportError:
        raise EngineCacheError("cuda-python is not installed: pip install 'asr-stream[gpu]'") from None

    error, properties = cudart.cudaGetDeviceProperties(device)
    if error != cudart.cudaError_t.cudaSuccess:
        raise EngineCacheError(f"cannot query CUDA device {device}: {error.name}")
    return Platform(
        trt_module=trt.__name__,
        trt_version=trt.__version__,
        gpu_name=properties.name.split(b"\0", 1)[0].decode(),
        compute_capability=f"{properties.major}.{properties.minor}",
    )
