"""Load an audio file as float32 [channels, samples] at 16 kHz, for offline transcription.

Decoding uses `soundfile` (libsndfile, bundled in its wheels): it reads WAV PCM 8/16/24/32-bit,
float and double WAV, WAVE_FORMAT_EXTENSIBLE, mu-law/A-law WAV (common in telephony archives),
FLAC and Ogg. The stdlib `wave` module handles integer PCM only, not float WAV nor G.711 WAV.

Channels are kept apart because call recordings often put each party on its own channel.

libsndfile reads a WAV whose data chunk runs past the end of the file without complaint; a
recording cut short by a crash looks like that, so `load_audio` checks the RIFF data chunk
against the file size and reports it instead of silently transcribing half a call.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import soundfile

from asr_stream.audio.features import SAMPLE_RATE
from asr_stream.errors import OperatorError
from asr_stream.ingest.resample import resample

# Writers that stream to a pipe cannot seek back to fill in the data size and leave one of these.
_UNKNOWN_CHUNK_SIZES = (0, 0xFFFFFFFF)


class AudioFileError(OperatorError):
    """An audio file that cannot be used: missing, not audio, truncated or corrupt, or empty."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)
        self.reason = reason


def _wav_data_chunk(path: Path) -> tuple[int, int] | None:
    """(offset, declared size) of a RIFF/WAVE file's data chunk; None for other containers.

    Hand-written because the stdlib's `chunk` module is gone from Python 3.13 and `wave`
    refuses float and mu-law files before reaching the data chunk.
    """
    with path.open("rb") as handle:
        header = handle.read(12)
        if len(header) < 12 or header[:4] != b"RIFF" or header[8:12] != b"WAVE":
            return None
        offset = 12
        while chunk_header := handle.read(8):
            if len(chunk_header) < 8:
                return None
            chunk_id, size = struct.unpack("<4sI", chunk_header)
            offset += 8
            if chunk_id == b"data":
                return offset, size
            offset += size + (size & 1)  # RIFF chunks are padded to an even length
            handle.seek(offset)
    return None


def _check_not_truncated(path: Path) -> None:
    data_chunk = _wav_data_chunk(path)
    if data_chunk is None:
        return
    offset, declared = data_chunk
    available = path.stat().st_size - offset
    if declared not in _UNKNOWN_CHUNK_SIZES and declared > available:
        raise AudioFileError(path, f"truncated WAV: data chunk declares {declared} bytes, file holds {available}")


def load_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """Read `path` and return (float32 [channels, samples] at 16 kHz in [-1, 1], original sample rate).

    Raises AudioFileError when the file is missing, is not audio, is truncated or corrupt, or holds
    no samples.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioFileError(path, "no such file")
    try:
        samples, rate = soundfile.read(path, dtype="float32", always_2d=True)
    except soundfile.LibsndfileError as error:
        raise AudioFileError(path, f"not a readable audio file ({error.error_string})") from error
    _check_not_truncated(path)
    if samples.shape[0] == 0:
        raise AudioFileError(path, "no audio samples")
    return resample(samples.T, rate, SAMPLE_RATE), rate
