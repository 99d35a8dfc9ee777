"""FunASR's front end (Kaldi fbank + LFR + CMVN) against an independent transcription of the recipe.

The reference below is written from Kaldi's feature-window.cc / mel-computations.cc (frame
extraction with snip_edges, DC removal, pre-emphasis, Hamming window, 512-point power spectrum,
Kaldi mel scale, log with FLT_EPSILON floor) and from FunASR's WavFrontend.apply_lfr loop (frame
by frame, padding at both ends), in float64 numpy; it shares no code with the module under test,
which runs kaldi-native-fbank. (torchaudio's Kaldi-compliant fbank would be the other
independent implementation, but no torchaudio build matches this project's torch 2.13.)
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import load_mono

from asr_stream.audio.features_kaldi import Cmvn, FrontEndError, KaldiFbankSettings, funasr_features, kaldi_fbank, pad_batch, stack_lfr

FLT_EPSILON = np.finfo(np.float32).eps


def reference_fbank(audio: np.ndarray, n_mels: int = 80) -> np.ndarray:
    """Kaldi fbank (16 kHz, 25/10 ms, Hamming, snip_edges, no dither, power, log) in float64."""
    samples = audio.astype(np.float64) * 32768
    length, shift, n_fft, rate = 400, 160, 512, 16000
    n_frames = 1 + (len(samples) - length) // shift if len(samples) >= length else 0
    window = 0.54 - 0.46 * np.cos(2 * math.pi * np.arange(length) / (length - 1))

    def mel(freq: np.ndarray | float) -> np.ndarray | float:
        return 1127.0 * np.log(1.0 + np.asarray(freq) / 700.0)

    low, high = mel(20.0), mel(rate / 2)
    delta = (high - low) / (n_mels + 1)
    bin_mels = mel(np.arange(n_fft // 2) * rate / n_fft)  # Kaldi leaves out the Nyquist bin
    banks = np.zeros((n_mels, n_fft // 2 + 1))
    for band in range(n_mels):
        left, centre, right = low + band * delta, low + (band + 1) * delta, low + (band + 2) * delta
        for i, m in enumerate(bin_mels):
            if left < m < right:
                banks[band, i] = (m - left) / (centre - left) if m <= centre else (right - m) / (right - centre)
    out = np.zeros((n_frames, n_mels))
    for f in range(n_frames):
        frame = samples[f * shift : f * shift + length].copy()
        frame -= frame.mean()
        frame[1:] -= 0.97 * frame[:-1].copy()
        frame[0] -= 0.97 * frame[0]
        power = np.abs(np.fft.rfft(frame * window, n_fft)) ** 2
        out[f] = np.log(np.maximum(banks @ power, FLT_EPSILON))
    return out


def reference_lfr(features: np.ndarray, m: int, n: int) -> np.ndarray:
    """FunASR's apply_lfr, one output frame at a time."""
    padded = [features[0]] * ((m - 1) // 2) + list(features)
    out = []
    for i in range(math.ceil(len(features) / n)):
        stack = padded[i * n : i * n + m]
        stack += [padded[-1]] * (m - len(stack))
        out.append(np.concatenate(stack))
    return np.array(out)


def write_am_mvn(path, shift: np.ndarray, scale: np.ndarray) -> None:
    """The layout FunASR ships (Kaldi nnet1 text), values wrapped over lines as some exports do."""

    def vector(values: np.ndarray) -> str:
        text = " ".join(f"{v:.6f}" for v in values)
        return text[: len(text) // 2] + "\n" + text[len(text) // 2 :]  # split inside the brackets

    dim = len(shift)
    path.write_text(
        f"<Nnet>\n<Splice> {dim} {dim}\n[ 0 ]\n<AddShift> {dim} {dim}\n<LearnRateCoef> 0 [ {vector(shift)} ]\n"
        f"<Rescale> {dim} {dim}\n<LearnRateCoef> 0 [ {vector(scale)} ]\n</Nnet>\n"
    )


@pytest.fixture(scope="module")
def clips(speech_clips: list[dict]) -> list[np.ndarray]:
    """The three Mandarin clips and two 8 kHz telephone clips (upsampled), as the pipeline gives them."""
    chosen = [row for row in speech_clips if row["lang"] == "zh"] + [row for row in speech_clips if row["band"] != "wideband"][:2]
    return [load_mono(row["wav"]) for row in chosen]


def test_fbank_matches_kaldi_recipe(clips) -> None:
    for audio in clips:
        ours, reference = kaldi_fbank(audio), reference_fbank(audio)
        assert ours.shape == reference.shape == (1 + (len(audio) - 400) // 160, 80)
        # float32 in the library: over all 42 shared clips the mean difference is 7e-6 and the
        # largest 0.019 (a band of a near-silent frame, where log() magnifies rounding); these 5 clips: 0.003.
        np.testing.assert_allclose(ours, reference, atol=5e-3)
        assert np.abs(ours - reference).mean() < 2e-5


@pytest.mark.parametrize("frames", [1, 5, 6, 7, 37, 98])
def test_lfr_matches_funasr_loop(frames: int) -> None:
    features = np.random.default_rng(frames).normal(size=(frames, 4))
    ours = stack_lfr(features, 7, 6)
    assert ours.shape == (math.ceil(frames / 6), 28)
    np.testing.assert_array_equal(ours, reference_lfr(features, 7, 6))


def test_whole_front_end_with_am_mvn(clips, tmp_path) -> None:
    rng = np.random.default_rng(0)
    shift, scale = -rng.uniform(5, 15, 560), rng.uniform(0.1, 0.5, 560)
    write_am_mvn(tmp_path / "am.mvn", shift, scale)
    cmvn = Cmvn.read(tmp_path / "am.mvn")
    assert cmvn.dim == 560
    settings = KaldiFbankSettings.from_funasr_config({"fs": 16000, "window": "hamming", "n_mels": 80, "lfr_m": 7, "lfr_n": 6})
    assert (settings.feature_dim, settings.frame_ms) == (560, 60.0)
    features = [funasr_features(audio, settings, cmvn) for audio in clips]
    for audio, ours in zip(clips, features):
        reference = (reference_lfr(reference_fbank(audio), 7, 6) + shift) * scale
        assert ours.dtype == np.float32 and ours.shape == reference.shape
        np.testing.assert_allclose(ours, reference, atol=5e-3 * scale.max())
    batch, lengths = pad_batch(features)
    assert batch.shape == (len(clips), max(lengths), 560)
    for row, item in zip(batch, features):
        np.testing.assert_array_equal(row[: len(item)], item)
        assert not row[len(item) :].any()


def test_short_audio_gives_no_frames() -> None:
    """Less than one 25 ms frame: Kaldi (snip_edges) makes none; the runner must cope with an empty input."""
    settings = KaldiFbankSettings()
    assert kaldi_fbank(np.zeros(399, np.float32), settings).shape == (0, 80)
    assert stack_lfr(np.zeros((0, 80), np.float32), 7, 6).shape == (0, 560)


def test_refusals(tmp_path) -> None:
    with pytest.raises(FrontEndError, match="8000"):
        KaldiFbankSettings.from_funasr_config({"fs": 8000})
    with pytest.raises(FrontEndError, match="window"):
        KaldiFbankSettings.from_funasr_config({"window": "hann"})
    (tmp_path / "bad.mvn").write_text("<Nnet>\n<AddShift> 2 2\n<LearnRateCoef> 0 [ 1 2 ]\n</Nnet>\n")
    with pytest.raises(FrontEndError, match="Rescale"):
        Cmvn.read(tmp_path / "bad.mvn")
    with pytest.raises(FrontEndError, match="cannot read"):
        Cmvn.read(tmp_path / "missing.mvn")
