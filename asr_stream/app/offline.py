"""`asr-stream transcribe`: audio files in, transcripts on stdout, one line per file.

Plain text by default; with `as_json` one object per file per line:
    {"file", "text", "language", "model", "engine", "segments": [{"start", "end", "text"[, "channel"]}]}
with times in seconds from the start of the file.

Each channel of a multi-channel file is transcribed on its own (call recordings often put each
party on one channel); the channels go through the model as one batch. The file's text is the
channels' texts joined by a space in channel order; segments carry their "channel" so a reader
can interleave the parties by time. A silent channel (a party on hold) is skipped; a file whose
every channel is silent is an error.

Bad input (missing, not audio, truncated, empty, silent) prints one line on stderr naming the
file and the other files are still transcribed. Exit status: 0 all files done, 1 some file
failed, 2 the model or the language cannot be used at all.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from asr_stream.audio.wavfile import AudioFileError, load_audio
from asr_stream.inference.models import ModelError, load_prepared
from asr_stream.inference.onnxruntime_backend import OnnxRuntimeEngine
from asr_stream.inference.whisper.runner import Transcript, WhisperRunner

# Below -60 dBFS peak there is nothing to transcribe; Whisper would only invent text ("you").
SILENCE_PEAK = 10 ** (-60 / 20)


def _error(message: str) -> None:
    print(f"asr-stream: {message}", file=sys.stderr)


def _as_json(path: str, channels: list[int], transcripts: list[Transcript], model: str) -> str:
    multichannel = len(channels) > 1
    segments = []
    for channel, transcript in zip(channels, transcripts):
        for segment in transcript.segments:
            entry = {"start": round(segment.start, 3), "end": round(segment.end, 3), "text": segment.text.strip()}
            segments.append(entry | {"channel": channel} if multichannel else entry)
    language = next((transcript.language for transcript in transcripts if transcript.language), None)
    text = " ".join(transcript.text for transcript in transcripts if transcript.text)
    record = {"file": path, "text": text, "language": language, "model": model, "engine": OnnxRuntimeEngine.backend, "segments": segments}
    return json.dumps(record, ensure_ascii=False)


def _transcribe_file(runner: WhisperRunner, path: str, language: str | None, timestamps: bool, model: str, as_json: bool) -> bool:
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
    transcripts = runner.transcribe_batch([audio[channel] for channel in channels], language=language, timestamps=timestamps)
    if as_json:
        print(_as_json(path, channels, transcripts, model), flush=True)
    else:
        print(" ".join(transcript.text for transcript in transcripts if transcript.text), flush=True)
    return True


def transcribe_files(
    files: Sequence[str | Path],
    model: str = "whisper-tiny.en",
    language: str | None = None,
    as_json: bool = False,
    timestamps: bool = False,
    engines_dir: str | Path = "engines",
) -> int:
    """Transcribe `files` with `model` prepared under `engines_dir`; returns the exit status."""
    try:
        runner = WhisperRunner.from_prepared(load_prepared(model, engines_dir), OnnxRuntimeEngine.load)
    except ModelError as error:
        _error(str(error))
        return 2
    if language is not None and not runner.tokenizer.supports(language):
        _error(f"model {model} cannot transcribe language {language!r}")
        return 2
    ok = [_transcribe_file(runner, str(path), language, timestamps, model, as_json) for path in files]
    return 0 if all(ok) else 1
