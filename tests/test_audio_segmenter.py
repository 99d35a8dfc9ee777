"""Segmenter: rules on hand-written probabilities, then real speech through the real VAD."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from asr_stream.audio.segmenter import (
    SegmentClosed,
    Segmenter,
    SegmenterConfig,
    SegmentGrew,
    SegmentOpened,
    segment_audio,
)
from asr_stream.audio.vad import WINDOW_SAMPLES, Vad
from asr_stream.audio.wavfile import load_audio

SPEECH = Path(__file__).resolve().parents[1].parent / "shared" / "speech"
RATE = 16000
PAD = 300 * RATE // 1000


def _clips() -> list[np.ndarray]:
    entries = [json.loads(line) for line in (SPEECH / "manifest.jsonl").read_text().splitlines()]
    return [load_audio(SPEECH / e["path_wav16k"])[0][0] for e in entries if e["lang"] == "en"]


def _voiced_extent(clip: np.ndarray) -> tuple[int, int]:
    """First and last sample of 10 ms frames within 30 dB of the clip's loudest frame (some clips
    carry a recording noise floor 35 dB down, which is not speech)."""
    frames = (clip[: clip.shape[0] // 160 * 160].reshape(-1, 160) ** 2).mean(axis=1)
    active = np.flatnonzero(10 * np.log10(frames + 1e-12) > 10 * np.log10(frames.max()) - 30)
    return int(active[0]) * 160, (int(active[-1]) + 1) * 160


def _run(probs: list[float], config: SegmenterConfig = SegmenterConfig()) -> list:
    segmenter = Segmenter(config)
    audio = np.zeros(len(probs) * WINDOW_SAMPLES, np.float32)
    events = segmenter.push(audio, np.array(probs)) + segmenter.finish()
    return [e for e in events if not isinstance(e, SegmentGrew)]


def test_short_burst_is_ignored() -> None:
    assert _run([0.0] * 20 + [0.9] * 5 + [0.0] * 40) == []  # 160 ms < min_speech 250 ms


def test_hysteresis_pads_and_closing_on_silence() -> None:
    probs = [0.0] * 30 + [0.9] * 20 + [0.4] * 10 + [0.9] * 20 + [0.0] * 40
    opened, closed = _run(probs)
    assert isinstance(opened, SegmentOpened) and isinstance(closed, SegmentClosed)
    assert opened.start == 30 * WINDOW_SAMPLES - PAD  # the 0.4 dip stays inside one segment
    assert closed.end == 80 * WINDOW_SAMPLES + PAD
    assert closed.reason == "silence" and closed.audio.shape == (closed.end - closed.start,)


def test_open_segment_audio_is_available_while_it_grows() -> None:
    segmenter = Segmenter()
    vad_probs = np.full(30, 0.9)
    events = segmenter.push(np.ones(30 * WINDOW_SAMPLES + 100, np.float32), vad_probs)
    grew = [e for e in events if isinstance(e, SegmentGrew)]
    assert len(grew) == 1 and grew[0].end == 30 * WINDOW_SAMPLES + 100
    np.testing.assert_array_equal(segmenter.open_audio(), grew[0].audio)
    assert not grew[0].audio.flags.writeable


def test_pending_close_is_the_close_that_silence_brings_once_its_pad_is_in() -> None:
    """Window by window: nothing while speech goes on or the pad is still arriving, then exactly the
    SegmentClosed that comes at min_silence; a voiced window takes it back."""
    rng = np.random.default_rng(3)
    audio = rng.standard_normal(120 * WINDOW_SAMPLES).astype(np.float32)
    probs = [0.0] * 10 + [0.9] * 20 + [0.0] * 14 + [0.9] * 10 + [0.0] * 40  # a 448 ms pause, then the close
    segmenter = Segmenter()
    pad_windows = SegmenterConfig().windows(300)
    pending, closed = [], []
    for k, prob in enumerate(probs):
        events = segmenter.push(audio[k * WINDOW_SAMPLES : (k + 1) * WINDOW_SAMPLES], np.array([prob]))
        closed += [e for e in events if isinstance(e, SegmentClosed)]
        pending.append(segmenter.pending_close())
    assert len(closed) == 1
    (final,) = closed
    first_pause, second_pause = 30 + pad_windows - 1, 54 + pad_windows - 1  # windows at which the pad is complete
    assert all(p is None for p in pending[:first_pause])
    early = pending[first_pause]
    assert early is not None and early.end == 30 * WINDOW_SAMPLES + PAD != final.end  # the pause it expected to close at...
    assert all(p is None for p in pending[44:second_pause])  # ...was taken back by the voice at window 44
    expected = [p for p in pending[second_pause:] if p is not None]
    assert expected and {(p.seq, p.start, p.end) for p in expected} == {(final.seq, final.start, final.end)}
    assert np.array_equal(expected[0].audio, final.audio) and expected[0].reason == final.reason == "silence"
    assert segmenter.pending_close() is None  # closed: nothing pending


def test_config_rejects_pad_longer_than_silence() -> None:
    with pytest.raises(ValueError):
        SegmenterConfig(post_speech_pad_ms=800, min_silence_ms=500)


def test_segments_match_speech_regions_of_real_clips() -> None:
    clips = _clips()[:4]
    gaps = [int(s * RATE) for s in (1.0, 1.5, 2.0, 1.2, 1.0)]
    pieces, regions, offset = [], [], 0
    for gap, clip in zip(gaps, clips):
        first, last = _voiced_extent(clip)
        regions.append((offset + gap + first, offset + gap + last))
        pieces += [np.zeros(gap, np.float32), clip]
        offset += gap + clip.shape[0]
    pieces.append(np.zeros(gaps[-1], np.float32))
    audio = np.concatenate(pieces)

    segments = segment_audio(audio)

    assert len(segments) == len(regions)
    tolerance = int(0.15 * RATE)
    for segment, (first, last) in zip(segments, regions):
        assert segment.start <= first and segment.end >= last  # every voiced sample is inside
        assert first - segment.start <= PAD + tolerance and segment.end - last <= PAD + tolerance
        np.testing.assert_array_equal(segment.audio, audio[segment.start : segment.end])


@pytest.mark.parametrize("kind", ["pink noise", "silence"])
def test_no_segment_without_speech(kind: str) -> None:
    rng = np.random.default_rng(5)
    if kind == "silence":
        audio = np.zeros(5 * RATE, np.float32)
    else:
        spectrum = np.fft.rfft(rng.standard_normal(5 * RATE))
        freqs = np.fft.rfftfreq(5 * RATE, 1 / RATE)
        spectrum[1:] /= np.sqrt(freqs[1:])
        spectrum[(freqs < 300) | (freqs > 3400)] = 0
        noise = np.fft.irfft(spectrum).astype(np.float32)
        audio = 0.05 * noise / noise.std()
    assert segment_audio(audio) == []


def test_long_speech_is_split_at_a_pause_without_losing_audio() -> None:
    config = SegmenterConfig(max_segment_ms=8000, split_search_ms=4000)
    pause = np.zeros(int(0.25 * RATE), np.float32)  # shorter than min_silence: no natural close
    pieces, voiced, offset = [pause], [], pause.shape[0]
    for clip in _clips()[:6]:
        first, last = _voiced_extent(clip)
        voiced.append((offset + first, offset + last))
        pieces += [clip, pause]
        offset += clip.shape[0] + pause.shape[0]
    audio = np.concatenate(pieces)

    segments = segment_audio(audio, config)

    forced = [s for s in segments if s.reason == "max_length"]
    assert forced, "nothing reached max_segment_ms"
    for cut_segment, following in itertools.pairwise(segments):
        if cut_segment.reason == "max_length":
            assert following.start == cut_segment.end  # contiguous: no sample lost at the cut
            around_cut = audio[cut_segment.end - 256 : cut_segment.end + 256]
            assert np.sqrt(np.mean(around_cut**2)) < 0.1 * np.sqrt(np.mean(cut_segment.audio**2))
    assert all(s.end - s.start <= 8000 * RATE // 1000 + PAD for s in segments)
    covered = np.zeros(audio.shape[0], bool)
    for s in segments:
        covered[s.start : s.end] = True
    assert all(covered[first:last].all() for first, last in voiced)


def test_20ms_pieces_give_the_same_segments_as_one_push() -> None:
    clips = _clips()[:3]
    silence = np.zeros(RATE, np.float32)
    audio = np.concatenate([silence, clips[0], silence, clips[1], silence, clips[2], silence])
    config = SegmenterConfig(max_segment_ms=4000, split_search_ms=2000)  # exercise forced cuts too

    whole = segment_audio(audio, config)

    vad, segmenter, streamed = Vad(), Segmenter(config), []
    for i in range(0, audio.shape[0], 320):
        piece = audio[i : i + 320]
        streamed += segmenter.push(piece, vad.process(piece))
    streamed += segmenter.finish()
    streamed_closed = [e for e in streamed if isinstance(e, SegmentClosed)]

    assert [(s.seq, s.start, s.end, s.reason) for s in streamed_closed] == [(s.seq, s.start, s.end, s.reason) for s in whole]
    for a, b in zip(streamed_closed, whole):
        np.testing.assert_array_equal(a.audio, b.audio)
    opened = [e.seq for e in streamed if isinstance(e, SegmentOpened)]
    assert opened == [s.seq for s in whole]
