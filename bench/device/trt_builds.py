"""Device side: build every shipped ONNX graph with every shipped profile under the installed TensorRT.

Why a script and not a test: it needs a GPU and TensorRT (TensorRT-RTX, staged by stash.sh), and
its product is a table for docs/benchmarks.md ("## TensorRT builds"): build time and engine size
per graph, profile variant and precision, and every failure with its cause. Whisper graphs come
from `asr-stream models prepare` (run here; it does nothing where done); the Conformer-CTC is a small randomly
initialised NeMo-style export (`conformer.export.write_export_dir`) installed with `models add conformer`, and SenseVoice/Paraformer are small randomly initialised FunASR
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

from asr_stream.inference.engine import Precision
from asr_stream.inference.models import prepare_model
from asr_stream.inference.profiles import ProfileError, load_profile, variants
from asr_stream.inference.tensorrt.build import build_engines
from asr_stream.inference.tensorrt.cache import EngineCacheError, list_builds, load_trt

PRECISIONS: tuple[Precision, ...] = ("fp32", "fp16", "int8")  # int8 too: where it cannot be built, the row says why


def install_conformer(engines_dir: Path) -> str:
    """A random Conformer-CTC exported as a NeMo user hands it over and installed with `models add conformer`."""
    from asr_stream.inference.conformer.export import write_export_dir
    from asr_stream.inference.conformer.importer import add_conformer

    texts = ["press the pound key", "the street light is broken", "my water has been off since monday"]
    _, graph, tokenizer, preprocessor = write_export_dir(engines_dir / ".conformer-export", texts, vocab_size=32)
    add_conformer("conformer-ctc", graph, tokenizer, preprocessor, engines_dir, language="en")
    return "conformer-ctc"


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
    for model in args.models:  # the Whisper graphs, exported here unless already (about 30 s each)
        print(prepare_model(model, engines_dir=args.engines_dir), flush=True)
    families = [install_conformer(args.engines_dir), *(install_funasr(args.engines_dir, family) for family in ("sensevoice", "paraformer"))]
    everything = [*args.models, *families]
    rows = build_all(args.engines_dir, everything)
    builds = {model: len(list_builds(args.engines_dir, model)) for model in everything}
    args.out.write_text(json.dumps({"tensorrt": f"{trt.__name__} {trt.__version__}", "rows": rows, "builds_kept": builds}, indent=2))


if __name__ == "__main__":
    main()
