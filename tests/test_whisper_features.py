"""Our numpy log-mel against an independent torch.stft rendering of openai-whisper's recipe."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import load_mono
from faster_whisper.feature_extractor import FeatureExtractor

from asr_stream.audio.features import HOP_LENGTH, N_FFT, N_SAMPLES, log_mel_spectrogram


def openai_log_mel(audio: np.ndarray, n_mels: int) -> np.ndarray:
    """openai-whisper's audio.log_mel_spectrogram, with faster-whisper's mel filterbank."""
    window = torch.zeros(N_SAMPLES)
    clip = torch.from_numpy(audio[:N_SAMPLES])
    window[: len(clip)] = clip
    stft = torch.stft(window, N_FFT, HOP_LENGTH, window=torch.hann_window(N_FFT), return_complex=True)
    magnitudes = stft[..., :-1].abs() ** 2
    filters = torch.from_numpy(FeatureExtractor.get_mel_filters(16000, N_FFT, n_mels=n_mels)).float()
    log_spec = torch.clamp(filters @ magnitudes, min=1e-10).log10()
    log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
    return ((log_spec + 4.0) / 4.0).numpy()


@pytest.mark.parametrize("n_mels", [80, 128])
def test_log_mel_matches_reference(english_clips: list[dict], n_mels: int):
    for row in english_clips[::8]:
        audio = load_mono(row["wav"])
        ours = log_mel_spectrogram(audio, n_mels=n_mels)
        assert ours.shape == (n_mels, 3000)
        assert np.abs(ours - openai_log_mel(audio, n_mels)).max() < 1e-4, row["id"]
