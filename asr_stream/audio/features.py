"""Whisper's log-mel spectrogram in numpy (no torch, no librosa at run time).

The recipe follows openai-whisper's `audio.py`: 16 kHz, n_fft 400, hop 160, periodic Hann,
centred reflect-padded STFT, |X|^2 with the last frame dropped, Slaney-normalised mel filters,
log10(max(x, 1e-10)), clamp to (max - 8), then (x + 4) / 4.

Padding convention (pinned by tests): the *waveform* is zero-padded (or trimmed) to the model
window before the STFT, and the max - 8 clamp is taken over that whole window. Whisper was trained
on 30 s windows built this way; computing the clamp per VAD chunk instead changes the features.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from asr_stream.ingest.types import SAMPLE_RATE

N_FFT = 400
HOP_LENGTH = 160
CHUNK_SECONDS = 30
N_SAMPLES = CHUNK_SECONDS * SAMPLE_RATE  # 480000 samples in a 30 s window
N_FRAMES = N_SAMPLES // HOP_LENGTH  # 3000 mel frames in a 30 s window


def _hz_to_mel(freqs: np.ndarray) -> np.ndarray:
    """Slaney mel scale: linear below 1 kHz, logarithmic above (librosa's default, htk=False)."""
    f_sp = 200.0 / 3
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, np.log(6.4) / 27.0
    freqs = np.asarray(freqs, dtype=np.float64)
    mels = freqs / f_sp
    high = freqs >= min_log_hz
    mels[high] = min_log_mel + np.log(freqs[high] / min_log_hz) / logstep
    return mels


def _mel_to_hz(mels: np.ndarray) -> np.ndarray:
    f_sp = 200.0 / 3
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, np.log(6.4) / 27.0
    mels = np.asarray(mels, dtype=np.float64)
    freqs = f_sp * mels
    high = mels >= min_log_mel
    freqs[high] = min_log_hz * np.exp(logstep * (mels[high] - min_log_mel))
    return freqs


@lru_cache(maxsize=4)
def mel_filters(n_mels: int, sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT) -> np.ndarray:
    """Slaney-normalised triangular filters [n_mels, n_fft//2 + 1], equal to librosa.filters.mel."""
    fft_freqs = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    mel_points = _mel_to_hz(np.linspace(_hz_to_mel(np.array([0.0]))[0], _hz_to_mel(np.array([sample_rate / 2]))[0], n_mels + 2))
    widths = np.diff(mel_points)
    ramps = mel_points[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_points[2 : n_mels + 2] - mel_points[:n_mels]))[:, None]
    return weights.astype(np.float32)


@lru_cache(maxsize=1)
def _hann(n_fft: int = N_FFT) -> np.ndarray:
    return (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)).astype(np.float32)


def fit_window(audio: np.ndarray, n_samples: int = N_SAMPLES) -> np.ndarray:
    """Zero-pad or trim a mono float waveform to exactly `n_samples` (the model window)."""
    audio = np.asarray(audio, dtype=np.float32)
    if audio.shape[-1] >= n_samples:
        return audio[..., :n_samples]
    return np.pad(audio, [(0, 0)] * (audio.ndim - 1) + [(0, n_samples - audio.shape[-1])])


def log_mel_spectrogram(audio: np.ndarray, n_mels: int = 80, n_samples: int = N_SAMPLES) -> np.ndarray:
    """Log-mel features [n_mels, n_samples // 160] of one window of 16 kHz mono audio.

    `audio` is float32 in [-1, 1]; it is fitted to `n_samples` first (see the module docstring).
    """
    window = fit_window(audio, n_samples)
    padded = np.pad(window, N_FFT // 2, mode="reflect")
    n_frames = 1 + (padded.shape[0] - N_FFT) // HOP_LENGTH
    frames = np.lib.stride_tricks.as_strided(
        padded, shape=(n_frames, N_FFT), strides=(padded.strides[0] * HOP_LENGTH, padded.strides[0]), writeable=False
    )
    spectrum = np.fft.rfft(frames * _hann(), axis=-1)
    power = (spectrum.real**2 + spectrum.imag**2)[:-1].astype(np.float32)  # drop the last frame, as Whisper does
    mel = mel_filters(n_mels) @ power.T
    log_spec = np.log10(np.maximum(mel, 1e-10))
    log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
    return ((log_spec + 4.0) / 4.0).astype(np.float32)
