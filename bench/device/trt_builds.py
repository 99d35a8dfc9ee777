"""Device side: build every shipped ONNX graph with every shipped profile under the installed TensorRT.

Why a script and not a test: it needs a GPU and TensorRT (TensorRT-RTX, staged by stash.sh), and
its product is a table for docs/benchmarks.md ("## TensorRT builds"): build time and engine size
per graph, profile variant and precision, and every failure with its cause. Whisper graphs come
from `asr-stream models prepare`; the Conformer-CTC graph is a small randomly initialised export
from the Conformer export code, and SenseVoice/Paraformer are small randomly initialised FunASR
export directories (`funasr.export.write_export_dir`) installed with `models add`, as a user's real
export would be (only the graphs' interfaces and shapes matter to the builder).

    python bench/device/trt_builds.py --engines-dir engines --models whisper-tiny.en whisper-base --out $OUT/trt_builds.json
"""

from __future__ import annotations

import argparse
import json
import time
import traceback
from pathlib import Path

from asr_stream.inference.profiles import ProfileError, load_profile, variants
from asr_stream.inference.tensorrt.build import build_engines
from asr_stream.inference.tensorrt.cache import EngineCacheError, list_builds, load_trt

PRECISIONS = ("fp32", "fp16", "int8")  # int8 too: where it cannot be built, the row says why


def export_conformer(engines_dir: Path) -> Path:
    """A random Conformer-CTC at the profile's mel count, exported with the Conformer export code."""
    import torch

    from asr_stream.inference.conformer.export import export_onnx
    from asr_stream.inference.conformer.model import ConformerConfig, ConformerCTC

    torch.manual_seed(0)
    directory = engines_dir / "conformer-ctc"
    directory.mkdir(parents=True, exist_ok=True)
    return export_onnx(ConformerCTC(ConformerConfig(vocab_size=128)), directory / "model.onnx")


def install_funasr(engines_dir: Path, family: str) -> str:
    """A random export of `family` installed as `engines_dir/<family>/` (the name its shipped profile has)."""
    from asr_stream.inference.funasr.export import write_export_dir
    from asr_stream.inference.funasr.importer import add_funasr_model

    texts = ["你好我家停水了", "路灯坏了请派人来修", "hello the street light is broken"]  # the tokens file's vocabulary
    source = write_export_dir(engines_dir / f".{family}-export", family, texts)
    add_funasr_model(family, family, source, engines_dir)
    return family


def build_all(engines_dir: Path, models: list[str]) -> list[dict[str, object]]:
    rows = []
    for model in models:
        profile_path = Path("profiles") / f"{model}.yaml"
        for variant in variants(profile_path):
            for precision in PRECISIONS:
                row: dict[str, object] = {"model": model, "variant": variant, "precision": precision}
                started = time.perf_counter()
                try:
                    record = build_engines(model, load_profile(profile_path, variant, precision), engines_dir, activate=False)
                    row["graphs"] = {
                        graph: {"seconds": build.build_seconds, "mib": round(build.plan_bytes / 2**20, 1)}
                        for graph, build in record.graphs.items()
                    }
                    row["key"] = record.key
                except (EngineCacheError, ProfileError) as error:
                    row["error"] = str(error)
                except Exception as error:  # a builder crash is a result to report, not a reason to stop
                    row["error"] = f"{type(error).__name__}: {error}"
                    traceback.print_exc()
                row["total_seconds"] = round(time.perf_counter() - started, 1)
                print(json.dumps(row), flush=True)
                rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines-dir", type=Path, default=Path("engines"))
    parser.add_argument("--models", nargs="+", default=["whisper-tiny.en", "whisper-base"])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    trt = load_trt()
    print(f"{trt.__name__} {trt.__version__}", flush=True)
    export_conformer(args.engines_dir)
    families = [install_funasr(args.engines_dir, family) for family in ("sensevoice", "paraformer")]
    everything = [*args.models, "conformer-ctc", *families]
    rows = build_all(args.engines_dir, everything)
    builds = {model: len(list_builds(args.engines_dir, model)) for model in everything}
    args.out.write_text(json.dumps({"tensorrt": f"{trt.__name__} {trt.__version__}", "rows": rows, "builds_kept": builds}, indent=2))


if __name__ == "__main__":
    main()
