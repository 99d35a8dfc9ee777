"""The WebRTC channel's timeline: decoded aiortc frames (real `av.AudioFrame`s) -> contiguous 16 kHz frames.

The reference is the one-shot `resample` of the ideal 48 kHz timeline (lost frames as zeros): the
streamed result must equal it sample for sample, which checks positions, gap filling and the
exact total length at once.
"""

from __future__ import annotations

import fractions
import itertools

import av
import numpy as np

from asr_stream.ingest.resample import resample
from asr_stream.ingest.types import AudioFrame, ChannelInfo
from asr_stream.ingest.webrtc.audio import WebRtcChannelAudio, mono_pcm

OPUS_RATE = 48000
FRAME = 960  # 20 ms at 48 kHz


def opus_channel(max_queued_frames: int = 100, max_gap_s: float = 1.0) -> WebRtcChannelAudio:
    channel = ChannelInfo(index=0, label="caller", codec="opus", clock_rate=OPUS_RATE)
    return WebRtcChannelAudio("session", channel, max_queued_frames=max_queued_frames, max_gap_s=max_gap_s)


def decoded(left: np.ndarray, pts: int, right: np.ndarray | None = None) -> av.AudioFrame:
    """A frame as aiortc's Opus decoder delivers it: packed s16 stereo at 48 kHz, pts in 1/48000 s."""
    right = left if right is None else right
    interleaved = np.stack((left, right), axis=1).reshape(1, -1)
    frame = av.AudioFrame.from_ndarray(np.round(interleaved * 32768).astype(np.int16), format="s16", layout="stereo")
    frame.sample_rate = OPUS_RATE
    frame.pts = pts
    frame.time_base = fractions.Fraction(1, OPUS_RATE)
    return frame


def tone(n_frames: int, seed: int = 0) -> np.ndarray:
    """Noise at int16 precision, so the comparison is not blurred by quantisation."""
    samples = np.random.default_rng(seed).uniform(-0.5, 0.5, n_frames * FRAME)
    return (np.round(samples * 32768) / 32768).astype(np.float32)


async def drain(audio: WebRtcChannelAudio) -> list[AudioFrame]:
    audio.end()
    return [frame async for frame in audio.frames()]


def assert_timeline(frames: list[AudioFrame], expected_48k: np.ndarray) -> None:
    assert frames[0].start_sample == 0
    assert all(a.end_sample == b.start_sample for a, b in itertools.pairwise(frames))
    streamed = np.concatenate([frame.samples for frame in frames])
    np.testing.assert_allclose(streamed, resample(expected_48k, OPUS_RATE, 16000), atol=1e-5)


async def test_lost_frames_become_silence_at_their_place_on_the_sender_clock() -> None:
    audio = opus_channel()
    signal = tone(5)
    origin = 123_456  # aiortc rebases RTP time to the first packet; the channel must not assume 0
    for index in (0, 1, 3, 4):  # frame 2 was lost
        audio.push(decoded(signal[index * FRAME : (index + 1) * FRAME], origin + index * FRAME))
    expected = signal.copy()
    expected[2 * FRAME : 3 * FRAME] = 0
    assert_timeline(await drain(audio), expected)


async def test_duplicate_and_overlapping_frames_are_trimmed_not_stacked() -> None:
    audio = opus_channel()
    signal = tone(3)
    audio.push(decoded(signal[:FRAME], 0))
    audio.push(decoded(signal[:FRAME], 0))  # a duplicate
    audio.push(decoded(signal[FRAME // 2 : FRAME + FRAME // 2], FRAME // 2))  # half already placed
    audio.push(decoded(signal[FRAME + FRAME // 2 :], FRAME + FRAME // 2))
    assert_timeline(await drain(audio), signal)


async def test_a_sender_clock_jump_beyond_max_gap_is_spliced_not_filled() -> None:
    audio = opus_channel(max_gap_s=1.0)
    signal = tone(4)
    jump = 10 * OPUS_RATE  # 10 s on the sender's clock: a restarted clock, not 10 s of silence
    audio.push(decoded(signal[:FRAME], 0))
    audio.push(decoded(signal[FRAME : 2 * FRAME], jump + FRAME))
    audio.push(decoded(signal[3 * FRAME :], jump + 3 * FRAME))  # after the jump, gaps count again
    expected = signal.copy()
    expected[2 * FRAME : 3 * FRAME] = 0
    assert_timeline(await drain(audio), expected)


async def test_a_stalled_consumer_loses_the_oldest_audio_to_silence_not_its_timeline() -> None:
    audio = opus_channel(max_queued_frames=2)
    signal = tone(6)
    for index in range(6):
        audio.push(decoded(signal[index * FRAME : (index + 1) * FRAME], index * FRAME))
    frames = await drain(audio)  # only the resampler's tail and the end marker fit: 6 frames lost
    assert audio.dropped_frames == 6
    assert [frame.start_sample for frame in frames] == [0, frames[0].end_sample]
    silence, tail = frames[0].samples, frames[1].samples
    assert not silence.any()
    reference = resample(signal, OPUS_RATE, 16000)
    assert silence.shape[0] + tail.shape[0] == reference.shape[0]  # the total length stays exact
    np.testing.assert_allclose(tail, reference[-tail.shape[0] :], atol=1e-5)


def test_stereo_is_averaged_to_mono() -> None:
    left, right = tone(1, seed=1), tone(1, seed=2)
    np.testing.assert_allclose(mono_pcm(decoded(left, 0, right)), (left + right) / 2, atol=1 / 32768)
