"""LiveFeedHub: late joiners see the call so far in order, slow consumers are cut off, history is bounded."""

from __future__ import annotations

import asyncio

import pytest

from asr_stream.sinks.livefeed import LiveFeedHub, SubscriberTooSlow
from asr_stream.transcript.events import (
    CallEnded,
    CallStarted,
    ChannelInfo,
    EndReason,
    Party,
    SegmentFinal,
    SegmentPartial,
    TranscriptEvent,
)


def envelope(call_id: str) -> dict[str, object]:
    return {"call_id": call_id, "model": "whisper-tiny.en", "engine": "onnxruntime", "language": "en"}


def started(call_id: str) -> CallStarted:
    return CallStarted(
        **envelope(call_id),
        parties=(Party(role="caller", uri="sip:+4930123@gw.example"), Party(role="callee", uri="sip:hotline@pbx.example")),
        channels=(ChannelInfo(channel="caller", label="Citizen", codec="PCMU", sample_rate=8000),),
    )


def partial(call_id: str, index: int, revision: int, text: str, stable_text: str = "") -> SegmentPartial:
    return SegmentPartial(
        **envelope(call_id),
        channel="caller",
        index=index,
        revision=revision,
        text=text,
        start_ms=0,
        end_ms=1000,
        latency_ms=100,
        stable_text=stable_text,
    )


def final(call_id: str, index: int, text: str, revision: int = 1) -> SegmentFinal:
    return SegmentFinal(
        **envelope(call_id), channel="caller", index=index, revision=revision, text=text, start_ms=0, end_ms=1000, latency_ms=300
    )


def ended(call_id: str, finals: int) -> CallEnded:
    return CallEnded(**envelope(call_id), end_reason=EndReason.HANGUP, duration_ms=5000, final_segments=finals)


async def take(subscription, count: int) -> list[TranscriptEvent]:
    return [await asyncio.wait_for(anext(subscription), 1.0) for _ in range(count)]


async def test_a_late_joiner_gets_the_start_and_finals_so_far_then_live_events_in_order() -> None:
    hub = LiveFeedHub()
    for event in (started("c1"), partial("c1", 0, 0, "my str"), final("c1", 0, "My street light."), partial("c1", 1, 0, "it is")):
        hub.publish(event)
    with hub.subscribe("c1") as subscription:
        live = [partial("c1", 1, 1, "it is out"), final("c1", 1, "It is out since Monday.", revision=2), ended("c1", 2)]
        for event in live:
            hub.publish(event)
        received = await take(subscription, 5)
        with pytest.raises(StopAsyncIteration):  # nothing of this call follows call.ended
            await asyncio.wait_for(anext(subscription), 1.0)
    assert [e.event for e in received] == ["call.started", "segment.final", "segment.partial", "segment.final", "call.ended"]
    assert [getattr(e, "text", None) for e in received[1:4]] == ["My street light.", "it is out", "It is out since Monday."]
    assert hub.subscriber_count == 0


async def test_a_call_subscription_sees_only_its_call_and_the_all_calls_feed_sees_both() -> None:
    hub = LiveFeedHub()
    hub.publish(started("a"))
    with hub.subscribe("b") as only_b, hub.subscribe() as everything:
        hub.publish(started("b"))
        hub.publish(final("a", 0, "for a"))
        hub.publish(final("b", 0, "for b"))
        assert [(e.call_id, e.event) for e in await take(only_b, 2)] == [("b", "call.started"), ("b", "segment.final")]
        assert [(e.call_id, e.event) for e in await take(everything, 4)] == [
            ("a", "call.started"),  # replayed: call a started before this subscriber joined
            ("b", "call.started"),
            ("a", "segment.final"),
            ("b", "segment.final"),
        ]


async def test_a_subscriber_to_an_ended_call_gets_its_whole_history_then_the_end() -> None:
    hub = LiveFeedHub()
    for event in (started("c1"), final("c1", 0, "one"), final("c1", 1, "two"), ended("c1", 2)):
        hub.publish(event)
    with hub.subscribe("c1") as subscription:
        received = [event async for event in subscription]
    assert [getattr(e, "text", e.event) for e in received] == ["call.started", "one", "two", "call.ended"]


async def test_a_slow_subscriber_is_cut_off_without_affecting_publish_or_a_fast_one() -> None:
    hub = LiveFeedHub(subscriber_capacity=3)
    slow = hub.subscribe()
    with hub.subscribe() as fast:
        hub.publish(started("c1"))
        for index in range(10):
            hub.publish(final("c1", index, f"segment {index}"))
            assert (await take(fast, 1 if index else 2))[-1].text == f"segment {index}"
    assert hub.dropped_subscribers == 1
    assert hub.subscriber_count == 0
    with pytest.raises(SubscriberTooSlow):
        await anext(slow)


async def test_a_waiting_subscriber_wakes_for_a_live_event_and_ends_when_the_hub_closes() -> None:
    hub = LiveFeedHub()
    subscription = hub.subscribe()
    waiter = asyncio.create_task(anext(subscription))
    await asyncio.sleep(0.01)
    assert not waiter.done()
    hub.publish(started("c1"))
    assert (await asyncio.wait_for(waiter, 1.0)).event == "call.started"
    hub.close()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(anext(subscription), 1.0)


def test_ended_calls_are_forgotten_beyond_the_count_and_age_bounds_but_open_calls_are_kept() -> None:
    now = [0.0]
    hub = LiveFeedHub(retain_ended_calls=2, retain_ended_s=60.0, clock=lambda: now[0])
    hub.publish(started("open"))
    for call_id in ("e1", "e2", "e3"):
        hub.publish(started(call_id))
        hub.publish(ended(call_id, 0))
    assert hub.retained_calls == ["open", "e2", "e3"]
    now[0] = 61.0
    assert hub.retained_calls == ["open"]


async def test_replayed_finals_per_call_are_bounded_to_the_newest() -> None:
    hub = LiveFeedHub(max_finals_per_call=2)
    hub.publish(started("c1"))
    for index in range(5):
        hub.publish(final("c1", index, f"segment {index}"))
    with hub.subscribe("c1") as subscription:
        replayed = await take(subscription, 3)
    assert [getattr(e, "text", e.event) for e in replayed] == ["call.started", "segment 3", "segment 4"]
