"""The live feed: transcript events fanned out, in memory, to WebSocket clients and the agent page.

Why a hub of its own rather than a Kafka consumer per browser: an agent needs the text of the
call in front of them within a second, and Kafka is for durable, complete delivery. The hub
trades completeness for liveness, by these rules:

* `publish` runs on the event loop for every event and never waits: each subscriber has a
  bounded queue, and a subscriber whose queue is full is cut off (its iterator raises
  `SubscriberTooSlow`) instead of slowing the daemon or growing memory.
* A late joiner first gets what a screen needs to show the call so far: `call.started` and the
  finals in order (partials are provisional and would be replaced anyway), then live events.
* History is kept for open calls and, bounded by count and age, for recently ended ones, so a
  page reloaded just after hang-up still shows the conversation.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import TracebackType

from asr_stream.transcript.events import CallEnded, CallStarted, SegmentFinal, TranscriptEvent


class SubscriberTooSlow(Exception):
    """Raised from a subscription whose client fell `capacity` events behind; it is closed."""


@dataclass
class _CallHistory:
    """What a late joiner is replayed for one call."""

    started: CallStarted | None = None
    finals: deque[SegmentFinal] = field(default_factory=deque)
    ended: CallEnded | None = None

    def replay(self) -> list[TranscriptEvent]:
        head: list[TranscriptEvent] = [self.started] if self.started else []
        tail: list[TranscriptEvent] = [self.ended] if self.ended else []
        return head + list(self.finals) + tail


class Subscription:
    """One client's view of the feed: an async iterator of events, then closed.

    Use it as a context manager (or call `close()`) so the hub forgets the client at once.
    """

    def __init__(
        self, call_id: str | None, replay: Iterable[TranscriptEvent], capacity: int, on_close: Callable[[Subscription], None]
    ) -> None:
        self.call_id = call_id
        self._replay = deque(replay)
        self._live: deque[TranscriptEvent] = deque()
        self._capacity = capacity
        self._on_close = on_close
        self._wakeup = asyncio.Event()
        self._too_slow = False
        # A per-call subscription ends after call.ended: nothing for that call follows it.
        self._finished = call_id is not None and any(isinstance(event, CallEnded) for event in self._replay)
        self._closed = False

    def offer(self, event: TranscriptEvent) -> bool:
        """Queue a live event; False (and the subscription is cut off) when the queue is full."""
        if self._closed:
            return False
        if len(self._live) >= self._capacity:
            self._too_slow = True
            self.close()
            return False
        self._live.append(event)
        if self.call_id is not None and isinstance(event, CallEnded):
            self._finished = True
        self._wakeup.set()
        return True

    def close(self) -> None:
        """Stop the iteration after what is queued (or at once, when cut off) and leave the hub."""
        if not self._closed:
            self._closed = True
            self._wakeup.set()
            self._on_close(self)

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> TranscriptEvent:
        while True:
            if self._too_slow:
                raise SubscriberTooSlow(f"fell {self._capacity} events behind the live feed")
            if self._replay:
                return self._replay.popleft()
            if self._live:
                return self._live.popleft()
            if self._closed or self._finished:
                self.close()
                raise StopAsyncIteration
            self._wakeup.clear()
            await self._wakeup.wait()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self.close()


class LiveFeedHub:
    """Fans events out to subscribers; see the module docstring for the rules.

    subscriber_capacity: live events a subscriber may have queued before it is cut off
    retain_ended_calls / retain_ended_s: how many ended calls, and for how long, stay replayable
    max_finals_per_call: replayed finals per call (the newest), bounding a very long call
    """

    def __init__(
        self,
        *,
        subscriber_capacity: int = 1000,
        retain_ended_calls: int = 200,
        retain_ended_s: float = 900.0,
        max_finals_per_call: int = 5000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.subscriber_capacity = subscriber_capacity
        self.retain_ended_calls = retain_ended_calls
        self.retain_ended_s = retain_ended_s
        self.max_finals_per_call = max_finals_per_call
        self._clock = clock
        self._calls: OrderedDict[str, _CallHistory] = OrderedDict()  # in order of first event
        self._ended: deque[tuple[float, str]] = deque()  # (ended at, call_id), oldest first
        self._subscribers: set[Subscription] = set()
        self.dropped_subscribers = 0  # cut off for being too slow, for metrics

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    @property
    def retained_calls(self) -> list[str]:
        """Call ids a late joiner would be replayed, oldest first."""
        self._forget_expired()
        return list(self._calls)

    def publish(self, event: TranscriptEvent) -> None:
        """Record `event` for late joiners and hand it to every matching subscriber; never blocks."""
        self._remember(event)
        for subscription in list(self._subscribers):
            if subscription.call_id in (None, event.call_id) and not subscription.offer(event):
                self.dropped_subscribers += 1

    def subscribe(self, call_id: str | None = None) -> Subscription:
        """Events of one call (or of all calls, for None): its history first, then live ones."""
        self._forget_expired()
        if call_id is None:
            replay = [event for history in self._calls.values() for event in history.replay()]
        else:
            history = self._calls.get(call_id)
            replay = history.replay() if history else []
        subscription = Subscription(call_id, replay, self.subscriber_capacity, self._subscribers.discard)
        self._subscribers.add(subscription)
        return subscription

    def close(self) -> None:
        """End every subscription after its queued events (daemon shutdown)."""
        for subscription in list(self._subscribers):
            subscription.close()

    def _remember(self, event: TranscriptEvent) -> None:
        history = self._calls.get(event.call_id)
        if history is None:
            history = self._calls[event.call_id] = _CallHistory(finals=deque(maxlen=self.max_finals_per_call))
        if isinstance(event, CallStarted):
            history.started = event
        elif isinstance(event, SegmentFinal):
            history.finals.append(event)
        elif isinstance(event, CallEnded):
            history.ended = event
            self._ended.append((self._clock(), event.call_id))
        self._forget_expired()

    def _forget_expired(self) -> None:
        horizon = self._clock() - self.retain_ended_s
        while self._ended and (len(self._ended) > self.retain_ended_calls or self._ended[0][0] < horizon):
            _, call_id = self._ended.popleft()
            self._calls.pop(call_id, None)
