"""The live daemon: telephony ingest -> VAD/segments -> batched model -> transcript events -> sinks.

One asyncio loop owns SIP, RTP, VAD and transcript state; model work runs on the scheduler's
worker threads, and Kafka delivery on the sink's own thread, so the loop never blocks.

Lifecycle of a call as consumers see it: `call.started`, then per channel partials and finals in
segment order, then `call.ended` once every final of the call has been emitted. On SIGTERM the
daemon stops taking calls (503 + Retry-After), hangs up the open ones, finalises their open
segments, flushes Kafka (undelivered events stay in the spool for the next start) and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from asr_stream.app import http_api
from asr_stream.app.config import Config, split_hostport
from asr_stream.app.metrics import DaemonMetrics
from asr_stream.app.whip_routes import whip_routes
from asr_stream.audio.segmenter import SegmenterConfig
from asr_stream.inference.runners import LoadedModel, load_model
from asr_stream.inference.scheduler import BatchScheduler
from asr_stream.ingest.telephony import ChannelAudio, IngestConfig, TelephonyIngest
from asr_stream.ingest.types import CallChannel, CallInfo, EndReason
from asr_stream.ingest.types import CallEnded as IngestCallEnded
from asr_stream.ingest.types import CallStarted as IngestCallStarted
from asr_stream.ingest.webrtc.session import WhipConfig, WhipIngest
from asr_stream.rtp.codecs import supported_encodings
from asr_stream.rtp.receiver import Latching
from asr_stream.sinks.kafka import KafkaSettings, KafkaSink
from asr_stream.sinks.livefeed import LiveFeedHub
from asr_stream.sip import DigestAuthConfig, DigestCredential
from asr_stream.sip.server import SipServerConfig
from asr_stream.transcript import events
from asr_stream.transcript.channel import ChannelTranscriber
from asr_stream.transcript.state import Labels

log = logging.getLogger(__name__)


def digest_auth(auth: dict | None) -> DigestAuthConfig | None:
    """The config's `sip.auth` section as the SIP server takes it (defaults live in DigestAuthConfig)."""
    if auth is None:
        return None
    users = {name: DigestCredential(password=user.get("password"), ha1=user.get("ha1", {})) for name, user in auth["users"].items()}
    options = {key: tuple(value) if isinstance(value, list) else value for key, value in auth.items() if key not in ("realm", "users")}
    return DigestAuthConfig(realm=auth["realm"], users=users, **options)


def channel_name(label: str) -> str:
    """A channel label as events carry it: segment ids are split on '/', so none may appear."""
    return label.replace("/", "_") or "channel"


@dataclass
class _LiveCall:
    call: CallInfo
    started_at: float
    channels: tuple[CallChannel, ...]
    transcribers: list[ChannelTranscriber] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


class Daemon:
    """Owns every component; `start()`, then `wait_stopped()`, or `stop()` from a signal."""

    def __init__(self, config: Config, publish_hooks: tuple[Callable[[events.TranscriptEvent], None], ...] = ()) -> None:
        self.config = config
        self.metrics = DaemonMetrics()
        self.hub = LiveFeedHub()
        self._publish_hooks = (self.hub.publish, self.metrics.observe_event, *publish_hooks)
        self._calls: dict[str, _LiveCall] = {}
        self._stopping = False
        self._stopped = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._call_endings: set[asyncio.Task[None]] = set()  # referenced until done (asyncio keeps weak refs)
        self.model: LoadedModel | None = None
        self.scheduler: BatchScheduler | None = None
        self.kafka: KafkaSink | None = None
        self.ingest: TelephonyIngest | None = None
        self.whip: WhipIngest | None = None
        self._http: web.AppRunner | None = None

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        cfg = self.config
        self.model = await asyncio.to_thread(self._load_model)
        sched = cfg.scheduler
        self.scheduler = BatchScheduler(
            self.metrics.timed_batch(self.model.transcribe_batch),
            max_batch=min(sched["max_batch"], self.model.max_batch),
            max_wait_s=sched["max_wait_ms"] / 1000,
            max_queue=sched["max_queue"],
            final_deadline_s=sched["final_deadline_s"],
            bucket=self.model.bucket,
            workers=sched["workers"],
        )
        await self.scheduler.start()
        kafka = cfg.kafka
        self.kafka = KafkaSink(
            KafkaSettings(
                bootstrap_servers=kafka["bootstrap_servers"],
                topic=kafka["topic"],
                partitions=kafka["partitions"],
                spool_dir=Path(kafka["spool_dir"]),
                security=kafka["security"],
            )
        )
        self.kafka.start()
        self.metrics.watch_scheduler(self.scheduler)
        self.metrics.watch_kafka(self.kafka)
        self.metrics.watch_livefeed(self.hub)
        self.metrics.watch_rtp(lambda: [audio.receiver.stats() for audio in self._rtp_channels()])
        webrtc = cfg.webrtc
        if webrtc["enabled"]:
            self.whip = WhipIngest(
                WhipConfig(max_sessions=webrtc["max_sessions"], inactivity_timeout_s=webrtc["inactivity_timeout_s"]), admit=self._admit
            )
            self._tasks.append(asyncio.create_task(self._consume(self.whip.events()), name="whip-events"))
        await self._start_http()
        self.ingest = TelephonyIngest(self._ingest_config(), admit=self._admit)
        await self.ingest.start()
        self._tasks.append(asyncio.create_task(self._consume(self.ingest.events()), name="ingest-events"))
        log.info("asr-stream ready: SIP %s (port %d), model %s on %s", cfg.sip["listen"], self.ingest.sip.port, cfg.model, cfg.backend)

    async def stop(self, deadline_s: float = 20.0) -> None:
        """Graceful shutdown: refuse new calls, end open ones, flush their finals, close sinks."""
        if self._stopping:
            return
        self._stopping = True
        log.info("shutting down: %d calls open", len(self._calls))
        if self.ingest is not None:
            self.ingest.sip.set_saturated(self.config.sip["retry_after_s"])
            await self.ingest.stop()
        if self.whip is not None:
            await self.whip.stop()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._all_calls_closed(), deadline_s / 2)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.scheduler is not None:
            await self.scheduler.stop()
        if self.kafka is not None:
            await self.kafka.close(timeout_s=deadline_s / 2)
        self.hub.close()
        if self._http is not None:
            await self._http.cleanup()
        self._stopped.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    async def _all_calls_closed(self) -> None:
        while self._calls:
            await asyncio.sleep(0.05)

    # -- components ------------------------------------------------------------------------
    def _load_model(self) -> LoadedModel:
        """`backend`: onnxruntime (CPU, the default), tensorrt (engines from `asr-stream engines build`,
        refused with the reason if they do not fit the graph, profile, TensorRT or GPU) or torch (a CUDA
        GPU; refused in one line without one). Every refusal is an OperatorError."""
        return load_model(self.config.model, self.config.engines_dir, self.config.language, backend=self.config.backend, live=True)

    def _ingest_config(self) -> IngestConfig:
        sip_host, sip_port = split_hostport(self.config.sip["listen"])
        rtp = self.config.rtp
        return IngestConfig(
            sip=SipServerConfig(
                host=sip_host,
                port=sip_port,
                advertised_address=self.config.sip.get("advertised_address"),
                max_calls=self.config.sip["max_calls"],
                retry_after_s=self.config.sip["retry_after_s"],
                allowed_sources=tuple(self.config.sip["allowed_sources"]),
                auth=digest_auth(self.config.sip.get("auth")),
                # Everything the RTP stage decodes (Opus listed first); sdp.negotiate picks the
                # offerer's most preferred of these, so this order only documents our preference.
                accepted_codecs=tuple(supported_encodings()),
            ),
            rtp_host=rtp["bind"],
            rtp_port_min=rtp["port_range"][0],
            rtp_port_max=rtp["port_range"][1],
            latching=Latching.FIRST if rtp["latching"] else Latching.SDP,
            playout_delay_s=rtp["playout_delay_ms"] / 1000,
            rtp_timeout_s=rtp["timeout_s"],
        )

    def _admit(self, call: CallInfo) -> int | None:
        """Refuse new calls while stopping or while the scheduler predicts missed deadlines."""
        assert self.scheduler is not None
        if self._stopping or self.scheduler.saturated:
            log.warning("refusing call %s: %s", call.call_id, "shutting down" if self._stopping else "saturated")
            return int(self.config.sip["retry_after_s"])
        return None

    async def _start_http(self) -> None:
        """Health, readiness, metrics, the live feed and the agent-assist page (docs/operations.md)."""
        checks = {
            "model_loaded": lambda: self.model is not None,
            "sip_listening": lambda: self.ingest is not None and not self._stopping,
            "kafka_delivering_or_spooling": lambda: self.kafka is not None and self.kafka.alive,
        }
        settings = http_api.HttpSettings.from_config(self.config.http)
        app = http_api.create_app(self.hub, self.metrics.registry, checks, settings)
        if self.whip is not None:
            app.router.add_routes(whip_routes(self.whip))
        self._http = await http_api.start_server(app, self.config.http["listen"])

    # -- events ----------------------------------------------------------------------------
    def publish(self, event: events.TranscriptEvent) -> None:
        assert self.kafka is not None
        self.kafka.publish(event)
        for hook in self._publish_hooks:
            hook(event)

    def _envelope(self, call_id: str) -> dict[str, object]:
        assert self.model is not None
        return {"call_id": call_id, "model": self.config.model, "engine": self.config.backend, "language": self.model.language}

    def _rtp_channels(self) -> list[ChannelAudio]:
        """Channels of SIP calls (WebRTC sessions have no RTP receiver of ours)."""
        return [audio for live in self._calls.values() for audio in live.channels if isinstance(audio, ChannelAudio)]

    async def _consume(self, ingest_events: AsyncIterator[IngestCallStarted | IngestCallEnded | object]) -> None:
        """Calls from either ingest (SIP/RTP or WebRTC) take the same path from here on."""
        async for event in ingest_events:
            try:
                if isinstance(event, IngestCallStarted):
                    self._call_started(event.call, event.channels)
                elif isinstance(event, IngestCallEnded):
                    live = self._calls.get(event.call.call_id)
                    if live is not None:
                        ending = asyncio.create_task(self._call_ended(live, event.reason))
                        self._call_endings.add(ending)
                        ending.add_done_callback(self._call_endings.discard)
            except Exception:  # one broken call must not stop the daemon from taking others
                log.exception("call %s: event %s failed", getattr(event, "call", None), type(event).__name__)

    def _call_started(self, call: CallInfo, channels: tuple[CallChannel, ...]) -> None:
        assert self.scheduler is not None
        self.publish(
            events.CallStarted(
                **self._envelope(call.call_id),
                parties=(
                    events.Party(role="caller", uri=call.caller.uri, display_name=call.caller.display_name),
                    events.Party(role="callee", uri=call.callee.uri, display_name=call.callee.display_name),
                ),
                channels=tuple(
                    events.ChannelInfo(
                        channel=channel_name(audio.info.label),
                        label=audio.info.label,
                        codec=audio.info.codec,
                        sample_rate=audio.info.clock_rate,
                    )
                    for audio in channels
                ),
            )
        )
        labels = Labels(call_id=call.call_id, model=self.config.model, engine=self.config.backend)
        segmenter_config = SegmenterConfig(**self.config.segmenter)
        live = _LiveCall(call, time.monotonic(), channels)
        for audio in channels:
            transcriber = ChannelTranscriber(
                labels=labels,
                channel=channel_name(audio.info.label),
                scheduler=self.scheduler,
                emit=self.publish,
                segmenter_config=segmenter_config,
                partial_interval_s=self.config.scheduler["partial_interval_s"],
            )
            live.transcribers.append(transcriber)
            live.tasks.append(asyncio.create_task(self._transcribe_channel(audio, transcriber)))
        self._calls[call.call_id] = live

    async def _transcribe_channel(self, audio: CallChannel, transcriber: ChannelTranscriber) -> None:
        async for frame in audio.frames():
            transcriber.feed(frame.samples)
        await transcriber.finish()

    async def _call_ended(self, live: _LiveCall, reason: EndReason) -> None:
        await asyncio.gather(*live.tasks, return_exceptions=True)
        self.publish(
            events.CallEnded(
                **self._envelope(live.call.call_id),
                end_reason=reason,
                duration_ms=int((time.monotonic() - live.started_at) * 1000),
                final_segments=sum(t.finals_emitted for t in live.transcribers),
            )
        )
        for audio in live.channels:
            if isinstance(audio, ChannelAudio):
                self.metrics.channel_closed(audio.receiver.stats())
        self._calls.pop(live.call.call_id, None)


async def serve(config: Config, on_ready: Callable[[Daemon], None] | None = None) -> int:
    """Run the daemon until SIGTERM/SIGINT."""
    daemon = Daemon(config)
    await daemon.start()
    if on_ready is not None:
        on_ready(daemon)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: asyncio.create_task(daemon.stop()))
    await daemon.wait_stopped()
    return 0
