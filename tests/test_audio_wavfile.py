"""load_audio: formats, channels, resampling to 16 kHz, and every AudioFileError case."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile

from asr_stream.audio.wavfile import AudioFileError, load_audio
from asr_stream.ingest.resample import resample

SPEECH = Path(__file__).resolve().parents[1].parent / "shared" / "speech"


def _tone(rate: int, seconds: float = 0.5, freq_hz: float = 440.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (0.5 * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)


@pytest.mark.parametrize(
    ("subtype", "tolerance"),
    [("PCM_U8", 1 / 64), ("PCM_16", 1e-4), ("PCM_24", 1e-6), ("PCM_32", 1e-6), ("FLOAT", 1e-7), ("DOUBLE", 1e-7), ("ULAW", 0.02)],
)
def test_reads_wav_sample_formats(tmp_path: Path, subtype: str, tolerance: float) -> None:
    path = tmp_path / f"{subtype}.wav"
    tone = _tone(16000)
    soundfile.write(path, tone, 16000, subtype=subtype)
    audio, rate = load_audio(path)
    assert rate == 16000
    assert audio.dtype == np.float32 and audio.shape == (1, tone.shape[0])
    np.testing.assert_allclose(audio[0], tone, atol=tolerance)


def test_resamples_to_16k_and_keeps_channels_apart(tmp_path: Path) -> None:
    path = tmp_path / "stereo8k.wav"
    stereo = np.stack([_tone(8000, freq_hz=300.0), _tone(8000, freq_hz=1200.0)])
    soundfile.write(path, stereo.T, 8000, subtype="PCM_16")
    audio, rate = load_audio(path)
    assert rate == 8000
    assert audio.shape == (2, 8000)
    np.testing.assert_allclose(audio, resample(stereo, 8000, 16000), atol=1e-3)


def test_reads_flac(tmp_path: Path) -> None:
    path = tmp_path / "tone.flac"
    soundfile.write(path, _tone(48000), 48000)
    audio, rate = load_audio(path)
    assert (rate, audio.shape) == (48000, (1, 8000))


def test_reads_the_shared_speech_clips() -> None:
    clip = sorted((SPEECH / "wav16k").glob("*.wav"))[0]
    audio, rate = load_audio(clip)
    assert rate == 16000 and audio.shape[0] == 1
    assert 0.01 < float(np.abs(audio).max()) <= 1.0


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(AudioFileError, match="no such file") as caught:
        load_audio(tmp_path / "absent.wav")
    assert caught.value.path == tmp_path / "absent.wav"


def test_not_audio(tmp_path: Path) -> None:
    path = tmp_path / "notes.wav"
    path.write_text("these are meeting notes, not audio\n" * 20)
    with pytest.raises(AudioFileError, match="not a readable audio file"):
        load_audio(path)


def test_truncated_wav(tmp_path: Path) -> None:
    path = tmp_path / "cut.wav"
    soundfile.write(path, _tone(16000, seconds=1.0), 16000, subtype="PCM_16")
    path.write_bytes(path.read_bytes()[:20000])
    with pytest.raises(AudioFileError, match="truncated"):
        load_audio(path)


def test_header_only_wav_is_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "header.wav"
    soundfile.write(path, _tone(16000), 16000, subtype="PCM_16")
    path.write_bytes(path.read_bytes()[:30])  # cut inside the fmt chunk: no data chunk at all
    with pytest.raises(AudioFileError, match="not a readable audio file"):
        load_audio(path)


def test_zero_length_wav(tmp_path: Path) -> None:
    path = tmp_path / "empty.wav"
    soundfile.write(path, np.zeros(0, np.float32), 16000, subtype="PCM_16")
    with pytest.raises(AudioFileError, match="no audio samples"):
        load_audio(path)


def test_zero_byte_file(tmp_path: Path) -> None:
    path = tmp_path / "zero.wav"
    path.write_bytes(b"")
    with pytest.raises(AudioFileError):
        load_audio(path)


def test_streamed_wav_with_unknown_data_size_is_accepted(tmp_path: Path) -> None:
    """Writers on a pipe leave the data size as 0xFFFFFFFF; that is not truncation."""
    path = tmp_path / "piped.wav"
    soundfile.write(path, _tone(16000), 16000, subtype="PCM_16")
    raw = bytearray(path.read_bytes())
    data_at = raw.index(b"data") + 4
    raw[data_at : data_at + 4] = b"\xff\xff\xff\xff"
    path.write_bytes(bytes(raw))
    audio, _ = load_audio(path)
    assert audio.shape == (1, 8000)
