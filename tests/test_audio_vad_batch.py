"""BatchedVad: many channels' Silero windows in one batch per tick give what each channel alone gives.

Real Silero weights on the shared clips. The channels are fed in ragged pieces and at uneven
times, so batches hold one window of some channels and several of others (several rounds).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest

from asr_stream.audio.segmenter import SegmentClosed, Segmenter, SegmenterConfig, segment_audio
from asr_stream.audio.vad import WINDOW_SAMPLES, Vad
from asr_stream.audio.vad_batch import BatchedVad, VadStopped
from asr_stream.audio.wavfile import load_audio

SPEECH = Path(__file__).resolve().parents[1].parent / "shared" / "speech"
RATE = 16000
#: Largest difference seen between a batched and a one-row onnxruntime run of the same window.
PROB_TOLERANCE = 1e-5


def _clips() -> list[np.ndarray]:
    entries = [json.loads(line) for line in (SPEECH / "manifest.jsonl").read_text().splitlines()]
    silence = np.zeros(RATE // 2, np.float32)
    return [np.concatenate([silence, load_audio(SPEECH / e["path_wav16k"])[0][0], silence]) for e in entries]


async def _feed(scorer: BatchedVad, audio: np.ndarray, piece: int, deliver, rng: np.random.Generator) -> None:
    """One channel's life: pieces of `piece` samples, a pause now and then, drain, close."""
    channel = scorer.open(deliver)
    try:
        for start in range(0, audio.shape[0], piece):
            channel.submit(audio[start : start + piece])
            await asyncio.sleep(scorer.tick_s * 2 if rng.random() < 0.05 else 0)
        await channel.drain()
    finally:
        channel.close()


@pytest.mark.parametrize("n_channels", [1, 7])
async def test_probabilities_equal_each_channel_scored_alone(n_channels: int) -> None:
    clips = _clips()[:n_channels]
    scorer = BatchedVad(tick_s=0.004)
    await scorer.start()
    got: list[list[np.ndarray]] = [[] for _ in clips]
    rng = np.random.default_rng(5)
    try:
        await asyncio.gather(*(_feed(scorer, clip, (160, 320, 480, 700)[i % 4], got[i].append, rng) for i, clip in enumerate(clips)))
    finally:
        await scorer.stop()
    for clip, pieces in zip(clips, got):
        alone = Vad().process(clip)
        batched = np.concatenate(pieces)
        assert batched.shape == alone.shape == (clip.shape[0] // WINDOW_SAMPLES,)
        np.testing.assert_allclose(batched, alone, atol=PROB_TOLERANCE)
    assert scorer.stats.windows == sum(clip.shape[0] // WINDOW_SAMPLES for clip in clips)
    if n_channels > 1:
        assert scorer.stats.rounds < scorer.stats.windows, "windows of different channels were not batched together"
        assert scorer.stats.rounds > scorer.stats.batches, "no batch held several windows of one channel"


async def test_segments_equal_the_inline_path_on_every_shared_clip() -> None:
    """All shared clips as concurrent channels of one scorer: the same segments, sample for sample."""
    clips = _clips()
    config = SegmenterConfig(max_segment_ms=4000, split_search_ms=2000)  # forced cuts too
    scorer = BatchedVad(tick_s=0.004)
    await scorer.start()
    segmenters = [Segmenter(config) for _ in clips]
    events: list[list] = [[] for _ in clips]

    def deliver_to(i: int):
        return lambda probs: events[i].extend(segmenters[i].push(np.zeros(0, np.float32), probs))

    async def channel(i: int) -> None:
        stream = scorer.open(deliver_to(i))
        for start in range(0, clips[i].shape[0], 320):
            piece = clips[i][start : start + 320]
            events[i].extend(segmenters[i].push(piece, np.zeros(0, np.float32)))
            stream.submit(piece)
            if start % 3200 == 0:
                await asyncio.sleep(0)
        await stream.drain()
        stream.close()
        events[i].extend(segmenters[i].finish())

    try:
        await asyncio.gather(*(channel(i) for i in range(len(clips))))
    finally:
        await scorer.stop()
    compared = 0
    for clip, channel_events in zip(clips, events):
        batched = [e for e in channel_events if isinstance(e, SegmentClosed)]
        inline = segment_audio(clip, config)
        assert [(s.seq, s.start, s.end, s.reason) for s in batched] == [(s.seq, s.start, s.end, s.reason) for s in inline]
        compared += len(inline)
    assert compared >= len(clips)


async def test_stop_scores_what_is_waiting_then_refuses_more() -> None:
    scorer = BatchedVad(tick_s=10.0)  # no tick will come: only stop() scores
    await scorer.start()
    got: list[np.ndarray] = []
    channel = scorer.open(got.append)
    audio = _clips()[0][: 10 * WINDOW_SAMPLES + 100]
    channel.submit(audio)
    await scorer.stop()
    np.testing.assert_allclose(np.concatenate(got), Vad().process(audio), atol=PROB_TOLERANCE)
    with pytest.raises(VadStopped):
        channel.submit(audio)
    with pytest.raises(VadStopped):
        scorer.open(got.append)


async def test_a_channel_whose_delivery_fails_learns_it_and_the_others_go_on() -> None:
    scorer = BatchedVad(tick_s=0.004)
    await scorer.start()
    clip = _clips()[1][: 20 * WINDOW_SAMPLES]

    def broken(probs: np.ndarray) -> None:
        raise RuntimeError("segmenter bug")

    healthy: list[np.ndarray] = []
    bad, good = scorer.open(broken), scorer.open(healthy.append)
    try:
        for stream in (bad, good):
            stream.submit(clip)
        await good.drain()
        with pytest.raises(RuntimeError, match="segmenter bug"):
            await bad.drain()
        with pytest.raises(RuntimeError, match="segmenter bug"):
            bad.submit(clip)
        np.testing.assert_allclose(np.concatenate(healthy), Vad().process(clip), atol=PROB_TOLERANCE)
    finally:
        bad.close()
        good.close()
        await scorer.stop()


async def test_a_reused_state_slot_starts_fresh() -> None:
    """A channel that closes gives its slot to the next one, which must not inherit its state."""
    scorer = BatchedVad(tick_s=0.004)
    await scorer.start()
    first_clip, second_clip = _clips()[2][: 30 * WINDOW_SAMPLES], _clips()[3][: 30 * WINDOW_SAMPLES]
    try:
        first = scorer.open(lambda probs: None)
        first.submit(first_clip)
        await first.drain()
        first.close()
        got: list[np.ndarray] = []
        second = scorer.open(got.append)
        assert second.slot == first.slot
        second.submit(second_clip)
        await second.drain()
        second.close()
    finally:
        await scorer.stop()
    np.testing.assert_allclose(np.concatenate(got), Vad().process(second_clip), atol=PROB_TOLERANCE)
    assert scorer.channels == 0
