"""Live calls: each one an object that owns its channels' transcription and ends with one call.ended.

`CallSession` turns one answered call into events: `call.started` when it starts, every channel
transcribed by its own task (in an asyncio.TaskGroup owned by the session), and `call.ended`
exactly once when it is over, whichever way that happens:

- the ingest ended the call (hang-up, media timeout, shutdown BYE): `end(reason)`; the channels'
  audio streams then end by themselves, their open segments are finalised, the session's last
  finals are emitted, then `call.ended` with that reason;
- the daemon's stop deadline passed first: `cancel()`; the channel tasks are cancelled and
  `call.ended` still goes out (reason `shutdown`, with the finals that made it).

`CallRegistry` keeps the sessions of one process: it starts them, routes ends to them, and on
shutdown waits for them up to a deadline (on their completion, not by polling) and cancels the rest.

`CallPipeline` follows an ingest's call events and makes a session of each call. It is the same
code in the single-process daemon and in each ingest worker of a multi-process one; only the
transcription queue (the scheduler itself, or a client of the inference process) and where
events are published differ.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass

from asr_stream.app.config import Config, Settings
from asr_stream.audio.segmenter import SegmenterConfig
from asr_stream.audio.vad_batch import BatchedVad, VadSource
from asr_stream.ingest.media import ChannelAudio
from asr_stream.ingest.types import CallChannel, CallEnded, CallInfo, CallStarted, EndReason
from asr_stream.transcript import events
from asr_stream.transcript.channel import ChannelTranscriber, TranscriptionQueue
from asr_stream.transcript.partials import PartialPolicy
from asr_stream.transcript.script import ChineseScript, ScriptConverter
from asr_stream.transcript.state import Labels

log = logging.getLogger(__name__)

Publish = Callable[[events.TranscriptEvent], None]


def channel_name(label: str) -> str:
    """A channel label as events carry it: segment ids are split on '/', so none may appear."""
    return label.replace("/", "_") or "channel"


@dataclass(frozen=True)
class Envelope:
    """The fields every event of a call repeats."""

    call_id: str
    model: str
    engine: str
    language: str | None

    def fields(self) -> events.EnvelopeFields:
        return {"call_id": self.call_id, "model": self.model, "engine": self.engine, "language": self.language}


class CallSession:
    """One answered call: `start()`, then `end(reason)` when the ingest says it is over, or `cancel()`."""

    def __init__(
        self,
        call: CallInfo,
        channels: tuple[CallChannel, ...],
        transcribers: tuple[ChannelTranscriber, ...],
        envelope: Envelope,
        publish: Publish,
    ) -> None:
        self.call = call
        self.channels = channels
        self.transcribers = transcribers
        self._envelope = envelope
        self._publish = publish
        self._reason: EndReason | None = None
        self._ended = asyncio.Event()  # the ingest said why the call ended (it closes the audio first)
        self._failed = False
        self._started_at = time.monotonic()
        self._task: asyncio.Task[None] | None = None

    @property
    def done(self) -> asyncio.Task[None]:
        """The session's task: done once `call.ended` is published."""
        assert self._task is not None, "start() first"
        return self._task

    def start(self) -> None:
        self._publish(
            events.CallStarted(
                **self._envelope.fields(),
                parties=(
                    events.Party(role="caller", uri=self.call.caller.uri, display_name=self.call.caller.display_name),
                    events.Party(role="callee", uri=self.call.callee.uri, display_name=self.call.callee.display_name),
                ),
                channels=tuple(
                    events.ChannelInfo(
                        channel=channel_name(channel.info.label),
                        label=channel.info.label,
                        codec=channel.info.codec,
                        sample_rate=channel.info.clock_rate,
                    )
                    for channel in self.channels
                ),
            )
        )
        self._task = asyncio.create_task(self._run(), name=f"call {self.call.call_id[:64]}")

    def end(self, reason: EndReason) -> None:
        """The ingest ended the call: its audio streams are ending; the session finishes on its own."""
        self._reason = reason
        self._ended.set()

    async def cancel(self) -> None:
        """Stop transcribing now; `call.ended` (reason shutdown unless one was given) still goes out."""
        self.done.cancel()
        await asyncio.gather(self.done, return_exceptions=True)

    async def _run(self) -> None:
        try:
            async with asyncio.TaskGroup() as channels:
                for channel, transcriber in zip(self.channels, self.transcribers, strict=True):
                    channels.create_task(self._transcribe(channel, transcriber))
            # The audio ends before the ingest's CallEnded arrives: wait for its reason.
            await self._ended.wait()
        finally:  # also when cancelled: every answered call gets its call.ended
            reason = EndReason.ERROR if self._failed else (self._reason or EndReason.SHUTDOWN)
            self._publish(
                events.CallEnded(
                    **self._envelope.fields(),
                    end_reason=reason,
                    duration_ms=int((time.monotonic() - self._started_at) * 1000),
                    final_segments=sum(transcriber.finals_emitted for transcriber in self.transcribers),
                )
            )

    async def _transcribe(self, channel: CallChannel, transcriber: ChannelTranscriber) -> None:
        try:
            async for frame in channel.frames():
                transcriber.feed(frame.samples)
            await transcriber.finish()
        except Exception:  # one broken channel must not take the call's other channels down
            self._failed = True
            log.exception("call %s: channel %s failed", self.call.call_id[:64], channel.info.label)
        finally:  # also when cancelled: the channel's VAD stream and partial go with it
            transcriber.close()


def rtp_channels(sessions: Iterable[CallSession]) -> list[ChannelAudio]:
    """The channels of `sessions` that have an RTP receiver of ours (WebRTC sessions have none)."""
    return [channel for session in sessions for channel in session.channels if isinstance(channel, ChannelAudio)]


class CallRegistry:
    """The live calls of one daemon, by call id; `on_finished` runs once a session's call.ended is out."""

    def __init__(self, on_finished: Callable[[CallSession], None] = lambda session: None) -> None:
        self._sessions: dict[str, CallSession] = {}
        self._on_finished = on_finished

    def __len__(self) -> int:
        return len(self._sessions)

    def sessions(self) -> list[CallSession]:
        return list(self._sessions.values())

    def add(self, session: CallSession) -> None:
        """Start `session` and keep it until it has finished."""

        def finished(_: asyncio.Task[None]) -> None:
            self._sessions.pop(session.call.call_id, None)
            self._on_finished(session)

        self._sessions[session.call.call_id] = session
        session.start()
        session.done.add_done_callback(finished)

    def end(self, call_id: str, reason: EndReason) -> None:
        session = self._sessions.get(call_id)
        if session is not None:
            session.end(reason)

    async def drain(self, timeout_s: float) -> None:
        """Wait up to `timeout_s` for every session to finish by itself, then cancel the rest."""
        pending = {session.done for session in self._sessions.values()}
        if pending:
            _, pending = await asyncio.wait(pending, timeout=max(timeout_s, 0))
        late = [session for session in self._sessions.values() if session.done in pending]
        if late:
            log.warning("shutdown deadline: %d calls still transcribing are cut short", len(late))
        await asyncio.gather(*(session.cancel() for session in late))


@dataclass(frozen=True)
class PipelineSettings:
    """What every call of a daemon shares: the names events carry, segmentation, partial cadence,
    the script of Chinese text, and the hotword lists a call may pick."""

    model: str
    engine: str
    language: str | None  # the model's default language (None: detected per segment)
    segmenter: SegmenterConfig
    partials: PartialPolicy
    chinese_script: ChineseScript
    hotword_lists: frozenset[str]  # the named lists the model has (a call asks for one with X-ASR-Hotwords)

    @classmethod
    def of(cls, config: Config, language: str | None, hotword_lists: frozenset[str]) -> PipelineSettings:
        """From the config, and what the loaded model says of itself."""
        s = config.settings
        return cls(s.model, s.backend, language, config.components.segmenter, s.scheduler.partials(), s.text.chinese_script, hotword_lists)


async def start_batched_vad(settings: Settings) -> BatchedVad | None:
    """One Silero batch per tick for every channel of this process (docs/vad.md), or None with
    `vad.batch_tick_ms: 0` (each channel scores its own). The caller stops it after its calls' last finals."""
    if settings.vad.batch_tick_ms <= 0:
        return None
    vad = BatchedVad(tick_s=settings.vad.batch_tick_ms / 1000)
    await vad.start()
    return vad


class CallPipeline:
    """Makes a transcribed `CallSession` of each call an ingest starts, and ends it when the ingest does."""

    def __init__(
        self,
        settings: PipelineSettings,
        queue: TranscriptionQueue,
        publish: Publish,
        calls: CallRegistry,
        vad: VadSource | None = None,
        on_endpoint: Callable[[float], None] = lambda seconds: None,
    ) -> None:
        """`vad`: the process's shared VAD scorer (None: each channel runs its own). `on_endpoint`:
        each final's endpoint -> final seconds (`ChannelTranscriber`), for the process's metrics."""
        self.settings = settings
        self._on_endpoint = on_endpoint
        self.calls = calls
        self._queue = queue
        self._publish = publish
        self._vad = vad
        self._script = ScriptConverter(settings.chinese_script)  # every call's (the loop's thread only)

    async def consume(self, ingest_events: AsyncIterator[CallStarted | CallEnded | object]) -> None:
        """Calls from any ingest (SIP/RTP or WebRTC) take the same path from here on."""
        async for event in ingest_events:
            try:
                if isinstance(event, CallStarted):
                    self.calls.add(self.session(event.call, event.channels))
                elif isinstance(event, CallEnded):
                    self.calls.end(event.call.call_id, event.reason)
            except Exception:  # one broken call must not stop the process from taking others
                log.exception("call event %s failed", type(event).__name__)

    def session(self, call: CallInfo, channels: tuple[CallChannel, ...]) -> CallSession:
        settings = self.settings
        labels = Labels(call_id=call.call_id, model=settings.model, engine=settings.engine)
        hotwords = self._hotword_list(call)
        transcribers = tuple(
            ChannelTranscriber(
                labels=labels,
                channel=channel_name(channel.info.label),
                scheduler=self._queue,
                emit=self._publish,
                segmenter_config=settings.segmenter,
                partials=settings.partials,
                shared_vad=self._vad,
                script=self._script,
                hotwords=hotwords,
                on_endpoint=self._on_endpoint,
            )
            for channel in channels
        )
        envelope = Envelope(call.call_id, settings.model, settings.engine, settings.language)
        return CallSession(call, channels, transcribers, envelope, self._publish)

    def _hotword_list(self, call: CallInfo) -> str | None:
        """The named list the call asked for (SIP X-ASR-Hotwords) if the config has it; else the default list."""
        if call.hotword_list is None or call.hotword_list in self.settings.hotword_lists:
            return call.hotword_list
        log.warning(
            "call %s asked for hotword list %r, which is not configured: using the default list", call.call_id[:64], call.hotword_list
        )
        return None
