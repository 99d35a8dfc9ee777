"""The per-channel transcriber, alone: when partials go out, that finals come once and in order.

The VAD, the clock and the model are injected so the timing rules can be checked exactly: a VAD
that says "speech" inside scripted intervals, a clock the test advances 20 ms per packet, and a
queue that answers each request with text describing the audio it got (its length), optionally
holding answers back until the test releases them. The real Silero VAD, BatchScheduler and
Whisper are exercised end to end in test_daemon_e2e.py; here the real Silero VAD appears only to
check that a shared, batched VAD segments a channel exactly as the channel's own does.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Hashable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from asr_stream.audio.features import SAMPLE_RATE
from asr_stream.audio.vad import WINDOW_SAMPLES
from asr_stream.audio.vad_batch import BatchedVad
from asr_stream.audio.wavfile import load_audio
from asr_stream.inference.live import Utterance
from asr_stream.inference.scheduler import Priority, Shed
from asr_stream.transcript.channel import ChannelTranscriber
from asr_stream.transcript.events import SegmentFinal, SegmentPartial
from asr_stream.transcript.partials import PartialPolicy
from asr_stream.transcript.script import ScriptConverter
from asr_stream.transcript.state import Labels

PACKET = SAMPLE_RATE // 50  # 20 ms, as RTP delivers it
LABELS = Labels(call_id="call-1", model="test-model", engine="test-engine")
SPEECH = Path(__file__).resolve().parents[1].parent / "shared" / "speech"


class ScriptedVad:
    """P(speech) = 0.9 inside the scripted (start_s, end_s) intervals, 0.05 elsewhere."""

    def __init__(self, speech: list[tuple[float, float]]) -> None:
        self._speech = speech
        self._pending = 0
        self._windows = 0

    def process(self, audio: np.ndarray) -> np.ndarray:
        self._pending += len(audio)
        probs = []
        while self._pending >= WINDOW_SAMPLES:
            self._pending -= WINDOW_SAMPLES
            middle_s = (self._windows + 0.5) * WINDOW_SAMPLES / SAMPLE_RATE
            probs.append(0.9 if any(start <= middle_s < end for start, end in self._speech) else 0.05)
            self._windows += 1
        return np.asarray(probs, np.float32)


@dataclass
class Heard:
    text: str
    language: str | None = "en"
    tokens: tuple[int, ...] = ()


@dataclass
class Request:
    key: Hashable
    seconds: float
    priority: Priority
    submitted_at: float
    prefix: tuple[int, ...]
    hotwords: str | None
    answer: asyncio.Future[Heard] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class ScriptedQueue:
    """Answers "<n> tenths" (the audio's length) at once, or when released if `hold` says so; its
    tokens are 0, 1, ... n-1 tenths, so consecutive answers share the earlier one's tokens."""

    def __init__(self, clock: ManualClock, hold: set[Priority] | None = None, text: str | None = None, language: str | None = "en") -> None:
        self.requests: list[Request] = []
        self._clock = clock
        self._hold = hold or set()
        self._text = text
        self._language = language

    async def submit(self, key: Hashable, payload: Utterance, priority: Priority) -> Heard:
        request = Request(key, payload.seconds, priority, self._clock(), payload.prefix, payload.hotwords)
        self.requests.append(request)
        if priority not in self._hold:
            self.release(request)
        return await request.answer

    def release(self, request: Request) -> None:
        tenths = round(request.seconds * 10)
        text = self._text if self._text is not None else f"{tenths} tenths"
        request.answer.set_result(Heard(text, self._language, tokens=tuple(range(tenths))))


class ManualClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def transcriber(queue: ScriptedQueue, vad: ScriptedVad, clock: ManualClock, emitted: list, **options) -> ChannelTranscriber:
    return ChannelTranscriber(labels=LABELS, channel="caller", scheduler=queue, emit=emitted.append, vad=vad, clock=clock, **options)


async def stream(channel: ChannelTranscriber, clock: ManualClock, seconds: float) -> None:
    """`seconds` of audio in 20 ms packets, the clock moving with them (real time)."""
    for _ in range(round(seconds * 50)):
        clock.now += 0.02
        channel.feed(np.zeros(PACKET, np.float32))
        await asyncio.sleep(0)  # let answered requests come back, as a live loop would between packets


async def test_partials_follow_the_clock_and_one_final_closes_the_segment() -> None:
    clock, emitted = ManualClock(), []
    queue = ScriptedQueue(clock)
    channel = transcriber(queue, ScriptedVad([(1.0, 4.0)]), clock, emitted)
    await stream(channel, clock, 6.0)
    await channel.finish()

    partials = [r for r in queue.requests if r.priority is Priority.PARTIAL]
    assert len(partials) == 3  # the segment is open ~1.3-4.6 s: partials 1 s apart while it is
    gaps = np.diff([r.submitted_at for r in partials])
    assert np.all(gaps >= 1.0 - 1e-9) and np.all(gaps < 1.05)
    assert [r.seconds for r in partials] == sorted(r.seconds for r in partials)  # each covers more audio
    assert [type(e) for e in emitted] == [SegmentPartial] * 3 + [SegmentFinal]
    assert [e.revision for e in emitted] == [0, 1, 2, 3] and channel.finals_emitted == 1
    final = emitted[-1]
    assert final.text == f"{round(queue.requests[-1].seconds * 10)} tenths"
    assert 600 <= final.start_ms <= 1000 and 4000 <= final.end_ms <= 4700  # speech plus the pads


async def test_at_most_one_partial_is_in_flight_per_channel() -> None:
    clock, emitted = ManualClock(), []
    queue = ScriptedQueue(clock, hold={Priority.PARTIAL})
    channel = transcriber(queue, ScriptedVad([(0.5, 5.0)]), clock, emitted)
    await stream(channel, clock, 4.0)
    assert sum(r.priority is Priority.PARTIAL for r in queue.requests) == 1  # the first is still unanswered
    queue.release(queue.requests[0])
    await stream(channel, clock, 1.1)
    assert sum(r.priority is Priority.PARTIAL for r in queue.requests) == 2
    for request in queue.requests:
        if not request.answer.done():
            request.answer.set_exception(Shed(request.key))
    await stream(channel, clock, 1.0)
    await channel.finish()
    assert isinstance(emitted[-1], SegmentFinal)


async def test_finals_are_emitted_in_segment_order_whatever_order_they_finish_in() -> None:
    clock, emitted = ManualClock(), []
    queue = ScriptedQueue(clock, hold={Priority.FINAL, Priority.PARTIAL})
    channel = transcriber(queue, ScriptedVad([(0.5, 1.5), (2.5, 3.5)]), clock, emitted)
    await stream(channel, clock, 5.0)
    first, second = [r for r in queue.requests if r.priority is Priority.FINAL]
    queue.release(second)
    await asyncio.sleep(0)
    assert not [e for e in emitted if isinstance(e, SegmentFinal)], "the second final overtook the first"
    queue.release(first)
    for request in queue.requests:
        if not request.answer.done():
            request.answer.set_exception(Shed(request.key))
    await channel.finish()
    finals = [e for e in emitted if isinstance(e, SegmentFinal)]
    assert len(finals) == 2 and finals[0].index < finals[1].index


async def test_a_segment_heard_as_nothing_is_never_published() -> None:
    clock, emitted = ManualClock(), []
    channel = transcriber(ScriptedQueue(clock, text=""), ScriptedVad([(0.5, 1.2)]), clock, emitted)
    await stream(channel, clock, 3.0)
    await channel.finish()
    assert emitted == [] and channel.finals_emitted == 0


async def test_finish_finalises_the_open_segment() -> None:
    clock, emitted = ManualClock(), []
    queue = ScriptedQueue(clock)
    channel = transcriber(queue, ScriptedVad([(0.5, 99.0)]), clock, emitted)
    await stream(channel, clock, 2.0)  # the call ends mid-speech
    await channel.finish()
    assert isinstance(emitted[-1], SegmentFinal) and emitted[-1].end_ms == pytest.approx(2000, abs=40)


async def test_final_latency_runs_from_the_arrival_of_the_end_of_speech() -> None:
    """`latency_ms` includes the closing silence; the endpoint latency (`on_endpoint`) starts at the close decision."""
    clock, emitted, endpoints = ManualClock(), [], []
    queue = ScriptedQueue(clock, hold={Priority.FINAL})
    channel = transcriber(
        queue, ScriptedVad([(0.5, 1.5)]), clock, emitted, on_endpoint=endpoints.append, partials=PartialPolicy(early_final=False)
    )
    while not any(r.priority is Priority.FINAL for r in queue.requests):  # bounded: the segment closes by ~2.1 s
        assert clock.now < 1005
        await stream(channel, clock, 0.02)
    (final_request,) = [r for r in queue.requests if r.priority is Priority.FINAL]
    clock.now += 0.25  # the model takes 250 ms
    queue.release(final_request)
    await channel.finish()
    final = emitted[-1]
    assert isinstance(final, SegmentFinal)
    # Speech ended at 1.5 s; the segment closes after min_silence (600 ms); then 250 ms of model.
    assert final_request.submitted_at - 1000.0 == pytest.approx(2.1, abs=0.05)
    assert final.latency_ms == pytest.approx(600 + 250, abs=50)
    assert endpoints == [pytest.approx(0.25, abs=0.005)]


async def test_the_partial_in_flight_is_withdrawn_when_its_segment_closes() -> None:
    clock, emitted = ManualClock(), []
    queue = ScriptedQueue(clock, hold={Priority.PARTIAL})
    channel = transcriber(queue, ScriptedVad([(0.5, 2.5)]), clock, emitted)
    await stream(channel, clock, 2.5)
    (partial,) = [r for r in queue.requests if r.priority is Priority.PARTIAL]  # one in flight, held
    assert not partial.answer.done()
    await stream(channel, clock, 1.5)  # the segment closes at ~3.4 s
    assert partial.answer.cancelled()  # a preview of a closed segment would be dropped: it is not computed
    await channel.finish()
    assert [type(e) for e in emitted] == [SegmentFinal]


async def test_an_early_final_is_asked_in_the_closing_silence_and_ready_at_the_close() -> None:
    clock, emitted, endpoints = ManualClock(), [], []
    queue = ScriptedQueue(clock, hold={Priority.FINAL})
    channel = transcriber(queue, ScriptedVad([(0.5, 1.5)]), clock, emitted, on_endpoint=endpoints.append)
    while not any(r.priority is Priority.FINAL for r in queue.requests):  # bounded: the pad is in by ~1.85 s
        assert clock.now < 1005
        await stream(channel, clock, 0.02)
    (early,) = [r for r in queue.requests if r.priority is Priority.FINAL]
    assert early.submitted_at - 1000.0 == pytest.approx(1.8, abs=0.06)  # speech end 1.5 s + the 300 ms pad
    assert not emitted or not isinstance(emitted[-1], SegmentFinal)  # not final yet: the caller may speak on
    clock.now += 0.25  # the model takes 250 ms, inside the closing silence
    queue.release(early)
    await stream(channel, clock, 1.0)
    await channel.finish()
    finals = [e for e in emitted if isinstance(e, SegmentFinal)]
    assert [r.priority for r in queue.requests].count(Priority.FINAL) == 1  # asked once, early
    assert len(finals) == 1 and finals[0].text == f"{round(early.seconds * 10)} tenths"
    assert (finals[0].end_ms - finals[0].start_ms) / 1000 == pytest.approx(early.seconds, abs=0.002)  # the closed segment's audio
    assert finals[0].latency_ms == pytest.approx(640, abs=50)  # the closing silence alone: the model was done before
    assert endpoints == [pytest.approx(0.0, abs=0.005)]


async def test_an_early_final_is_called_off_when_the_caller_speaks_on() -> None:
    clock, emitted = ManualClock(), []
    queue = ScriptedQueue(clock, hold={Priority.FINAL})
    channel = transcriber(queue, ScriptedVad([(0.5, 1.5), (2.0, 3.0)]), clock, emitted)  # a 500 ms pause: past the pad, short of a close
    await stream(channel, clock, 2.1)
    (early,) = [r for r in queue.requests if r.priority is Priority.FINAL]
    assert early.answer.cancelled()  # the voice came back at 2.0 s: that close will not come
    while len([r for r in queue.requests if r.priority is Priority.FINAL]) < 2:  # bounded: the real pause starts at 3.0 s
        assert clock.now < 1005
        await stream(channel, clock, 0.02)
    final_request = queue.requests[-1]
    assert final_request.priority is Priority.FINAL and final_request.seconds > early.seconds + 1.0
    queue.release(final_request)
    await channel.finish()
    finals = [e for e in emitted if isinstance(e, SegmentFinal)]
    assert len(finals) == 1 and finals[0].text == f"{round(final_request.seconds * 10)} tenths"


def _speech_call() -> np.ndarray:
    """Two shared clips with pauses around them: two segments through the real Silero VAD."""
    entries = [json.loads(line) for line in (SPEECH / "manifest.jsonl").read_text().splitlines()][:2]
    pause = np.zeros(SAMPLE_RATE, np.float32)
    return np.concatenate([pause, *(np.concatenate([load_audio(SPEECH / e["path_wav16k"])[0][0], pause]) for e in entries)])


async def _finals_of(audio: np.ndarray, shared_vad: BatchedVad | None) -> list[tuple[int, int, int, str]]:
    clock, emitted = ManualClock(), []
    queue = ScriptedQueue(clock)
    channel = ChannelTranscriber(labels=LABELS, channel="caller", scheduler=queue, emit=emitted.append, shared_vad=shared_vad, clock=clock)
    for start in range(0, audio.shape[0], PACKET):
        clock.now += 0.02
        channel.feed(audio[start : start + PACKET])
        await asyncio.sleep(0)
    await channel.finish()
    return [(e.index, e.start_ms, e.end_ms, e.text) for e in emitted if isinstance(e, SegmentFinal)]


async def test_a_shared_batched_vad_gives_the_same_finals_as_the_channels_own() -> None:
    audio = _speech_call()
    inline = await _finals_of(audio, None)
    scorer = BatchedVad(tick_s=0.004)
    await scorer.start()
    try:
        batched = await _finals_of(audio, scorer)
        assert scorer.channels == 0  # finish() gave the channel's state slot back
    finally:
        await scorer.stop()
    assert len(inline) == 2 and batched == inline


async def test_closing_a_cancelled_channel_releases_its_shared_vad_stream() -> None:
    scorer = BatchedVad(tick_s=0.004)
    await scorer.start()
    try:
        clock, emitted = ManualClock(), []
        channel = ChannelTranscriber(
            labels=LABELS, channel="caller", scheduler=ScriptedQueue(clock), emit=emitted.append, shared_vad=scorer, clock=clock
        )
        channel.feed(np.zeros(10 * PACKET, np.float32))
        assert scorer.channels == 1
        channel.close()
        assert scorer.channels == 0
    finally:
        await scorer.stop()


async def test_a_pause_inside_a_segment_asks_for_no_partial() -> None:
    """Partials follow new speech: 0.5 s of silence (too short to close the segment) sends nothing."""
    clock, emitted = ManualClock(), []
    queue = ScriptedQueue(clock)
    policy = PartialPolicy(interval_s=0.2, min_new_speech_s=0.5)
    channel = transcriber(queue, ScriptedVad([(0.5, 2.0), (2.5, 4.0)]), clock, emitted, partials=policy)
    await stream(channel, clock, 5.5)
    await channel.finish()
    times = [r.submitted_at - 1000.0 for r in queue.requests if r.priority is Priority.PARTIAL]
    assert not [t for t in times if 2.02 < t < 2.5], times  # nothing while the speaker pauses
    assert np.all(np.diff(times) >= 0.5 - 1e-9)  # never more often than the speech moves on
    assert len(times) >= 4 and isinstance(emitted[-1], SegmentFinal) and len([e for e in emitted if isinstance(e, SegmentFinal)]) == 1


async def test_partials_force_the_tokens_earlier_partials_agreed_on() -> None:
    clock, emitted = ManualClock(), []
    queue = ScriptedQueue(clock)
    channel = transcriber(queue, ScriptedVad([(0.5, 5.0)]), clock, emitted)
    await stream(channel, clock, 6.5)
    await channel.finish()
    partials = [r for r in queue.requests if r.priority is Priority.PARTIAL]
    assert len(partials) >= 3
    assert partials[0].prefix == partials[1].prefix == ()  # nothing agreed before two answers
    for earlier, later in zip(partials, partials[2:]):
        assert later.prefix == tuple(range(round(earlier.seconds * 10)))  # the two answers before it share the older one
    (final,) = [r for r in queue.requests if r.priority is Priority.FINAL]
    assert final.prefix == ()  # the final is decoded free by default


async def test_the_final_forces_the_agreed_tokens_when_told_to() -> None:
    clock, emitted = ManualClock(), []
    queue = ScriptedQueue(clock)
    channel = transcriber(queue, ScriptedVad([(0.5, 5.0)]), clock, emitted, partials=PartialPolicy(final_prefix=True))
    await stream(channel, clock, 6.5)
    await channel.finish()
    partials = [r for r in queue.requests if r.priority is Priority.PARTIAL]
    (final,) = [r for r in queue.requests if r.priority is Priority.FINAL]
    assert final.prefix == tuple(range(round(partials[-2].seconds * 10)))


async def test_with_prefix_reuse_off_no_request_carries_a_prefix() -> None:
    clock, emitted = ManualClock(), []
    queue = ScriptedQueue(clock)
    channel = transcriber(queue, ScriptedVad([(0.5, 5.0)]), clock, emitted, partials=PartialPolicy(reuse_prefix=False, final_prefix=False))
    await stream(channel, clock, 6.5)
    await channel.finish()
    assert len(queue.requests) > 3 and all(r.prefix == () for r in queue.requests)


@pytest.mark.parametrize(
    ("script", "language", "expected"),
    [
        ("simplified", "zh", "广州市房地产中介协会"),  # the default
        ("traditional", "zh", "廣州市房地產中介協會"),
        ("original", "zh", "廣州市房地產中介協會"),
        ("simplified", "en", "廣州市房地產中介協會"),  # not a Chinese hypothesis: left alone
    ],
)
async def test_partials_and_finals_are_written_in_the_configured_script(script, language, expected) -> None:
    clock, emitted = ManualClock(), []
    queue = ScriptedQueue(clock, text="廣州市房地產中介協會", language=language)
    options = {} if script == "simplified" else {"script": ScriptConverter(script)}
    channel = transcriber(queue, ScriptedVad([(0.5, 3.0)]), clock, emitted, **options)
    await stream(channel, clock, 4.0)
    await channel.finish()
    assert [type(e) for e in emitted] == [SegmentPartial, SegmentFinal]
    assert [e.text for e in emitted] == [expected, expected]


async def test_every_request_carries_the_calls_hotword_list() -> None:
    clock, emitted = ManualClock(), []
    queue = ScriptedQueue(clock)
    channel = transcriber(queue, ScriptedVad([(0.5, 3.0)]), clock, emitted, hotwords="housing")
    await stream(channel, clock, 4.0)
    await channel.finish()
    assert {Priority.PARTIAL, Priority.FINAL} <= {r.priority for r in queue.requests}
    assert {r.hotwords for r in queue.requests} == {"housing"}
