"""Non-speech test signals: what a hotline line carries between words (silence, hiss, noise, mains
hum, a DTMF tone), for checking that a model writes nothing into them (tests and bench/mandarin.py)."""

from __future__ import annotations

import numpy as np

RATE = 16_000


def non_speech(seconds: float = 3.0, seed: int = 0) -> dict[str, np.ndarray]:
    """Six labelled float32 signals of `seconds` at 16 kHz, the random ones drawn from `seed`."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * RATE)) / RATE
    pink = np.fft.irfft(np.fft.rfft(rng.normal(size=len(t))) / np.sqrt(np.arange(1, len(t) // 2 + 2)), len(t))
    signals = {
        "digital silence": np.zeros(len(t)),
        "hiss at -50 dBFS": rng.normal(size=len(t)) * 10 ** (-50 / 20),
        "white noise at -20 dBFS": rng.normal(size=len(t)) * 0.1,
        "pink noise": pink / np.abs(pink).max() * 0.1,
        "50 Hz hum": 0.1 * np.sin(2 * np.pi * 50 * t),
        "DTMF 1": 0.2 * (np.sin(2 * np.pi * 697 * t) + np.sin(2 * np.pi * 1209 * t)),
    }
    return {label: signal.astype(np.float32) for label, signal in signals.items()}
