"""NeMo's log-mel features (AudioToMelSpectrogramPreprocessor) in numpy, so CPU serving needs no torch.

NeMo Conformer-CTC and Parakeet models are trained on `FilterbankFeatures`; a model only
transcribes well when serving reproduces that recipe exactly. This follows current NeMo (main):

1. pre-emphasis x[n] - 0.97 x[n-1] (the first sample kept as is);
2. centred STFT, zero ("constant") padding of n_fft // 2 on both sides, a symmetric Hann window of
   `win_length` samples centred inside n_fft (torch.stft's convention), |X|^2;
3. Slaney mel filters (librosa's default), natural log of (mel + 2^-24);
4. N // hop valid frames (the STFT's extra last frame is padding to NeMo), and per-feature
   normalisation: each mel band minus its mean over the valid frames, divided by its unbiased
   standard deviation + 1e-5.

NeMo 1.x padded the STFT by reflection and counted one frame more; features differ only at the
utterance edges. Dither is off: NeMo adds it only while training. Only the settings the published
Conformer and Parakeet configs use are accepted; anything else is refused at import time rather
than silently transcribing with the wrong features.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from asr_stream.audio.features import mel_filters

# NeMo's CONSTANT added to the standard deviation in `normalize_batch`.
_NORMALIZE_EPSILON = 1e-5


# The preprocessor section of a NeMo English Conformer-CTC's model_config.yaml (80 mels, 25/10 ms).
NEMO_PREPROCESSOR = {
    "_target_": "nemo.collections.asr.modules.AudioToMelSpectrogramPreprocessor",
    "sample_rate": 16000,
    "normalize": "per_feature",
    "window_size": 0.025,
    "window_stride": 0.01,
    "window": "hann",
    "features": 80,
    "n_fft": 512,
    "log": True,
    "frame_splicing": 1,
    "dither": 1.0e-05,
    "pad_to": 0,
    "pad_value": 0.0,
}


@dataclass(frozen=True)
class NemoMelSettings:
    """The preprocessor settings that change the features, in NeMo's units."""

    sample_rate: int = 16_000
    n_fft: int = 512
    window_size_s: float = 0.025
    window_stride_s: float = 0.01
    n_mels: int = 80
    preemph: float | None = 0.97
    log: bool = True
    log_zero_guard_type: str = "add"
    log_zero_guard_value: float = 2.0**-24
    normalize: str | None = "per_feature"
    mag_power: float = 2.0

    @property
    def win_length(self) -> int:
        return round(self.window_size_s * self.sample_rate)

    @property
    def hop_length(self) -> int:
        return round(self.window_stride_s * self.sample_rate)

    @classmethod
    def from_nemo_config(cls, section: Mapping[str, Any]) -> NemoMelSettings:
        """Read the `preprocessor:` section of a NeMo model_config.yaml; refuse what we cannot reproduce.

        A key the section leaves out takes AudioToMelSpectrogramPreprocessor's default, as in NeMo.
        (`pad_to` and `dither` are ignored: one only pads past the valid frames, the other is training-only.)
        """
        config = {**_NEMO_DEFAULTS, **section}
        for key, allowed in _SUPPORTED.items():
            if config[key] not in allowed:
                raise ValueError(f"NeMo preprocessor {key}={config[key]!r} is not supported (supported: {allowed})")
        sample_rate = int(config["sample_rate"])
        if config["highfreq"] not in (None, sample_rate / 2):
            raise ValueError(f"NeMo preprocessor highfreq={config['highfreq']!r} is not supported (only the full band)")
        win_length = round(float(config["window_size"]) * sample_rate)
        guard = config["log_zero_guard_value"]
        if isinstance(guard, str) and guard not in ("tiny", "eps"):
            raise ValueError(f"NeMo preprocessor log_zero_guard_value={guard!r} is not supported (a number, tiny or eps)")
        return cls(
            sample_rate=sample_rate,
            n_fft=int(config["n_fft"] or 2 ** math.ceil(math.log2(win_length))),
            window_size_s=float(config["window_size"]),
            window_stride_s=float(config["window_stride"]),
            n_mels=int(config["features"]),
            preemph=config["preemph"],
            log=bool(config["log"]),
            log_zero_guard_type=config["log_zero_guard_type"],
            log_zero_guard_value=float(getattr(np.finfo(np.float32), guard) if isinstance(guard, str) else guard),
            normalize=None if config["normalize"] in ("NA", None) else config["normalize"],
            mag_power=float(config["mag_power"]),
        )


# AudioToMelSpectrogramPreprocessor's defaults for the keys read above.
_NEMO_DEFAULTS: dict[str, Any] = {
    "sample_rate": 16_000,
    "window_size": 0.02,
    "window_stride": 0.01,
    "window": "hann",
    "n_fft": None,
    "features": 64,
    "preemph": 0.97,
    "lowfreq": 0,
    "highfreq": None,
    "log": True,
    "log_zero_guard_type": "add",
    "log_zero_guard_value": 2.0**-24,
    "normalize": "per_feature",
    "frame_splicing": 1,
    "exact_pad": False,
    "mag_power": 2.0,
    "mel_norm": "slaney",
}
_SUPPORTED: dict[str, tuple[Any, ...]] = {
    "window": ("hann",),
    "frame_splicing": (1,),
    "lowfreq": (0,),
    "mel_norm": ("slaney",),
    "exact_pad": (False,),
    "log_zero_guard_type": ("add", "clamp"),
    "normalize": ("per_feature", "NA", None),
}


@lru_cache(maxsize=4)
def _centred_hann(win_length: int, n_fft: int) -> np.ndarray:
    """Symmetric Hann (torch.hann_window(periodic=False), as NeMo builds it), zero-padded to n_fft."""
    window = np.hanning(win_length).astype(np.float32)
    left = (n_fft - win_length) // 2
    return np.pad(window, (left, n_fft - win_length - left))


def num_frames(n_samples: int, settings: NemoMelSettings) -> int:
    """Valid feature frames for `n_samples` of audio: NeMo's `get_seq_len` without exact_pad.

    At least one, so that audio shorter than a hop still gives the graph an input.
    """
    return max(n_samples // settings.hop_length, 1)


def nemo_log_mel(audio: np.ndarray, settings: NemoMelSettings = NemoMelSettings()) -> np.ndarray:
    """Features [n_mels, num_frames(len(audio))] of one utterance of mono float audio at settings.sample_rate."""
    audio = np.asarray(audio, dtype=np.float32)
    if settings.preemph is not None:
        audio = np.concatenate([audio[:1], audio[1:] - settings.preemph * audio[:-1]])
    padded = np.pad(audio, settings.n_fft // 2)
    n_frames = num_frames(audio.shape[0], settings)
    frames = np.lib.stride_tricks.as_strided(
        padded,
        shape=(n_frames, settings.n_fft),
        strides=(padded.strides[0] * settings.hop_length, padded.strides[0]),
        writeable=False,
    )
    spectrum = np.fft.rfft(frames * _centred_hann(settings.win_length, settings.n_fft), axis=-1)
    magnitude = np.abs(spectrum).astype(np.float32)
    mel = mel_filters(settings.n_mels, settings.sample_rate, settings.n_fft) @ (magnitude**settings.mag_power).T
    if settings.log:
        if settings.log_zero_guard_type == "add":
            mel = np.log(mel + settings.log_zero_guard_value)
        else:
            mel = np.log(np.maximum(mel, settings.log_zero_guard_value))
    if settings.normalize == "per_feature":
        mean = mel.mean(axis=1, keepdims=True)
        std = mel.std(axis=1, ddof=1, keepdims=True) if n_frames > 1 else np.zeros_like(mean)
        mel = (mel - mean) / (std + _NORMALIZE_EPSILON)
    return mel.astype(np.float32)


def batch_features(features: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Stack [n_mels, T_i] features into a zero-padded [B, n_mels, max T] batch and its int64 lengths [B].

    Zero is NeMo's pad value after normalisation, so a padded batch sees what NeMo's own does.
    """
    lengths = np.array([f.shape[1] for f in features], dtype=np.int64)
    batch = np.zeros((len(features), features[0].shape[0], int(lengths.max())), dtype=np.float32)
    for row, feature in zip(batch, features):
        row[:, : feature.shape[1]] = feature
    return batch, lengths
