"""Transcript events of scripted calls, for the work-order tests (a helper module, not a test).

    from workorder_events import CallScript   # tests/ is on sys.path under pytest

Events are built with the real event classes, so their wire form is exactly what the daemon
publishes; `emitted_at` follows the media time of the script so stream time advances naturally.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

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

T0 = datetime(2026, 11, 22, 9, 30, tzinfo=UTC)
LABELS = {"caller": "Citizen", "agent": "Agent"}


class CallScript:
    """One call's events; each method returns the event it made (nothing is sent anywhere)."""

    def __init__(
        self,
        call_id: str,
        channels: tuple[str, ...] = ("caller",),
        *,
        start: datetime = T0,
        language: str | None = "zh",
        caller_uri: str = "sip:+8613800000000@gw.example",
        callee_uri: str = "sip:12345@hotline.example",
    ) -> None:
        self.call_id = call_id
        self.channels = channels
        self.start = start
        self.language = language
        self.caller_uri = caller_uri
        self.callee_uri = callee_uri
        self.next_index = dict.fromkeys(channels, 0)
        self.finals: list[SegmentFinal] = []

    def _common(self, media_ms: int) -> dict:
        return {
            "call_id": self.call_id,
            "model": "whisper-base",
            "engine": "onnxruntime-cpu",
            "language": self.language,
            "emitted_at": self.start + timedelta(milliseconds=media_ms),
        }

    def started(self) -> CallStarted:
        return CallStarted(
            **self._common(0),
            parties=(Party(role="caller", uri=self.caller_uri, display_name=None), Party(role="callee", uri=self.callee_uri)),
            channels=tuple(
                ChannelInfo(channel=name, label=LABELS.get(name, name), codec="PCMU", sample_rate=8000) for name in self.channels
            ),
        )

    def partial(self, channel: str, text: str, start_ms: int, end_ms: int, revision: int = 0) -> SegmentPartial:
        return SegmentPartial(
            **self._common(end_ms + 150),
            channel=channel,
            index=self.next_index[channel],
            revision=revision,
            text=text,
            start_ms=start_ms,
            end_ms=end_ms,
            latency_ms=150,
        )

    def final(self, channel: str, text: str, start_ms: int, end_ms: int) -> SegmentFinal:
        """The next segment of `channel` (revision 1: one partial came before it)."""
        index = self.next_index[channel]
        self.next_index[channel] += 1
        final = SegmentFinal(
            **self._common(end_ms + 400),
            channel=channel,
            index=index,
            revision=1,
            text=text,
            start_ms=start_ms,
            end_ms=end_ms,
            latency_ms=400,
        )
        self.finals.append(final)
        return final

    def ended(self, duration_ms: int, reason: EndReason = EndReason.HANGUP) -> CallEnded:
        return CallEnded(**self._common(duration_ms + 500), end_reason=reason, duration_ms=duration_ms, final_segments=len(self.finals))


def simple_call(call_id: str, *, start: datetime = T0, texts: tuple[str, ...] = ("我家停水了", "电话13812345678")) -> list[TranscriptEvent]:
    """A complete one-channel call: start, a partial and a final per text, end."""
    script = CallScript(call_id, start=start)
    events: list[TranscriptEvent] = [script.started()]
    for number, text in enumerate(texts):
        begin = 1000 + number * 4000
        events += [script.partial("caller", text[:2], begin, begin + 1000), script.final("caller", text, begin, begin + 3000)]
    events.append(script.ended(duration_ms=1000 + len(texts) * 4000))
    return events
