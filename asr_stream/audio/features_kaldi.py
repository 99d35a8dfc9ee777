"""FunASR's front end (SenseVoice, Paraformer): Kaldi fbank, low frame rate stacking (LFR), CMVN.

What FunASR's runtime and sherpa-onnx feed these models, step by step:

1. the 16 kHz waveform scaled to the int16 range (x 32768), as Kaldi tools read WAV files;
2. Kaldi's fbank: 25 ms frames every 10 ms with `snip_edges` (only whole frames), DC offset
   removed, pre-emphasis 0.97, a Hamming window, |FFT|^2 on 512 points, 80 triangular mel bands
   (Kaldi's mel scale, 20 Hz to Nyquist), natural log; no dither at inference;
3. LFR: each output frame stacks `lfr_m` (7) consecutive fbank frames and the stack advances by
   `lfr_n` (6): a 60 ms frame of 560 values. The first frame is repeated (lfr_m - 1) // 2 times in
   front, and the last one as often as the final stack needs;
4. CMVN from the model's `am.mvn` (a Kaldi nnet1 text file): (x + AddShift) * Rescale, where
   AddShift is minus the training mean and Rescale the inverse standard deviation, per dimension.

The fbank itself is computed by `kaldi-native-fbank`, the C++ library that FunASR's own runtime
and sherpa-onnx use for these models: the same code the published exports were checked against,
already vectorised, 2 ms of CPU per second of audio. LFR and CMVN are a few lines of numpy.
The test compares this module with an independent numpy transcription of Kaldi's algorithm.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kaldi_native_fbank as knf
import numpy as np

from asr_stream.audio.features_nemo import batch_features

#: Kaldi reads 16-bit WAV samples as integers: the models were trained on that scale.
INT16_SCALE = 32768.0
_WINDOWS = ("hamming", "hanning", "povey", "rectangular", "blackman")


class FrontEndError(ValueError):
    """A front-end setting or CMVN file this module cannot reproduce; the message names it."""


@dataclass(frozen=True)
class KaldiFbankSettings:
    """`frontend_conf` of a FunASR config.yaml, in FunASR's units (ms, Hz)."""

    sample_rate: int = 16_000
    window: str = "hamming"
    n_mels: int = 80
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    lfr_m: int = 7
    lfr_n: int = 6

    @property
    def feature_dim(self) -> int:
        """Values per LFR frame (560 for 80 mels stacked 7 deep): the model's input width."""
        return self.n_mels * self.lfr_m

    @property
    def frame_ms(self) -> float:
        """Duration of one LFR frame (60 ms for lfr_n 6)."""
        return self.frame_shift_ms * self.lfr_n

    @classmethod
    def from_funasr_config(cls, frontend_conf: Mapping[str, Any]) -> KaldiFbankSettings:
        """Read `frontend_conf`; keys left out take FunASR WavFrontend's defaults. Refuses what is not reproduced.

        `dither` is ignored: it adds noise while training, and serving here is deterministic (as sherpa-onnx).
        """
        defaults = {"fs": 16000, "window": "hamming", "n_mels": 80, "frame_length": 25, "frame_shift": 10, "lfr_m": 1, "lfr_n": 1}
        config = {**defaults, **frontend_conf}
        if int(config["fs"]) != 16000:
            raise FrontEndError(f"frontend_conf fs={config['fs']} is not supported: the pipeline runs at 16000 Hz")
        if config["window"] not in _WINDOWS:
            raise FrontEndError(f"frontend_conf window={config['window']!r} is not a Kaldi window ({', '.join(_WINDOWS)})")
        settings = cls(
            sample_rate=16000,
            window=str(config["window"]),
            n_mels=int(config["n_mels"]),
            frame_length_ms=float(config["frame_length"]),
            frame_shift_ms=float(config["frame_shift"]),
            lfr_m=int(config["lfr_m"]),
            lfr_n=int(config["lfr_n"]),
        )
        if min(settings.n_mels, settings.lfr_m, settings.lfr_n) < 1 or settings.frame_shift_ms <= 0 or settings.frame_length_ms <= 0:
            raise FrontEndError(f"frontend_conf has a non-positive size: {dict(frontend_conf)}")
        return settings

    def fbank_options(self) -> knf.FbankOptions:
        options = knf.FbankOptions()
        options.frame_opts.samp_freq = self.sample_rate
        options.frame_opts.frame_length_ms = self.frame_length_ms
        options.frame_opts.frame_shift_ms = self.frame_shift_ms
        options.frame_opts.window_type = self.window
        options.frame_opts.dither = 0.0
        options.frame_opts.snip_edges = True
        options.mel_opts.num_bins = self.n_mels
        options.energy_floor = 0.0
        return options


@dataclass(frozen=True)
class Cmvn:
    """Global mean and variance normalisation from am.mvn: features = (x + shift) * scale."""

    shift: np.ndarray  # minus the training mean, per dimension
    scale: np.ndarray  # inverse standard deviation, per dimension

    @classmethod
    def read(cls, path: Path) -> Cmvn:
        """Parse a Kaldi nnet1 text file with `<AddShift>` and `<Rescale>` components (FunASR's am.mvn)."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise FrontEndError(f"{path}: cannot read ({error})") from None
        vectors = {}
        for component in ("AddShift", "Rescale"):
            # `<AddShift> 560 560` then `<LearnRateCoef> 0 [ v1 v2 ... ]` (the values may wrap lines).
            match = re.search(rf"<{component}>\s+\d+\s+\d+\s+<LearnRateCoef>\s+\S+\s+\[([^\]]*)\]", text)
            if match is None:
                raise FrontEndError(f"{path}: no <{component}> vector: not a FunASR am.mvn")
            try:
                vectors[component] = np.array(match.group(1).split(), dtype=np.float64)
            except ValueError:
                raise FrontEndError(f"{path}: <{component}> holds a value that is not a number") from None
        shift, scale = vectors["AddShift"], vectors["Rescale"]
        if shift.shape != scale.shape or shift.size == 0:
            raise FrontEndError(f"{path}: <AddShift> has {shift.size} values, <Rescale> {scale.size}")
        return cls(shift.astype(np.float32), scale.astype(np.float32))

    @property
    def dim(self) -> int:
        return int(self.shift.shape[0])

    def apply(self, features: np.ndarray) -> np.ndarray:
        return (features + self.shift) * self.scale


def kaldi_fbank(audio: np.ndarray, settings: KaldiFbankSettings = KaldiFbankSettings()) -> np.ndarray:
    """[frames, n_mels] log mel energies of a float waveform in [-1, 1] at `settings.sample_rate`."""
    computer = knf.OnlineFbank(settings.fbank_options())
    computer.accept_waveform(settings.sample_rate, np.asarray(audio, dtype=np.float32) * INT16_SCALE)
    computer.input_finished()
    frames = computer.num_frames_ready
    if frames == 0:
        return np.zeros((0, settings.n_mels), dtype=np.float32)
    return np.stack([computer.get_frame(i) for i in range(frames)]).astype(np.float32)


def stack_lfr(fbank: np.ndarray, m: int, n: int) -> np.ndarray:
    """[ceil(T / n), m * dim]: stacks of m frames every n frames, edges padded by repeating (FunASR's LFR)."""
    frames, dim = fbank.shape
    if frames == 0:
        return np.zeros((0, m * dim), dtype=np.float32)
    left = (m - 1) // 2
    padded = np.concatenate([np.repeat(fbank[:1], left, axis=0), fbank])
    starts = np.arange(-(-frames // n)) * n
    rows = np.minimum(starts[:, None] + np.arange(m)[None, :], len(padded) - 1)  # past the end: the last frame again
    return padded[rows].reshape(len(starts), m * dim)


def funasr_features(audio: np.ndarray, settings: KaldiFbankSettings, cmvn: Cmvn) -> np.ndarray:
    """[LFR frames, feature_dim] float32: what a FunASR SenseVoice or Paraformer graph takes per utterance."""
    return cmvn.apply(stack_lfr(kaldi_fbank(audio, settings), settings.lfr_m, settings.lfr_n)).astype(np.float32)


def pad_batch(features: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Zero-pad [T_i, D] arrays into [B, max T, D] (FunASR's layout: time before features) and their int64 lengths [B]."""
    batch, lengths = batch_features([item.T for item in features])  # NeMo's padding, [B, D, T]
    return np.ascontiguousarray(batch.transpose(0, 2, 1)), lengths
