"""Bring your own SenseVoice or Paraformer: validate a FunASR ONNX export directory, install it under engines/<name>/.

The directory is what FunASR's `AutoModel(model=...).export(type="onnx"[, quantize=True])` writes
next to the model, the layout FunASR's runtimes read: `model.onnx` and/or `model_quant.onnx`,
`tokens.json` (or sherpa-onnx's `tokens.txt`), `am.mvn`, `config.yaml`. One command installs it;
every mismatch is refused here with one line, not on a live call: a missing file, a config for the
other family, front-end settings that are not reproduced, a CMVN of the wrong width, a graph whose
inputs, outputs or vocabulary do not match. The graph is run once with ONNX Runtime on a probe
input to check what its declaration cannot (the classes against the token list, SenseVoice's four
query frames).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import yaml

from asr_stream.audio.features_kaldi import Cmvn, FrontEndError, KaldiFbankSettings
from asr_stream.inference.funasr.manifest import (
    CMVN_FILE,
    CONFIG_FILE,
    GRAPH_FILE,
    INPUTS,
    LANGUAGE,
    OUTPUTS,
    SENSEVOICE,
    SPEECH,
    SPEECH_LENGTHS,
    TEXT_NORMS,
    TEXTNORM,
    TOKENS_FILE,
    FunasrManifest,
)
from asr_stream.inference.funasr.runner import SENSEVOICE_LANGUAGE_IDS, SENSEVOICE_QUERY_FRAMES, SENSEVOICE_TEXTNORM_IDS
from asr_stream.inference.funasr.tokens import TokenError, TokenTable, read_tokens
from asr_stream.inference.models import ModelError, sha256_of

QUANTIZED_GRAPH = "model_quant.onnx"
TOKEN_FILES = ("tokens.json", "tokens.txt")
# config.yaml `model:` of each family; contextual (hotword-encoder) Paraformers need a second graph.
MODEL_CLASSES = {SENSEVOICE: ("SenseVoiceSmall",), "paraformer": ("Paraformer", "BiCifParaformer", "ParaformerBert")}
CONTEXTUAL_CLASSES = ("ContextualParaformer", "SeacoParaformer")
_PROBE_FRAMES = 20
_INT_TYPES = ("tensor(int32)", "tensor(int64)")


def _require(directory: Path, *names: str) -> Path:
    for name in names:
        if (directory / name).is_file():
            return directory / name
    raise ModelError(f"{directory} has no {' or '.join(names)}: not a FunASR ONNX export directory (docs/mandarin.md)")


def _read_config(path: Path, family: str) -> dict[str, Any]:
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise ModelError(f"{path}: not readable YAML ({str(error).splitlines()[0]})") from None
    if not isinstance(config, dict) or not isinstance(config.get("frontend_conf"), dict):
        raise ModelError(f"{path}: no frontend_conf section: not a FunASR model config")
    model_class = str(config.get("model", ""))
    if model_class in CONTEXTUAL_CLASSES or (path.parent / "model_eb.onnx").exists():
        raise ModelError(
            f"{path}: {model_class or 'a contextual Paraformer'} (with a hotword encoder graph) is not supported; export a plain Paraformer"
        )
    if model_class not in MODEL_CLASSES[family]:
        other = next((name for name, classes in MODEL_CLASSES.items() if model_class in classes), None)
        hint = f": add it with `asr-stream models add {other}`" if other else ""
        raise ModelError(f"{path} describes model {model_class or '(none)'}, not a {family} model{hint}")
    return config


def _probe(graph: Path, family: str, feature_dim: int, vocab_size: int) -> None:
    """Check the graph's signature against FunASR's and run it once on a probe input."""
    try:
        session = onnxruntime.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    except Exception as error:  # ONNX Runtime reports unreadable graphs with its own exception types
        raise ModelError(f"{graph}: ONNX Runtime cannot load it ({str(error).splitlines()[0]})") from None
    inputs = {arg.name: arg for arg in session.get_inputs()}
    if sorted(inputs) != sorted(INPUTS[family]):
        raise ModelError(f"{graph} takes inputs {sorted(inputs)}, not FunASR's {family} export's {list(INPUTS[family])}")
    outputs = [arg.name for arg in session.get_outputs()]
    if len(outputs) < 2:
        raise ModelError(f"{graph} has outputs {outputs}, not FunASR's {family} export's {list(OUTPUTS[family])}")
    width = inputs[SPEECH].shape[-1]
    if inputs[SPEECH].type != "tensor(float)" or len(inputs[SPEECH].shape) != 3 or (isinstance(width, int) and width != feature_dim):
        raise ModelError(
            f"{graph}: input speech is {inputs[SPEECH].type} {inputs[SPEECH].shape}, the front end makes float [batch, frames, {feature_dim}]"
        )
    integer_inputs = [name for name in (SPEECH_LENGTHS, LANGUAGE, TEXTNORM) if name in inputs]
    for name in integer_inputs:
        if inputs[name].type not in _INT_TYPES:
            raise ModelError(f"{graph}: input {name} is {inputs[name].type}, FunASR's is an integer tensor")
    feeds = {SPEECH: np.zeros((1, _PROBE_FRAMES, feature_dim), np.float32)}
    feeds |= {name: np.array([_PROBE_FRAMES], np.int32 if inputs[name].type == "tensor(int32)" else np.int64) for name in integer_inputs}
    if family == SENSEVOICE:
        feeds[LANGUAGE][0], feeds[TEXTNORM][0] = SENSEVOICE_LANGUAGE_IDS["zh"], SENSEVOICE_TEXTNORM_IDS["woitn"]
    try:
        scores, counts = session.run(outputs[:2], feeds)
    except Exception as error:
        raise ModelError(f"{graph}: fails on a probe input ({str(error).splitlines()[0]})") from None
    if scores.ndim != 3 or scores.shape[-1] != vocab_size:
        raise ModelError(f"{graph} emits {scores.shape[-1] if scores.ndim == 3 else scores.shape} classes; the token list has {vocab_size}")
    if family == SENSEVOICE and (scores.shape[1], int(counts[0])) != (_PROBE_FRAMES + SENSEVOICE_QUERY_FRAMES,) * 2:
        raise ModelError(
            f"{graph} maps {_PROBE_FRAMES} frames to {scores.shape[1]}: not SenseVoice's {SENSEVOICE_QUERY_FRAMES} query frames in front"
        )


def add_funasr_model(
    family: str,
    name: str,
    source: Path,
    engines_dir: Path,
    *,
    quantized: bool | None = None,
    language: str | None = None,
    itn: bool = False,
) -> Path:
    """Validate a FunASR export directory and install it as `engines_dir/name/`; return that directory.

    `quantized`: True takes model_quant.onnx, False model.onnx, None model.onnx if present.
    `language`: SenseVoice: fix the language (None: the model detects it per utterance);
    Paraformer: what it speaks (default zh, or en for an `en-bpe` config). `itn`: SenseVoice writes
    punctuation and digits (its `withitn` mode). Refuses to overwrite an existing model; the
    directory appears complete or not at all.
    """
    source, target = Path(source), Path(engines_dir) / name
    if target.exists():
        raise ModelError(f"{target} exists; remove it first to replace the model")
    if not source.is_dir():
        raise ModelError(f"{source} is not a directory: pass the FunASR export directory with --dir")
    graph = _require(source, *((QUANTIZED_GRAPH,) if quantized else (GRAPH_FILE,) if quantized is False else (GRAPH_FILE, QUANTIZED_GRAPH)))
    token_path, cmvn_path, config_path = _require(source, *TOKEN_FILES), _require(source, CMVN_FILE), _require(source, CONFIG_FILE)
    config = _read_config(config_path, family)
    try:
        settings = KaldiFbankSettings.from_funasr_config(config["frontend_conf"])
        cmvn = Cmvn.read(cmvn_path)
        tokens = TokenTable(read_tokens(token_path))
    except (FrontEndError, TokenError) as error:
        raise ModelError(str(error)) from None
    if cmvn.dim != settings.feature_dim:
        raise ModelError(f"{cmvn_path} normalises {cmvn.dim} values; the front end makes {settings.feature_dim} (n_mels x lfr_m)")
    if family == SENSEVOICE:
        language = None if language == "auto" else language
        if language is not None and language not in SENSEVOICE_LANGUAGE_IDS:
            raise ModelError(
                f"SenseVoice transcribes {', '.join(sorted(set(SENSEVOICE_LANGUAGE_IDS) - {'auto', 'nospeech'}))}, not {language!r}"
            )
        if tokens.ids.get("<|zh|>") is None:
            raise ModelError(f"{token_path} lacks SenseVoice's tags (<|zh|>, <|NEUTRAL|>, ...): not a SenseVoice token list")
    else:
        language = language or ("en" if str(config.get("lang", "")).startswith("en") else "zh")
    _probe(graph, family, settings.feature_dim, len(tokens))
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{name}."))
    staging.chmod(0o755)  # mkdtemp makes it owner-only; the result should read like any folder
    try:
        shutil.copyfile(graph, staging / GRAPH_FILE)
        shutil.copyfile(cmvn_path, staging / CMVN_FILE)
        shutil.copyfile(config_path, staging / CONFIG_FILE)
        (staging / TOKENS_FILE).write_text(json.dumps(list(tokens.pieces), ensure_ascii=False), encoding="utf-8")  # one format installed
        digests = {file: sha256_of([staging / file]) for file in (GRAPH_FILE, CMVN_FILE, CONFIG_FILE, TOKENS_FILE)}
        bias = int((config.get("model_conf") or {}).get("predictor_bias", 0)) if family != SENSEVOICE else 0
        text_norm = TEXT_NORMS[1] if itn else TEXT_NORMS[0]
        FunasrManifest(family, name, settings, len(tokens), digests, graph.name, language, text_norm, bias).write(staging)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
