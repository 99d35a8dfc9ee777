"""Building TensorRT engines from the exported ONNX graphs into the engine cache.

Precision: full TensorRT builds the exported fp32 graph with the FP16 (or INT8) builder flag.
TensorRT-RTX has no precision flags: its networks are strongly typed, each layer runs in the type
the graph gives it. So an fp16 build there parses an fp16-typed copy of the exported graph, derived
at build time (`fp16_graph`) rather than exported by `models prepare`: the copy is a pure function
of the fp32 graph, needs no weights or torch, and preparing stays CPU-only and as fast as before.
The manifest keeps the sha256 of the exported graph it came from, so loading checks it as usual.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType

from asr_stream.inference.engine import Precision, ShapeRange
from asr_stream.inference.models import sha256_of
from asr_stream.inference.profiles import ModelProfile, check_against_graph, onnx_input_shapes
from asr_stream.inference.tensorrt.cache import (
    MANIFEST,
    PLAN_SUFFIX,
    BuildRecord,
    EngineCacheError,
    GraphBuild,
    Platform,
    build_key,
    current_platform,
    list_builds,
    load_trt,
    model_directory,
    trt_directory,
    write_active,
)
from asr_stream.inference.tensorrt.calibration import CalibrationBatches, entropy_calibrator


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
    # Build-time dependencies only (onnx is not installed on serving nodes).
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
            raise EngineCacheError(
                f"an int8 build of {graph.name} needs calibration data (representative speech): pass --calibration WAV..."
            )
        config.int8_calibrator = calibrator
        config.set_calibration_profile(shapes)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineCacheError(
            f"{trt.__name__} could not build {graph.name} with {profile.source} ({profile.variant}, {profile.precision}); its log above says why"
        )
    return bytes(serialized)


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
    model_dir = model_directory(engines_dir, model)
    graphs = {graph: model_dir / graph for graph in profile.graphs}
    for graph, path in graphs.items():
        if not path.is_file():
            raise EngineCacheError(f"{path} does not exist: run `asr-stream models prepare {model}` first")
        check_against_graph(profile, graph, onnx_input_shapes(path))
    trt = load_trt()
    platform = current_platform(trt)
    digests = {graph: sha256_of([path]) for graph, path in graphs.items()}
    key = build_key(model, profile, digests, platform, retyped=_retyped(trt, profile))
    root = trt_directory(engines_dir, model)
    existing = next((record for record in list_builds(engines_dir, model) if record.key == key), None)
    if existing is None:
        existing = _build_new(trt, model, profile, graphs, digests, platform, key, root, calibration or {})
    if activate:
        write_active(root, key)
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
