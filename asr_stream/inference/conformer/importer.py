"""Bring your own NeMo Conformer-CTC / Parakeet-CTC: validate its files and install them under engines/<name>/.

The three files come out of a `.nemo` archive plus NeMo's own ONNX export (docs/conformer.md):
the graph (`audio_signal` [B, n_mels, T] + `length` [B] -> log-probs [B, T', V+1]), the
SentencePiece `tokenizer.model`, and `model_config.yaml` (or just its `preprocessor:` section).
The graph is run once on a probe input with ONNX Runtime (the CPU reference every machine has),
which checks it against the tokenizer and the mel settings and measures the subsampling factor,
so a mismatched set fails here, not on a live call.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import yaml

from asr_stream.audio.features_nemo import NemoMelSettings
from asr_stream.inference.conformer.frames import subsampled_lengths
from asr_stream.inference.conformer.manifest import (
    FEATURES_INPUT,
    GRAPH_FILE,
    LENGTH_INPUT,
    PREPROCESSOR_FILE,
    TOKENIZER_FILE,
    ConformerManifest,
)
from asr_stream.inference.conformer.tokenizer import SentencePieceTokenizer
from asr_stream.inference.models import ModelError, sha256_of
from asr_stream.inference.onnxruntime_backend import OnnxRuntimeEngine

# 2.56 s of features: each factor gives a distinct output length (x4 -> 64, x8 -> 32).
_PROBE_FRAMES = 256
_KNOWN_FACTORS = (2, 4, 8, 16)


def read_preprocessor(path: Path) -> NemoMelSettings:
    """Mel settings from a NeMo model_config.yaml, or from its `preprocessor:` section saved alone."""
    config = yaml.safe_load(Path(path).read_text())
    try:
        return NemoMelSettings.from_nemo_config(config.get("preprocessor", config))
    except ValueError as error:
        raise ModelError(f"{path}: {error}") from None


def probe_subsampling_factor(graph: Path, settings: NemoMelSettings, vocab_size: int) -> int:
    """Run the graph once on all-zero features; check it against the mel settings and the vocabulary; return its factor."""
    engine = OnnxRuntimeEngine.load(graph, threads=1)
    inputs = {spec.name: spec.shape for spec in engine.inputs}
    if set(inputs) != {FEATURES_INPUT, LENGTH_INPUT}:
        raise ModelError(f"{graph} takes inputs {sorted(inputs)}, not NeMo's {FEATURES_INPUT} and {LENGTH_INPUT}")
    if inputs[FEATURES_INPUT][1] != settings.n_mels:
        raise ModelError(f"{graph} takes {inputs[FEATURES_INPUT][1]} mel bands, the preprocessor makes {settings.n_mels}")
    feeds: dict[str, np.ndarray] = {
        FEATURES_INPUT: np.zeros((1, settings.n_mels, _PROBE_FRAMES), dtype=np.float32),
        LENGTH_INPUT: np.array([_PROBE_FRAMES], dtype=np.int64),
    }
    _, out_frames, classes = engine.run(feeds)[engine.outputs[0].name].shape
    if classes != vocab_size + 1:
        raise ModelError(f"{graph} emits {classes} classes; the tokenizer's {vocab_size} pieces + blank make {vocab_size + 1}")
    for factor in _KNOWN_FACTORS:
        if subsampled_lengths(_PROBE_FRAMES, factor) == out_frames:
            return factor
    raise ModelError(f"{graph} maps {_PROBE_FRAMES} frames to {out_frames}: not a NeMo x{'/x'.join(map(str, _KNOWN_FACTORS))} subsampling")


def _load_tokenizer(path: Path) -> SentencePieceTokenizer:
    try:
        return SentencePieceTokenizer(path)
    except RuntimeError as error:  # sentencepiece reports a missing or unparsable file this way
        raise ModelError(f"{path}: not a readable SentencePiece model ({error})") from None


def add_conformer(
    name: str, onnx_path: Path, tokenizer_path: Path, preprocessor_path: Path, engines_dir: Path, *, language: str | None = None
) -> Path:
    """Validate and copy a Conformer-CTC model into `engines_dir/name/`; return that directory.

    `language` (e.g. "en") is recorded for the transcript events: a NeMo config does not state it.

    Refuses to overwrite an existing model of that name. The directory appears complete or not at
    all (built beside it, then renamed), so a daemon never loads half an import.
    """
    target = Path(engines_dir) / name
    if target.exists():
        raise ModelError(f"{target} exists; remove it first to replace the model")
    settings = read_preprocessor(Path(preprocessor_path))
    tokenizer = _load_tokenizer(Path(tokenizer_path))
    factor = probe_subsampling_factor(Path(onnx_path), settings, tokenizer.vocab_size)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{name}."))
    staging.chmod(0o755)  # mkdtemp makes it owner-only; the result should read like any folder
    try:
        sources = {GRAPH_FILE: onnx_path, TOKENIZER_FILE: tokenizer_path, PREPROCESSOR_FILE: preprocessor_path}
        for file_name, source in sources.items():
            shutil.copyfile(source, staging / file_name)
        digests = {file_name: sha256_of([staging / file_name]) for file_name in sources}
        ConformerManifest(name, settings, factor, tokenizer.vocab_size, digests, language).write(staging)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
