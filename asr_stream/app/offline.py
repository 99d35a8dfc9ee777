"""`asr-stream transcribe`: audio files in, transcripts on stdout, one line per file.

Any prepared or imported model (Whisper, Conformer-CTC) on any backend, loaded exactly as the
daemon loads it (`inference.runners.load_model`), with the full 30 s Whisper window.

Plain text by default; with `as_json` one object per file per line:
    {"file", "text", "language", "model", "engine", "segments": [{"start", "end", "text"[, "channel"]}]}
with times in seconds from the start of the file; "engine" is the backend. SenseVoice's tags add
"emotion" and "event" (of the first channel that has them) when the model states them.

Chinese text (language zh or yue) is written in `chinese_script` (Simplified by default, OpenCC),
as the daemon writes it; `hotwords` are the terms of `--hotwords-file` (docs/mandarin.md).

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
from asr_stream.inference.hotwords import HotwordLists, read_hotwords_file
from asr_stream.inference.runners import Hypothesis, LoadedModel, load_model
from asr_stream.transcript.script import ChineseScript, ScriptConverter

# Below -60 dBFS peak there is nothing to transcribe; Whisper would only invent text ("you").
SILENCE_PEAK = 10 ** (-60 / 20)


def _error(message: str) -> None:
    print(f"asr-stream: {message}", file=sys.stderr)


def _as_json(path: str, channels: list[int], hypotheses: Sequence[Hypothesis], model: LoadedModel, script: ScriptConverter) -> str:
    multichannel = len(channels) > 1
    segments = []
    for channel, hypothesis in zip(channels, hypotheses):
        for segment in hypothesis.segments:
            text = script.convert(segment.text.strip(), hypothesis.language)
            entry = {"start": round(segment.start, 3), "end": round(segment.end, 3), "text": text}
            segments.append(entry | {"channel": channel} if multichannel else entry)
    language = next((hypothesis.language for hypothesis in hypotheses if hypothesis.language), None)
    record = {"file": path, "text": _text(hypotheses, script), "language": language, "model": model.name, "engine": model.backend}
    for tag in ("emotion", "event"):  # SenseVoice's tags; other families' hypotheses have no such attribute
        value = next((getattr(hypothesis, tag, None) for hypothesis in hypotheses if getattr(hypothesis, tag, None)), None)
        if value is not None:
            record[tag] = value
    return json.dumps(record | {"segments": segments}, ensure_ascii=False)


def _text(hypotheses: Sequence[Hypothesis], script: ScriptConverter) -> str:
    return " ".join(script.convert(hypothesis.text, hypothesis.language) for hypothesis in hypotheses if hypothesis.text)


def _transcribe_file(model: LoadedModel, path: str, as_json: bool, script: ScriptConverter) -> bool:
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
        print(_as_json(path, channels, hypotheses, model, script), flush=True)
    else:
        print(_text(hypotheses, script), flush=True)
    return True


def transcribe_files(
    files: Sequence[str | Path],
    model: str = "whisper-tiny.en",
    language: str | None = None,
    as_json: bool = False,
    timestamps: bool = False,
    engines_dir: str | Path = "engines",
    backend: str = "onnxruntime",
    chinese_script: ChineseScript = "simplified",
    hotwords_file: str | Path | None = None,
) -> int:
    """Transcribe `files` with `model` from `engines_dir` on `backend`; returns the exit status."""
    try:
        hotwords = HotwordLists(read_hotwords_file(hotwords_file)) if hotwords_file else HotwordLists()
        loaded = load_model(model, engines_dir, language, backend=backend, timestamps=timestamps, hotwords=hotwords)
    except OperatorError as error:  # the model, backend, language or hotwords cannot be used: one line, exit 2
        _error(str(error))
        return 2
    script = ScriptConverter(chinese_script)
    ok = [_transcribe_file(loaded, str(path), as_json, script) for path in files]
    return 0 if all(ok) else 1
