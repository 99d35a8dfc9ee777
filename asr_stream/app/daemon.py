"""The live daemon, composition root: ingest -> VAD/segments -> batched model -> transcript -> sinks.

One asyncio loop owns SIP, RTP, VAD and transcript state; model work runs on the scheduler's
engine threads, and Kafka delivery on the sink's own thread, so the loop never blocks.

Lifecycle of a call as consumers see it: `call.started`, then per channel partials and finals in
segment order, then `call.ended` once every final of the call has been emitted (app/calls.py).

Start and stop are one stack: `start()` loads the model (before any socket or thread: the likeliest
operator mistake fails first), then brings the components up in order (HTTP, Kafka, scheduler,
calls, WebRTC, SIP last, so nothing is admitted before it can be served) and, if a step
fails, unwinds what it had started. `stop()` unwinds the same stack in reverse: stop admitting
(503) and hang up every call, let the calls finish their finals up to the deadline and cancel the
rest (each still gets its `call.ended`), stop the scheduler, flush Kafka (what is not acknowledged
stays in the spool for the next start), close HTTP.

A daemon that is killed cannot end its calls, so the Kafka sink keeps a journal of the calls
consumers have seen start and not end (sinks/journal.py); the next start publishes their
`call.ended` with reason `lost` before it admits a call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from asr_stream.app import http_api
from asr_stream.app.calls import CallRegistry, CallSession, Envelope, channel_name
from asr_stream.app.config import Config, split_hostport
from asr_stream.app.metrics import DaemonMetrics
from asr_stream.app.whip_routes import whip_routes
from asr_stream.audio.vad_batch import BatchedVad
from asr_stream.common.throttled_log import ThrottledLog, clip
from asr_stream.errors import OperatorError
from asr_stream.inference.runners import LoadedModel, load_model
from asr_stream.inference.scheduler import BatchScheduler
from asr_stream.ingest.telephony import ChannelAudio, TelephonyIngest
from asr_stream.ingest.types import CallChannel, CallEnded, CallInfo, CallStarted
from asr_stream.ingest.webrtc.session import WhipIngest
from asr_stream.sinks.journal import JOURNAL_NAME, OpenCallJournal
from asr_stream.sinks.kafka import KafkaSink
from asr_stream.sinks.livefeed import LiveFeedHub
from asr_stream.transcript import events
from asr_stream.transcript.channel import ChannelTranscriber
from asr_stream.transcript.script import ScriptConverter
from asr_stream.transcript.state import Labels

log = logging.getLogger(__name__)

_T = TypeVar("_T")

#: Of the stop deadline, what is kept for flushing Kafka after the calls (the rest is theirs).
KAFKA_FLUSH_SHARE = 0.25
#: How long undoing a start that failed half-way may take (a stop has its own deadline).
START_UNWIND_S = 10.0


class Daemon:
    """Owns every component; `start()`, then `wait_stopped()`, or `stop()` from a signal."""

    def __init__(self, config: Config, publish_hooks: tuple[Callable[[events.TranscriptEvent], None], ...] = ()) -> None:
        self.config = config
        self.metrics = DaemonMetrics()
        self.hub = LiveFeedHub()
        self._publish_hooks = (self.hub.publish, self.metrics.observe_event, *publish_hooks)
        self.calls = CallRegistry(on_finished=self._call_finished)
        self.script = ScriptConverter(config.settings.text.chinese_script)  # every call's (the loop's thread only)
        self.model: LoadedModel | None = None
        self.scheduler: BatchScheduler | None = None
        self.vad: BatchedVad | None = None  # None: each channel scores its own VAD windows
        self.kafka: KafkaSink | None = None
        self.ingest: TelephonyIngest | None = None
        self.whip: WhipIngest | None = None
        self._stack = contextlib.AsyncExitStack()
        self._accepting = False  # true from the end of start() until stop(): calls are admitted
        self._stopping = False
        self._stopped = asyncio.Event()
        self._deadline = 0.0
        self._refusals = ThrottledLog(log)  # a retry storm while saturated must not flood the log

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Bring every component up; if one fails, what was started is stopped again and the error raised."""
        self._deadline = asyncio.get_running_loop().time() + START_UNWIND_S
        # The model first: the likeliest operator mistake (not prepared, no CUDA) fails before any socket or thread.
        self.model = await asyncio.to_thread(self._load_model)
        async with contextlib.AsyncExitStack() as stack:
            await self._start_http(stack)
            self._start_kafka(stack)
            await self._start_scheduler(stack)
            await self._start_vad(stack)
            stack.push_async_callback(lambda: self.calls.drain(self._remaining_s() * (1 - KAFKA_FLUSH_SHARE)))
            if self.whip is not None:
                self._consume_while_running(stack, self.whip.events(), self.whip.stop)
            self.ingest = TelephonyIngest(self.config.components.ingest, admit=self._admit)
            await _listening("SIP", self.config.settings.sip.listen, self.ingest.start())
            self._consume_while_running(stack, self.ingest.events(), self._hang_up)
            self._stack = stack.pop_all()
        self._accepting = True
        self.metrics.watch_rtp(lambda: [channel.receiver.stats() for channel in self._rtp_channels()])
        self.metrics.watch_sip(self.ingest.sip.stats)
        self.metrics.watch_admission(lambda: self.saturated, lambda: self.ingest.rtp_port_pairs_free if self.ingest else 0)
        log.info(
            "asr-stream ready: SIP %s (port %d), model %s on %s",
            self.config.settings.sip.listen,
            self.ingest.sip.port,
            self.config.settings.model,
            self.config.settings.backend,
        )

    async def stop(self, deadline_s: float = 20.0) -> None:
        """Graceful shutdown within `deadline_s`: see the module docstring for the order."""
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        self._accepting = False
        self._deadline = asyncio.get_running_loop().time() + deadline_s
        log.info("shutting down: %d calls open", len(self.calls))
        try:
            await self._stack.aclose()
        finally:
            self._stopped.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    def _remaining_s(self) -> float:
        return max(0.0, self._deadline - asyncio.get_running_loop().time())

    # -- components ------------------------------------------------------------------------
    async def _start_http(self, stack: contextlib.AsyncExitStack) -> None:
        """Health, readiness, metrics, the live feed and the agent-assist page (docs/operations.md)."""
        checks = {
            "model_loaded": lambda: self.model is not None,
            "sip_listening": lambda: self._accepting,
            # A load balancer must stop sending calls while every RTP port pair is taken.
            "rtp_ports_free": lambda: self.ingest is not None and not self.ingest.rtp_ports_exhausted,
            "kafka_delivering_or_spooling": lambda: self.kafka is not None and self.kafka.alive,
        }
        app = http_api.create_app(self.hub, self.metrics.registry, checks, self.config.components.http)
        if self.config.settings.webrtc.enabled:
            # Routed before the app starts (aiohttp freezes the router); offers get 503 until start() ends.
            self.whip = WhipIngest(self.config.components.whip, admit=self._admit)
            app.router.add_routes(whip_routes(self.whip))
        listen = self.config.settings.http.listen
        runner = await _listening("HTTP", listen, http_api.start_server(app, *split_hostport(listen)))
        stack.push_async_callback(runner.cleanup)
        stack.callback(self.hub.close)
        self.metrics.watch_livefeed(self.hub)

    def _start_kafka(self, stack: contextlib.AsyncExitStack) -> None:
        """The Kafka sink with its journal of open calls; a call a crash left open gets its call.ended (lost)."""
        settings = self.config.components.kafka
        journal = OpenCallJournal(settings.spool_dir / JOURNAL_NAME)
        left_open = journal.open()
        stack.callback(journal.close)  # after the sink has stopped writing to it
        self.kafka = KafkaSink(settings, ledger=journal)
        self.kafka.start()
        stack.push_async_callback(lambda: self.kafka.close(timeout_s=self._remaining_s()))  # type: ignore[union-attr]
        if left_open:
            log.warning(
                "%d calls were left open by the previous run (killed or crashed), e.g. %s: publishing their call.ended, reason lost",
                len(left_open),
                ", ".join(clip(call.call_id, 60) for call in left_open[:3]),
            )
        for call in left_open:
            self.publish(call.lost())

    def _load_model(self) -> LoadedModel:
        settings = self.config.settings
        return load_model(
            settings.model,
            settings.engines_dir,
            settings.language,
            backend=settings.backend,
            live=True,
            profiles_dir=settings.profiles_dir,
            partial_threads=settings.scheduler.partial_engine_threads,
            hotwords=self.config.components.hotwords,
        )

    async def _start_scheduler(self, stack: contextlib.AsyncExitStack) -> None:
        settings = self.config.settings
        assert self.model is not None
        self.scheduler = BatchScheduler(
            self.metrics.timed_batch(self.model.live),
            settings.scheduler.build(self.model.max_batch),
            bucket=self.model.utterance_bucket,
        )
        await self.scheduler.start()
        stack.push_async_callback(lambda: self.scheduler.stop(timeout_s=self._remaining_s() * (1 - KAFKA_FLUSH_SHARE)))  # type: ignore[union-attr]
        assert self.kafka is not None
        self.metrics.watch_scheduler(self.scheduler)
        self.metrics.watch_kafka(self.kafka)

    async def _start_vad(self, stack: contextlib.AsyncExitStack) -> None:
        """One Silero batch per tick for every channel (docs/vad.md); stopped after the calls' last finals."""
        tick_ms = self.config.settings.vad.batch_tick_ms
        if tick_ms > 0:
            self.vad = BatchedVad(tick_s=tick_ms / 1000)
            await self.vad.start()
            stack.push_async_callback(self.vad.stop)

    def _consume_while_running(
        self,
        stack: contextlib.AsyncExitStack,
        ingest_events: AsyncIterator[CallStarted | CallEnded | object],
        stop_ingest: Callable[[], Awaitable[None]],
    ) -> None:
        """Follow an ingest's events until, on stop, it has ended its last call (its stream ends then)."""
        consumer = asyncio.create_task(self._consume(ingest_events), name="ingest-events")

        async def stop_and_drain() -> None:
            await stop_ingest()
            try:
                await asyncio.wait_for(asyncio.shield(consumer), self._remaining_s())
            except TimeoutError:
                consumer.cancel()
                await asyncio.gather(consumer, return_exceptions=True)

        stack.push_async_callback(stop_and_drain)

    async def _hang_up(self) -> None:
        """Refuse new INVITEs (503) and BYE every call; each ends with reason shutdown."""
        assert self.ingest is not None
        self.ingest.sip.set_saturated(self.config.settings.sip.retry_after_s)
        await self.ingest.stop()

    @property
    def saturated(self) -> bool:
        """New calls are refused for capacity: the scheduler predicts missed finals, or no RTP port pair is free."""
        scheduler_full = self.scheduler is not None and self.scheduler.saturated
        return scheduler_full or (self.ingest is not None and self.ingest.rtp_ports_exhausted)

    def _admit(self, call: CallInfo) -> int | None:
        """Refuse new calls until started, while stopping, or while the scheduler predicts missed deadlines."""
        if not self._accepting or (self.scheduler is not None and self.scheduler.saturated):
            why = "saturated" if self._accepting else "not serving (starting or shutting down)"
            self._refusals.warning((call.peer[0], why), "refusing call %s from %s: %s", clip(call.call_id), call.peer[0], why)
            return self.config.settings.sip.retry_after_s
        return None

    # -- calls -----------------------------------------------------------------------------
    def publish(self, event: events.TranscriptEvent) -> None:
        assert self.kafka is not None
        self.kafka.publish(event)
        for hook in self._publish_hooks:
            hook(event)

    def _rtp_channels(self) -> list[ChannelAudio]:
        """Channels of SIP calls (WebRTC sessions have no RTP receiver of ours)."""
        return [channel for session in self.calls.sessions() for channel in session.channels if isinstance(channel, ChannelAudio)]

    async def _consume(self, ingest_events: AsyncIterator[CallStarted | CallEnded | object]) -> None:
        """Calls from either ingest (SIP/RTP or WebRTC) take the same path from here on."""
        async for event in ingest_events:
            try:
                if isinstance(event, CallStarted):
                    self.calls.add(self._session(event.call, event.channels))
                elif isinstance(event, CallEnded):
                    self.calls.end(event.call.call_id, event.reason)
            except Exception:  # one broken call must not stop the daemon from taking others
                log.exception("call event %s failed", type(event).__name__)

    def _session(self, call: CallInfo, channels: tuple[CallChannel, ...]) -> CallSession:
        assert self.scheduler is not None and self.model is not None
        settings = self.config.settings
        labels = Labels(call_id=call.call_id, model=settings.model, engine=settings.backend)
        hotwords = self._hotword_list(call)
        transcribers = tuple(
            ChannelTranscriber(
                labels=labels,
                channel=channel_name(channel.info.label),
                scheduler=self.scheduler,
                emit=self.publish,
                segmenter_config=self.config.components.segmenter,
                partials=settings.scheduler.partials(),
                shared_vad=self.vad,
                script=self.script,
                hotwords=hotwords,
            )
            for channel in channels
        )
        envelope = Envelope(call.call_id, settings.model, settings.backend, self.model.language)
        return CallSession(call, channels, transcribers, envelope, self.publish)

    def _hotword_list(self, call: CallInfo) -> str | None:
        """The named list the call asked for (SIP X-ASR-Hotwords) if the config has it; else the default list."""
        assert self.model is not None
        if call.hotword_list is None or call.hotword_list in self.model.hotword_lists:
            return call.hotword_list
        log.warning(
            "call %s asked for hotword list %r, which is not configured: using the default list", call.call_id[:64], call.hotword_list
        )
        return None

    def _call_finished(self, session: CallSession) -> None:
        for channel in session.channels:
            if isinstance(channel, ChannelAudio):
                self.metrics.channel_closed(channel.receiver.stats())


class ListenError(OperatorError):
    """A listening socket could not be opened (the port is taken, or the address is not this host's)."""


async def _listening(what: str, address: str, opening: Awaitable[_T]) -> _T:
    try:
        return await opening
    except OSError as error:
        raise ListenError(f"cannot listen for {what} on {address}: {error.strerror or error}") from error


async def serve(config: Config, on_ready: Callable[[Daemon], None] | None = None) -> int:
    """Run the daemon until SIGTERM/SIGINT."""
    daemon = Daemon(config)
    await daemon.start()
    if on_ready is not None:
        on_ready(daemon)
    loop = asyncio.get_running_loop()
    stopping: set[asyncio.Task[None]] = set()

    def on_signal() -> None:
        if not stopping:  # a second signal while stopping changes nothing
            stopping.add(asyncio.create_task(daemon.stop(), name="stop"))

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    await daemon.wait_stopped()
    await asyncio.gather(*stopping)
    return 0
