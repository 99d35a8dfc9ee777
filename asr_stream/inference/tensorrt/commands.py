"""`asr-stream engines build | list | use`: what the CLI runs, printing one result line per build.

Operator mistakes (a model that was never prepared, an unknown build, a profile that does not fit,
no TensorRT on this machine) raise `EngineCacheError` / `ProfileError`, both `OperatorError`s that
the CLI prints as one line with exit status 2.
"""

from __future__ import annotations

from pathlib import Path

from asr_stream.inference.engine import Precision
from asr_stream.inference.models import model_family
from asr_stream.inference.profiles import load_profile, variants
from asr_stream.inference.tensorrt.build import build_engines
from asr_stream.inference.tensorrt.cache import EngineCacheError, active_build, format_builds, list_builds, model_directory, use_build
from asr_stream.inference.tensorrt.calibration import whisper_calibration


def build_command(
    model: str,
    profile_path: str | None = None,
    variant: str | None = None,
    precision: Precision | None = None,
    engines_dir: str = "engines",
    calibration_wavs: list[Path] | None = None,
) -> int:
    """`asr-stream engines build MODEL [--profile FILE] [--variant V] [--precision P] [--calibration WAV ...]`."""
    model_directory(engines_dir, model)
    if calibration_wavs and model_family(model, engines_dir) != "whisper":
        raise EngineCacheError(f"INT8 calibration from speech files is implemented for Whisper models only, not {model}")
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
    model_directory(engines_dir, model)
    print(format_builds(list_builds(engines_dir, model), active_build(engines_dir, model)))
    return 0


def use_command(model: str, version: str, engines_dir: str = "engines") -> int:
    """`asr-stream engines use MODEL VERSION`: serve that build from now on (a rollback when it is older)."""
    model_directory(engines_dir, model)
    record = use_build(engines_dir, model, version)
    print(format_builds([record], record))
    return 0
