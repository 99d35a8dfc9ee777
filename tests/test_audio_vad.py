"""Vad: real Silero weights on real speech; streaming, per-channel state, batching."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from asr_stream.audio.vad import WINDOW_SAMPLES, SileroOnnxModel, Vad
from asr_stream.audio.wavfile import load_audio

SPEECH = Path(__file__).resolve().parents[1].parent / "shared" / "speech"


def _clip(index: int) -> np.ndarray:
    entry = json.loads((SPEECH / "manifest.jsonl").read_text().splitlines()[index])
    return load_audio(SPEECH / entry["path_wav16k"])[0][0]


def test_speech_scores_high_and_silence_low() -> None:
    speech = _clip(0)
    silence = np.zeros(16000, np.float32)
    probs = Vad().process(np.concatenate([silence, speech, silence]))
    n_silence = 16000 // WINDOW_SAMPLES
    assert probs[: n_silence - 1].max() < 0.1
    assert np.mean(probs[n_silence + 3 : n_silence + speech.shape[0] // WINDOW_SAMPLES - 3] > 0.5) > 0.7


def test_band_limited_noise_is_not_speech() -> None:
    rng = np.random.default_rng(3)
    spectrum = np.fft.rfft(rng.standard_normal(3 * 16000))
    freqs = np.fft.rfftfreq(3 * 16000, 1 / 16000)
    spectrum[(freqs < 300) | (freqs > 3400)] = 0
    noise = np.fft.irfft(spectrum).astype(np.float32)
    probs = Vad().process(0.1 * noise / noise.std())
    assert np.mean(probs > 0.5) < 0.05


def test_streaming_in_20ms_frames_equals_one_call() -> None:
    audio = _clip(1)
    whole = Vad().process(audio)
    vad = Vad()
    streamed = np.concatenate([vad.process(audio[i : i + 320]) for i in range(0, audio.shape[0], 320)])
    assert streamed.shape == (audio.shape[0] // WINDOW_SAMPLES,)
    np.testing.assert_allclose(streamed, whole, atol=1e-6)


def test_channels_keep_their_own_state() -> None:
    a, b = _clip(0), _clip(2)
    alone_a, alone_b = Vad().process(a), Vad().process(b)
    vad_a, vad_b = Vad(), Vad()
    n = min(a.shape[0], b.shape[0])
    interleaved_a, interleaved_b = [], []
    for i in range(0, n, 320):
        interleaved_a.append(vad_a.process(a[i : i + 320]))
        interleaved_b.append(vad_b.process(b[i : i + 320]))
    np.testing.assert_allclose(np.concatenate(interleaved_a), alone_a[: n // WINDOW_SAMPLES], atol=1e-6)
    np.testing.assert_allclose(np.concatenate(interleaved_b), alone_b[: n // WINDOW_SAMPLES], atol=1e-6)


def test_batched_run_equals_one_channel_at_a_time() -> None:
    model = SileroOnnxModel.shared()
    channels = np.stack([_clip(0)[: 20 * WINDOW_SAMPLES], _clip(3)[: 20 * WINDOW_SAMPLES]])
    state = model.initial_state(2)
    batched = []
    for k in range(20):
        probs, state = model.run(channels[:, k * WINDOW_SAMPLES : (k + 1) * WINDOW_SAMPLES], state)
        batched.append(probs)
    np.testing.assert_allclose(np.stack(batched, axis=1)[0], Vad(model).process(channels[0]), atol=1e-5)
    np.testing.assert_allclose(np.stack(batched, axis=1)[1], Vad(model).process(channels[1]), atol=1e-5)
