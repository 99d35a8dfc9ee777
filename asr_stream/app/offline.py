"""`asr-stream transcribe`: audio files in, transcripts on stdout, one line per file.

Any prepared or imported model (Whisper, Conformer-CTC) on any backend, loaded exactly as the
daemon loads it (`inference.runners.load_model`), with the full 30 s Whisper window.

Plain text by default; with `as_json` one object per file per line:
    {"file", "text", "language", "model", "engine", "segments": [{"start", "end", "text"[, "channel"]}]}
with times in seconds from the start of the file; "engine" is the backend.

Each channel of a multi-channel file is transcribed on its own (call recordings often put each
party on one channel); the channels go through the model as one batch. The file's text is the
channels' texts joined by a space in channel order; segments carry their "channel" so a reader
can interleave the parties by time. A silent channel (a party on hold) is skipped; a file whose
every channel is silent is an error.

Bad input (missing, not audio, truncated, empty, silent) prints one line on stderr naming the
file and the other files are still transcribed. Exit status: 0 all files done, 1 some file
failed, 2 the model, the backend or the language cannot be used at all.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from asr_stream.audio.wavfile import AudioFileError, load_audio
from asr_stream.errors import OperatorError
from asr_stream.inference.runners import Hypothesis, LoadedModel, load_model

# Below -60 dBFS peak there is nothing to transcribe; Whisper would only invent text ("you").
SILENCE_PEAK = 10 ** (-60 / 20)


def _error(message: str) -> None:
    print(f"asr-stream: {message}", file=sys.stderr)


def _as_json(path: str, channels: list[int], hypotheses: Sequence[Hypothesis], model: LoadedModel) -> str:
    multichannel = len(channels) > 1
    segments = []
    for channel, hypothesis in zip(channels, hypotheses):
        for segment in hypothesis.segments:
            entry = {"start": round(segment.start, 3), "end": round(segment.end, 3), "text": segment.text.strip()}
            segments.append(entry | {"channel": channel} if multichannel else entry)
    language = next((hypothesis.language for hypothesis in hypotheses if hypothesis.language), None)
    text = " ".join(hypothesis.text for hypothesis in hypotheses if hypothesis.text)
    record = {"file": path, "text": text, "language": language, "model": model.name, "engine": model.backend, "segments": segments}
    return json.dumps(record, ensure_ascii=False)


def _transcribe_file(model: LoadedModel, path: str, as_json: bool) -> bool:
    """Transcribe one file and print its line; False (after one line on stderr) if the input is bad."""
    try:
        audio, _ = load_audio(path)
    except AudioFileError as error:
        _error(str(error))
        return False
    channels = [channel for channel in range(audio.shape[0]) if np.abs(audio[channel]).max() >= SILENCE_PEAK]
    if not channels:
        _error(f"{path}: silent audio (peak below -60 dBFS), nothing to transcribe")
        return False
    hypotheses = model.transcribe_batch([audio[channel] for channel in channels])
    if as_json:
        print(_as_json(path, channels, hypotheses, model), flush=True)
    else:
        print(" ".join(hypothesis.text for hypothesis in hypotheses if hypothesis.text), flush=True)
    return True


def transcribe_files(
    files: Sequence[str | Path],
    model: str = "whisper-tiny.en",
    language: str | None = None,
    as_json: bool = False,
    timestamps: bool = False,
    engines_dir: str | Path = "engines",
    backend: str = "onnxruntime",
) -> int:
    """Transcribe `files` with `model` from `engines_dir` on `backend`; returns the exit status."""
    try:
        loaded = load_model(model, engines_dir, language, backend=backend, timestamps=timestamps)
    except OperatorError as error:  # the model, backend or language cannot be used: one line, exit 2
        _error(str(error))
        return 2
    ok = [_transcribe_file(loaded, str(path), as_json) for path in files]
    return 0 if all(ok) else 1
