"""Bring your own NeMo Conformer-CTC / Parakeet-CTC: validate its files and install them under engines/<name>/.

The three files come out of a `.nemo` archive plus NeMo's own ONNX export (docs/conformer.md):
the graph (`audio_signal` [B, n_mels, T] + `length` [B] -> log-probs [B, T', V+1]), the
SentencePiece `tokenizer.model`, and `model_config.yaml` (or just its `preprocessor:` section).
The graph is run once on a probe input, which checks its signature against the tokenizer and the
mel settings and measures the subsampling factor, so a mismatched set fails here, not on a call.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path

import numpy as np
import yaml

from asr_stream.audio.features_nemo import NemoMelSettings
from asr_stream.inference.conformer.manifest import GRAPH_NAME, PREPROCESSOR_NAME, TOKENIZER_NAME, ConformerManifest
from asr_stream.inference.conformer.session import open_graph
from asr_stream.inference.conformer.tokenizer import SentencePieceTokenizer

# 2.56 s of features: long enough that the output length reveals the factor exactly (x4 -> 64, x8 -> 32).
_PROBE_FRAMES = 256


def read_preprocessor(path: Path) -> NemoMelSettings:
    """Mel settings from a NeMo model_config.yaml, or from its `preprocessor:` section saved alone."""
    config = yaml.safe_load(path.read_text())
    return NemoMelSettings.from_nemo_config(config.get("preprocessor", config))


def probe_subsampling_factor(graph_path: Path, settings: NemoMelSettings, vocab_size: int) -> int:
    """Run the graph once on silence-like features; return frames in per frame out, checking the vocabulary."""
    graph = open_graph(graph_path)
    audio_signal = np.zeros((1, settings.n_mels, _PROBE_FRAMES), dtype=np.float32)
    log_probs = graph.run({"audio_signal": audio_signal, "length": np.array([_PROBE_FRAMES], dtype=np.int64)})
    _, out_frames, classes = log_probs.shape
    if classes != vocab_size + 1:
        raise ValueError(f"graph emits {classes} classes, the tokenizer has {vocab_size} pieces (+1 blank expected)")
    factor = round(_PROBE_FRAMES / out_frames)
    if factor < 1 or factor & (factor - 1):
        raise ValueError(f"graph maps {_PROBE_FRAMES} frames to {out_frames}: not a power-of-two subsampling")
    return factor


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def add_conformer(name: str, onnx_path: Path, tokenizer_path: Path, preprocessor_path: Path, engines_dir: Path) -> Path:
    """Validate and copy a Conformer-CTC model into `engines_dir/name/`; return that directory.

    Refuses to overwrite an existing model of that name. The directory appears complete or not at
    all (built beside it, then renamed), so a daemon never loads half an import.
    """
    target = Path(engines_dir) / name
    if target.exists():
        raise FileExistsError(f"{target} exists; remove it first to replace the model")
    settings = read_preprocessor(Path(preprocessor_path))
    tokenizer = SentencePieceTokenizer(Path(tokenizer_path))
    factor = probe_subsampling_factor(Path(onnx_path), settings, tokenizer.vocab_size)
    target.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{name}."))
    try:
        for source, file_name in ((onnx_path, GRAPH_NAME), (tokenizer_path, TOKENIZER_NAME), (preprocessor_path, PREPROCESSOR_NAME)):
            shutil.copyfile(source, staged / file_name)
        digests = {f: _sha256(staged / f) for f in (GRAPH_NAME, TOKENIZER_NAME, PREPROCESSOR_NAME)}
        ConformerManifest(name, settings, factor, tokenizer.vocab_size, digests).write(staged)
        staged.rename(target)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    return target
