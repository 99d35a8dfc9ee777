"""Resampling: tone fidelity, alias rejection, exact lengths, streaming == one-shot."""

from __future__ import annotations

import numpy as np
import pytest

from asr_stream.ingest.resample import StreamResampler, resample

RATE_PAIRS = [(8000, 16000), (48000, 16000), (16000, 8000), (44100, 16000), (22050, 16000), (16000, 16000)]


def _tone(freq_hz: float, rate: int, seconds: float) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (0.5 * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)


def _snr_db(signal: np.ndarray, reference: np.ndarray) -> float:
    noise = signal - reference
    return float(10 * np.log10(np.sum(reference**2) / np.sum(noise**2)))


@pytest.mark.parametrize(("rate_in", "rate_out"), [(8000, 16000), (48000, 16000), (44100, 16000)])
def test_sine_survives_resampling_with_high_snr(rate_in: int, rate_out: int) -> None:
    tone = resample(_tone(1000.0, rate_in, 1.0), rate_in, rate_out)
    expected = _tone(1000.0, rate_out, 1.0)
    edge = rate_out // 100  # the zero-padded edges ramp in and out over the filter length
    assert _snr_db(tone[edge:-edge], expected[edge:-edge]) > 55  # Kaiser beta 5 ripple bounds it near 60 dB


def test_tone_above_target_nyquist_is_removed() -> None:
    """A 12 kHz tone cannot exist at 16 kHz; without an anti-alias filter it would fold to 4 kHz."""
    out = resample(_tone(12000.0, 48000, 1.0), 48000, 16000)
    assert np.sqrt(np.mean(out[200:-200] ** 2)) < 0.5 / np.sqrt(2) * 1e-2  # at least 40 dB down


@pytest.mark.parametrize(("rate_in", "rate_out"), RATE_PAIRS)
def test_one_shot_length_is_exact(rate_in: int, rate_out: int) -> None:
    for n_in in (0, 1, 159, 160, 16001):
        out = resample(np.zeros(n_in, np.float32), rate_in, rate_out)
        assert out.shape == (-(-n_in * rate_out // rate_in),)
        assert out.dtype == np.float32


def test_one_shot_resamples_each_channel_along_last_axis() -> None:
    stereo = np.stack([_tone(440.0, 8000, 0.5), _tone(880.0, 8000, 0.5)])
    out = resample(stereo, 8000, 16000)
    assert out.shape == (2, 8000)
    np.testing.assert_allclose(out[1], resample(stereo[1], 8000, 16000))


@pytest.mark.parametrize(("rate_in", "rate_out"), RATE_PAIRS)
@pytest.mark.parametrize("chunk", [1, 7, 160, 960, 4000])
def test_streaming_equals_one_shot(rate_in: int, rate_out: int, chunk: int) -> None:
    audio = np.random.default_rng(chunk).standard_normal(rate_in // 2 + 37).astype(np.float32)
    resampler = StreamResampler(rate_in, rate_out)
    pieces = [resampler.process(audio[i : i + chunk]) for i in range(0, audio.shape[0], chunk)]
    streamed = np.concatenate([*pieces, resampler.flush()])
    expected = resample(audio, rate_in, rate_out)
    assert streamed.shape == expected.shape
    np.testing.assert_allclose(streamed, expected, atol=1e-5)


def test_stream_latency_is_a_few_samples_per_packet() -> None:
    """Each 20 ms G.711 packet yields nearly its full 20 ms at 16 kHz right away, not on flush."""
    resampler = StreamResampler(8000, 16000)
    first = resampler.process(np.zeros(160, np.float32))
    second = resampler.process(np.zeros(160, np.float32))
    assert 300 <= first.shape[0] < 320
    assert second.shape[0] == 320


def test_flush_resets_for_a_new_stream() -> None:
    audio = np.random.default_rng(1).standard_normal(1000).astype(np.float32)
    resampler = StreamResampler(8000, 16000)
    for _ in range(2):
        streamed = np.concatenate([resampler.process(audio), resampler.flush()])
        np.testing.assert_allclose(streamed, resample(audio, 8000, 16000), atol=1e-5)


def test_rejects_non_positive_rates() -> None:
    with pytest.raises(ValueError):
        StreamResampler(0, 16000)
