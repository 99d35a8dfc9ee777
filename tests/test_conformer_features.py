"""NeMo log-mel in numpy against a torch transcription of NeMo's FilterbankFeatures.forward.

The reference below follows NeMo's code path (time-masked pre-emphasis, torch.stft with a
symmetric Hann window and constant padding, magnitude then power, log(x + 2^-24), N // hop valid
frames, per_feature normalisation over them), so it checks our framing, window placement,
pre-emphasis and normalisation independently. The mel filterbank is shared:
`asr_stream.audio.features.mel_filters` is already pinned to librosa's.

Tolerances, absolute, on normalised features (values of order 1), measured over all 42 clips:
- wideband clips: at most 3.4e-5; the test allows 2e-4;
- narrowband clips (8 kHz telephone audio upsampled to 16 kHz): up to 5.9e-3, in the empty mel
  bands above 4 kHz. There the power is near zero, and log() and the bands' small standard
  deviation magnify float32 rounding. torch's float32 result is itself 7.1e-3 away from a
  float64 computation, so this is float32 noise, not a recipe difference. The test allows 1e-2.
"""

from __future__ import annotations

import json
import wave
from pathlib import Path

import numpy as np
import pytest
import torch

from asr_stream.audio.features import mel_filters
from asr_stream.audio.features_nemo import NEMO_PREPROCESSOR, NemoMelSettings, batch_features, nemo_log_mel, num_frames

SPEECH = Path(__file__).resolve().parents[1].parent / "shared" / "speech"


def read_clip(index: int) -> np.ndarray:
    entry = [json.loads(line) for line in (SPEECH / "manifest.jsonl").read_text().splitlines()][index]
    with wave.open(str(SPEECH / entry["path_wav16k"])) as wav:
        return np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16).astype(np.float32) / 32768


def nemo_reference(batch: torch.Tensor, lengths: torch.Tensor, settings: NemoMelSettings) -> torch.Tensor:
    """NeMo FilterbankFeatures.forward (inference mode) for a zero-padded waveform batch [B, N]."""
    seq_len = (lengths + 2 * (settings.n_fft // 2) - settings.n_fft) // settings.hop_length
    time_mask = torch.arange(batch.shape[1])[None, :] < lengths[:, None]
    x = torch.cat([batch[:, :1], batch[:, 1:] - settings.preemph * batch[:, :-1]], dim=1).masked_fill(~time_mask, 0.0)
    spec = torch.stft(
        x,
        n_fft=settings.n_fft,
        hop_length=settings.hop_length,
        win_length=settings.win_length,
        window=torch.hann_window(settings.win_length, periodic=False),
        center=True,
        pad_mode="constant",
        return_complex=True,
    )
    power = torch.sqrt(torch.view_as_real(spec).pow(2).sum(-1)).pow(2.0)
    mel = torch.log(torch.from_numpy(mel_filters(settings.n_mels, settings.sample_rate, settings.n_fft)) @ power + 2.0**-24)
    out = torch.zeros_like(mel)
    for i, n in enumerate(seq_len.tolist()):
        valid = mel[i, :, :n]
        out[i, :, :n] = (valid - valid.mean(1, keepdim=True)) / (valid.std(1, keepdim=True) + 1e-5)
    return out


WIDEBAND, NARROWBAND = 1, 30  # manifest rows: a LibriVox clip, an 8 kHz Asterisk prompt


def test_matches_nemo_recipe_on_a_padded_batch_of_real_clips() -> None:
    settings = NemoMelSettings()
    clips = [read_clip(WIDEBAND), read_clip(NARROWBAND)]
    lengths = torch.tensor([len(c) for c in clips])
    padded = torch.zeros(2, int(lengths.max()))
    for i, clip in enumerate(clips):
        padded[i, : len(clip)] = torch.from_numpy(clip)
    reference = nemo_reference(padded, lengths, settings).numpy()
    ours, our_lengths = batch_features([nemo_log_mel(c, settings) for c in clips])
    assert our_lengths.tolist() == [len(c) // 160 for c in clips]
    for i, (n, tolerance) in enumerate(zip(our_lengths, (2e-4, 1e-2))):
        np.testing.assert_allclose(ours[i, :, :n], reference[i, :, :n], atol=tolerance)
        assert not ours[i, :, n:].any()


def test_features_are_normalised_per_band() -> None:
    features = nemo_log_mel(read_clip(2))
    assert features.shape == (80, num_frames(len(read_clip(2)), NemoMelSettings()))
    np.testing.assert_allclose(features.mean(axis=1), 0.0, atol=1e-4)
    np.testing.assert_allclose(features.std(axis=1, ddof=1), 1.0, atol=1e-3)


def test_reads_a_nemo_preprocessor_section() -> None:
    section = {**NEMO_PREPROCESSOR, "features": 128}
    settings = NemoMelSettings.from_nemo_config(section)
    assert (settings.n_mels, settings.win_length, settings.hop_length) == (128, 400, 160)
    for unsupported in ({"window": "hamming"}, {"highfreq": 4000}, {"normalize": "all_features"}):
        with pytest.raises(ValueError, match=next(iter(unsupported))):
            NemoMelSettings.from_nemo_config({**section, **unsupported})


def test_audio_shorter_than_a_hop_gives_one_finite_frame() -> None:
    for n_samples in (0, 1, 159):
        features = nemo_log_mel(np.full(n_samples, 0.1, dtype=np.float32))
        assert features.shape == (80, 1) and np.isfinite(features).all()


def test_missing_preprocessor_keys_take_nemo_defaults() -> None:
    settings = NemoMelSettings.from_nemo_config({"log_zero_guard_value": "tiny"})
    assert (settings.n_mels, settings.win_length, settings.n_fft) == (64, 320, 512)
    assert settings.log_zero_guard_value == np.finfo(np.float32).tiny
