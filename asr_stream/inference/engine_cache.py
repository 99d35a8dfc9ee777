"""Serialized TensorRT engines under `engines/<model>/trt/<key>/`: build, list, use, roll back.

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

TensorRT (`tensorrt`, >= 10) or TensorRT-RTX (`tensorrt_rtx`, the same builder API) is imported
only when building or loading, whichever is installed.

Precision: full TensorRT builds the exported fp32 graph with the FP16 (or INT8) builder flag.
TensorRT-RTX has no precision flags: its networks are strongly typed, each layer runs in the type
the graph gives it. So an fp16 build there parses an fp16-typed copy of the exported graph, derived
at build time (`fp16_graph`) rather than exported by `models prepare`: the copy is a pure function
of the fp32 graph, needs no weights or torch, and preparing stays CPU-only and as fast as before.
The manifest keeps the sha256 of the exported graph it came from, so loading checks it as usual.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType

import numpy as np

from asr_stream.errors import OperatorError
from asr_stream.inference.engine import Precision, ShapeRange
from asr_stream.inference.models import sha256_of
from asr_stream.inference.profiles import ModelProfile, check_against_graph, onnx_input_shapes

MANIFEST = "manifest.json"
ACTIVE = "active"
PLAN_SUFFIX = ".plan"
MANIFEST_FORMAT = 1
# Bump when `fp16_graph` would write a different graph: it is part of the key of strongly typed fp16 builds.
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
    material = {
        "model": model,
        "variant": profile.variant,
        "precision": profile.precision,
        "graphs": {graph: {"onnx": digest, "profile": profile.digest(graph)} for graph, digest in sorted(graph_digests.items())},
        "platform": asdict(platform),
    }
    if retyped:
        material["fp16_retype"] = FP16_RETYPE_VERSION
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:16]


def trt_directory(engines_dir: str | Path, model: str) -> Path:
    return Path(engines_dir) / model / "trt"


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
    _write_active(trt_directory(engines_dir, model), chosen[0].key)
    return chosen[0]


def _write_active(root: Path, key: str) -> None:
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


def load_trt() -> ModuleType:
    """TensorRT if installed, else TensorRT-RTX (same builder API); a one-line error if neither is."""
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
    from cuda.bindings import runtime as cudart

    error, properties = cudart.cudaGetDeviceProperties(device)
    if error != cudart.cudaError_t.cudaSuccess:
        raise EngineCacheError(f"cannot query CUDA device {device}: {error.name}")
    return Platform(
        trt_module=trt.__name__,
        trt_version=trt.__version__,
        gpu_name=properties.name.split(b"\0", 1)[0].decode(),
        compute_capability=f"{properties.major}.{properties.minor}",
    )


def strongly_typed(trt: ModuleType) -> bool:
    """True for TensorRT-RTX (no FP16 builder flag): a network runs in the types its graph declares."""
    return not hasattr(trt.BuilderFlag, "FP16")


def precision_flags(trt: ModuleType, precision: Precision) -> list[object]:
    """Builder flags for `precision`, or EngineCacheError when this TensorRT cannot honour it.

    Under a strongly typed builder fp16 needs no flag (the builder parses `fp16_graph`'s copy), and
    int8 is refused: TensorRT-RTX quantizes only graphs that carry Q/DQ nodes (explicit
    quantization), which our export does not write, and it has no calibrator API to derive scales.
    Refusing says so, where silently building fp32 would mislabel the engine.
    """
    if precision == "fp32" or (precision == "fp16" and strongly_typed(trt)):
        return []
    if strongly_typed(trt):
        raise EngineCacheError(
            f"{trt.__name__} {trt.__version__} builds strongly typed networks only: int8 needs Q/DQ nodes in the graph, which the export does not write, and there is no calibrator; build fp16 or fp32"
        )
    wanted = {"fp16": ["FP16"], "int8": ["INT8", "FP16"]}[precision]
    return [getattr(trt.BuilderFlag, name) for name in wanted]


def fp16_graph(source: Path, target: Path) -> Path:
    """Write an fp16-typed copy of the fp32 ONNX graph `source` to `target`, for strongly typed builders.

    Every float tensor becomes fp16, graph inputs and outputs included: the TensorRT backend takes
    its buffer types from the engine, and fp16 halves the cross-attention K/V that the decoder reads
    every step. Constants beyond fp16's range (the attention mask's -inf) are clamped to +-65504,
    which the softmax still turns into zero weight.
    """
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    onnx.save(convert_float_to_float16(onnx.load(str(source)), keep_io_types=False), str(target))
    return target


def build_serialized(
    trt: ModuleType, graph: Path, inputs: Mapping[str, ShapeRange], profile: ModelProfile, calibrator: object | None = None
) -> bytes:
    """Parse `graph`, apply one optimisation profile and the build settings, return the serialized engine."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(graph)):
        errors = "; ".join(str(parser.get_error(index)) for index in range(parser.num_errors))
        raise EngineCacheError(f"{trt.__name__} cannot parse {graph}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, profile.workspace_mib << 20)
    config.builder_optimization_level = profile.builder_optimization_level
    for flag in precision_flags(trt, profile.precision):
        config.set_flag(flag)
    shapes = builder.create_optimization_profile()
    for name, shape_range in inputs.items():
        shapes.set_shape(name, shape_range.min, shape_range.opt, shape_range.max)
    config.add_optimization_profile(shapes)
    if profile.precision == "int8":
        if calibrator is None:
            raise EngineCacheError(f"an int8 build of {graph.name} needs calibration data (representative speech)")
        config.int8_calibrator = calibrator
        config.set_calibration_profile(shapes)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineCacheError(
            f"{trt.__name__} could not build {graph.name} with {profile.source} ({profile.variant}, {profile.precision}); its log above says why"
        )
    return bytes(serialized)


class CalibrationBatches:
    """Representative input batches for INT8 calibration, and the calibration cache file.

    Kept apart from TensorRT's calibrator class so that what it feeds (shapes, order, the cache
    round trip) is testable without TensorRT. `feeds` yields {input name: array} dicts of one batch.
    """

    def __init__(self, feeds: Iterator[Mapping[str, np.ndarray]], cache_file: Path) -> None:
        self._feeds = feeds
        self.cache_file = cache_file

    def next_batch(self) -> Mapping[str, np.ndarray] | None:
        return next(self._feeds, None)

    def read_cache(self) -> bytes | None:
        """A previous run's table: calibrating again over the same speech would give the same one."""
        return self.cache_file.read_bytes() if self.cache_file.is_file() else None

    def write_cache(self, table: bytes) -> None:
        self.cache_file.parent.mkdir(parents=True, exist_ok=True)
        self.cache_file.write_bytes(table)


def entropy_calibrator(trt: ModuleType, batches: CalibrationBatches) -> object:
    """A TensorRT IInt8EntropyCalibrator2 copying `batches` to the GPU with cuda-python.

    get_batch_size is 1: with explicit-batch networks TensorRT takes the batch from the shapes.
    """
    from asr_stream.inference.tensorrt_backend import DeviceBuffer

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):  # type: ignore[name-defined, misc]
        def __init__(self) -> None:
            super().__init__()
            self._buffers: dict[str, DeviceBuffer] = {}

        def get_batch_size(self) -> int:
            return 1

        def get_batch(self, names: list[str]) -> list[int] | None:
            feeds = batches.next_batch()
            if feeds is None:
                return None
            pointers = []
            for name in names:
                array = np.ascontiguousarray(feeds[name])
                buffer = self._buffers.get(name)
                if buffer is None or buffer.nbytes < array.nbytes:
                    buffer = self._buffers[name] = DeviceBuffer(array.nbytes)
                buffer.upload(array)
                pointers.append(buffer.pointer)
            return pointers

        def read_calibration_cache(self) -> bytes | None:
            return batches.read_cache()

        def write_calibration_cache(self, cache: bytes) -> None:
            batches.write_cache(bytes(cache))

    return EntropyCalibrator()


def calibration_cache_path(engines_dir: str | Path, model: str, graph_digest: str) -> Path:
    return trt_directory(engines_dir, model) / "calibration" / f"{graph_digest[:16]}.cache"


def build_engines(
    model: str,
    profile: ModelProfile,
    engines_dir: str | Path = "engines",
    calibration: Mapping[str, CalibrationBatches] | None = None,
    activate: bool = True,
) -> BuildRecord:
    """Build every graph of `profile` for `model` (its ONNX files from `models prepare`); reuse an identical build.

    The new build becomes the active one unless `activate` is False; older builds stay for rollback.
    """
    trt = load_trt()
    platform = current_platform(trt)
    model_dir = Path(engines_dir) / model
    graphs = {graph: model_dir / graph for graph in profile.graphs}
    for graph, path in graphs.items():
        if not path.is_file():
            raise EngineCacheError(f"{path} does not exist: run `asr-stream models prepare {model}` first")
        check_against_graph(profile, graph, onnx_input_shapes(path))
    digests = {graph: sha256_of([path]) for graph, path in graphs.items()}
    key = build_key(model, profile, digests, platform, retyped=_retyped(trt, profile))
    root = trt_directory(engines_dir, model)
    existing = next((record for record in list_builds(engines_dir, model) if record.key == key), None)
    if existing is None:
        existing = _build_new(trt, model, profile, graphs, digests, platform, key, root, calibration or {})
    if activate:
        _write_active(root, key)
    return existing


def _retyped(trt: ModuleType, profile: ModelProfile) -> bool:
    """Whether this build parses fp16-typed copies of the graphs instead of the exported fp32 ones."""
    return profile.precision == "fp16" and strongly_typed(trt)


def _build_new(
    trt: ModuleType,
    model: str,
    profile: ModelProfile,
    graphs: Mapping[str, Path],
    digests: Mapping[str, str],
    platform: Platform,
    key: str,
    root: Path,
    calibration: Mapping[str, CalibrationBatches],
) -> BuildRecord:
    root.mkdir(parents=True, exist_ok=True)
    version = max((record.version for record in list_builds(root.parent.parent, model)), default=0) + 1
    # Built beside the cache and renamed at the end: an interrupted build never looks complete.
    staging = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=root))
    try:
        built = {}
        for graph, path in graphs.items():
            batches = calibration.get(graph)
            calibrator = entropy_calibrator(trt, batches) if batches else None
            parsed = fp16_graph(path, staging / f"{Path(graph).stem}.fp16.onnx") if _retyped(trt, profile) else path
            started = time.perf_counter()
            plan = build_serialized(trt, parsed, profile.inputs(graph), profile, calibrator)
            seconds = time.perf_counter() - started
            if parsed != path:
                parsed.unlink()  # derived again by any later build: a build directory holds plans only
            plan_name = Path(graph).stem + PLAN_SUFFIX
            (staging / plan_name).write_bytes(plan)
            built[graph] = GraphBuild(
                onnx_sha256=digests[graph],
                profile_sha256=profile.digest(graph),
                plan=plan_name,
                plan_bytes=len(plan),
                build_seconds=round(seconds, 2),
            )
        record = BuildRecord(
            version=version,
            key=key,
            model=model,
            variant=profile.variant,
            precision=profile.precision,
            profile_file=str(profile.source),
            platform=platform,
            graphs=built,
            built_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        (staging / MANIFEST).write_text(record.to_json())
        staging.rename(root / key)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return record


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


def whisper_calibration(engines_dir: str | Path, model: str, wavs: list[Path], batch: int) -> dict[str, CalibrationBatches]:
    """INT8 calibration data for both Whisper graphs from real speech files.

    The encoder sees 30 s log-mel windows as served; the decoder sees the first step of each batch
    (start token, empty cache) over cross-attention K/V that the fp32 encoder computed on the CPU.
    """
    from asr_stream.audio.features import log_mel_spectrogram
    from asr_stream.audio.wavfile import load_audio
    from asr_stream.inference.models import load_prepared
    from asr_stream.inference.onnxruntime_backend import OnnxRuntimeEngine
    from asr_stream.inference.whisper.tokenizer import WhisperTokenizer

    prepared = load_prepared(model, engines_dir)
    start = WhisperTokenizer.from_file(prepared.tokenizer_path, prepared.dims.is_multilingual).sot
    model_dir = prepared.directory
    mels = [log_mel_spectrogram(load_audio(path)[0]) for path in wavs]
    mel_batches = [np.stack(mels[start : start + batch]) for start in range(0, len(mels), batch)]
    encoder = OnnxRuntimeEngine.load(model_dir / "encoder.onnx")
    cross_kvs = [encoder.run({"mel": mel})["cross_kv"] for mel in mel_batches]

    def decoder_feeds() -> Iterator[Mapping[str, np.ndarray]]:
        for cross_kv in cross_kvs:
            size = cross_kv.shape[2]
            empty = np.zeros((*cross_kv.shape[:4], 1, cross_kv.shape[5]), np.float32)
            yield {
                "tokens": np.full((size, 1), start, np.int64),
                "offset": np.zeros(size, np.int64),
                "self_kv": empty,
                "cross_kv": cross_kv,
            }

    digests = {graph: sha256_of([model_dir / graph]) for graph in ("encoder.onnx", "decoder.onnx")}
    return {
        "encoder.onnx": CalibrationBatches(
            ({"mel": mel} for mel in mel_batches), calibration_cache_path(engines_dir, model, digests["encoder.onnx"])
        ),
        "decoder.onnx": CalibrationBatches(decoder_feeds(), calibration_cache_path(engines_dir, model, digests["decoder.onnx"])),
    }


def build_command(
    model: str,
    profile_path: str | None = None,
    variant: str | None = None,
    precision: Precision | None = None,
    engines_dir: str = "engines",
    calibration_wavs: list[Path] | None = None,
) -> int:
    """`asr-stream engines build MODEL [--profile FILE] [--variant V] [--precision P] [--calibration WAV ...]`."""
    from asr_stream.inference.profiles import load_profile, variants

    path = Path(profile_path or f"profiles/{model}.yaml")
    for name in [variant] if variant else variants(path):
        profile = load_profile(path, name, precision)
        calibration = (
            whisper_calibration(engines_dir, model, calibration_wavs or [], profile.max_batch)
            if profile.precision == "int8" and calibration_wavs
            else None
        )
        record = build_engines(model, profile, engines_dir, calibration)
        print(format_builds([record], record))
    return 0


def list_command(model: str, engines_dir: str = "engines") -> int:
    """`asr-stream engines list MODEL`."""
    print(format_builds(list_builds(engines_dir, model), active_build(engines_dir, model)))
    return 0


def use_command(model: str, version: str, engines_dir: str = "engines") -> int:
    """`asr-stream engines use MODEL VERSION`: serve that build from now on (a rollback when it is older)."""
    record = use_build(engines_dir, model, version)
    print(format_builds([record], record))
    return 0
