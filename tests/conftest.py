"""Fixtures shared across the suite: the shared speech clips and the prepared Whisper graphs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from asr_stream.audio.wavfile import load_audio

REPO = Path(__file__).resolve().parents[1]
SPEECH = REPO.parent / "shared" / "speech"
ENGINES = REPO / "engines"


@pytest.fixture(scope="session")
def speech_clips() -> list[dict]:
    """Rows of shared/speech/manifest.jsonl, each with "wav" added (absolute path)."""
    rows = [json.loads(line) for line in (SPEECH / "manifest.jsonl").read_text().splitlines() if line.strip()]
    return [row | {"wav": SPEECH / row["path_wav16k"]} for row in rows]


@pytest.fixture(scope="session")
def english_clips(speech_clips: list[dict]) -> list[dict]:
    return [row for row in speech_clips if row["lang"] == "en"]


def load_mono(path: Path) -> np.ndarray:
    """First channel of a speech clip as float32 at 16 kHz."""
    audio, _ = load_audio(path)
    return audio[0]


@pytest.fixture(scope="session")
def engines_dir() -> Path:
    """The repo's engines/ with whisper-tiny.en prepared (`make test` does it first; a no-op then)."""
    from asr_stream.inference.models import prepare_model

    prepare_model("whisper-tiny.en", engines_dir=ENGINES)
    return ENGINES
