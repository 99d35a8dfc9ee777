"""The live daemon, composition root: ingest -> VAD/segments -> batched model -> transcript -> sinks.

With `workers: 1` (the default) one asyncio loop owns SIP, RTP, VAD and transcript state; model
work runs on the scheduler's engine threads, and Kafka delivery on the sink's own thread, so the
loop never blocks. With `workers: N > 1` this process keeps SIP, admission, WebRTC, Kafka and
HTTP; an inference process owns the model and scheduler (`app.workers.inference`), and N ingest
worker processes each run whole calls (`app.workers.pool`); docs/architecture.md shows the layout.

Lifecycle of a call as consumers see it: `call.started`, then per channel partials and finals in
segment order, then `call.ended` once every final of the call has been emitted (app/calls.py).

Start and stop are one stack: `start()` loads the model first (in this process, or by starting the
inference process and waiting for it: the likeliest operator mistake fails before any socket or
thread), then brings the components up in order (HTTP, Kafka, scheduler, calls, WebRTC, the
ingest workers, SIP last, so nothing is admitted before it can be served) and, if a step fails,
unwinds what it had started. `stop()` unwinds the same stack in reverse: stop admitting (503) and
hang up every call, let the calls (in this process and in the workers) finish their finals up to
the deadline and cancel the rest (each still gets its `call.ended`), stop the workers and the
scheduler, flush Kafka (what is not acknowledged stays in the spool for the next start), close
HTTP, stop the inference process.

A daemon that is killed cannot end its calls, so the Kafka sink keeps a journal of the calls
consumers have seen start and not end (sinks/journal.py); the next start publishes their
`call.ended` with reason `lost` before it admits a call. With `workers: N` every event goes through
the main process's sink, so the journal covers the workers' calls too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import tempfile
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import TypeVar

from asr_stream.app import http_api
from asr_stream.app.blas_threads import limit_blas_threads
from asr_stream.app.calls import CallPipeline, CallRegistry, CallSession, PipelineSettings, rtp_channels, start_batched_vad
from asr_stream.app.config import Config, split_hostport
from asr_stream.app.logs import LogSettings
from asr_stream.app.metrics import DaemonMetrics
from asr_stream.app.serving import live_scheduler, load_live_model
from asr_stream.app.whip_routes import whip_routes
from asr_stream.app.workers.inference import InferenceSupervisor
from asr_stream.app.workers.pool import ARENA_BYTES, WorkerPool
from asr_stream.audio.vad_batch import BatchedVad
from asr_stream.common.shm_arena import SharedArena
from asr_stream.common.throttled_log import ThrottledLog, clip
from asr_stream.errors import OperatorError
from asr_stream.inference.remote import InferenceClient
from asr_stream.inference.runners import LoadedModel
from asr_stream.inference.scheduler import BatchScheduler
from asr_stream.ingest.media import HangUp, IngestConfig, MediaHost, RtpMediaHost
from asr_stream.ingest.telephony import TelephonyIngest
from asr_stream.ingest.types import CallInfo
from asr_stream.ingest.webrtc.session import WhipIngest
from asr_stream.sinks.journal import JOURNAL_NAME, OpenCallJournal
from asr_stream.sinks.kafka import KafkaSink
from asr_stream.sinks.livefeed import LiveFeedHub
from asr_stream.transcript import events
from asr_stream.transcript.channel import TranscriptionQueue

log = logging.getLogger(__name__)

_T = TypeVar("_T")
#: Where the arenas of a multi-process daemon live (POSIX shared memory on Linux).
SHARED_MEMORY_DIR = Path("/dev/shm")

#: Of the stop deadline, what is kept for flushing Kafka after the calls (the rest is theirs).
KAFKA_FLUSH_SHARE = 0.25
#: How long undoing a start that failed half-way may take (a stop has its own deadline).
START_UNWIND_S = 10.0


class Daemon:
    """Owns every component; `start()`, then `wait_stopped()`, or `stop()` from a signal."""

    def __init__(
        self,
        config: Config,
        publish_hooks: tuple[Callable[[events.TranscriptEvent], None], ...] = (),
        logs: LogSettings | None = None,
    ) -> None:
        self.config = config
        self.logs = logs if logs is not None else LogSettings(known_secrets=tuple(config.secrets()))
        self.metrics = DaemonMetrics()
        self.hub = LiveFeedHub()
        self._publish_hooks = (self.hub.publish, self.metrics.observe_event, *publish_hooks)
        self.calls = CallRegistry(on_finished=self._call_finished)  # this process's calls (all, with workers: 1)
        # workers: 1 -- the model and scheduler in this process
        self.model: LoadedModel | None = None
        self.scheduler: BatchScheduler | None = None
        # workers: N > 1 -- the inference process, this process's client of it, the ingest workers
        self.inference: InferenceSupervisor | None = None
        self.inference_client: InferenceClient | None = None
        self.pool: WorkerPool | None = None
        self.vad: BatchedVad | None = None  # this process's calls' VAD batches (None: each channel scores its own)
        self.kafka: KafkaSink | None = None
        self.ingest: TelephonyIngest | None = None
        self.whip: WhipIngest | None = None
        self._stack = contextlib.AsyncExitStack()
        self._accepting = False  # true from the end of start() until stop(): calls are admitted
        self._stopping = False
        self._stopped = asyncio.Event()
        self._deadline = 0.0
        self._refusals = ThrottledLog(log)  # a retry storm while saturated must not flood the log

    @property
    def multiprocess(self) -> bool:
        return self.config.workers > 1

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Bring every component up; if one fails, what was started is stopped again and the error raised."""
        self._deadline = asyncio.get_running_loop().time() + START_UNWIND_S
        limit_blas_threads()
        async with contextlib.AsyncExitStack() as stack:
            # The model first: the likeliest operator mistake (not prepared, no CUDA) fails before any
            # socket or thread. With workers: N > 1 the inference process loads it (and stops last).
            if self.multiprocess:
                await self._start_inference_process(stack)
                assert self.inference is not None
                language, hotword_lists = self.inference.language, self.inference.hotword_lists
            else:
                self.model = await asyncio.to_thread(load_live_model, self.config)
                language, hotword_lists = self.model.language, self.model.hotword_lists
            await self._start_http(stack)
            self._start_kafka(stack)
            queue = self.inference_client if self.inference_client is not None else await self._start_scheduler(stack)
            self.vad = await start_batched_vad(self.config.settings)
            if self.vad is not None:
                stack.push_async_callback(self.vad.stop)  # after the calls' last finals (unwound after the drain below)
            settings = PipelineSettings.of(self.config, language, hotword_lists)
            pipeline = CallPipeline(settings, queue, self.publish, self.calls, self.vad, self.metrics.final_endpoint.observe)
            stack.push_async_callback(lambda: self.calls.drain(self._remaining_s() * (1 - KAFKA_FLUSH_SHARE)))
            if self.whip is not None:
                self._consume_while_running(stack, pipeline.consume(self.whip.events()), self.whip.stop)
            self.ingest = TelephonyIngest(self.config.components.ingest, admit=self._admit, media=self._media_host(language, hotword_lists))
            if self.pool is not None:
                await self.pool.start()
                stack.push_async_callback(lambda: self.pool.stop(self._remaining_s() * (1 - KAFKA_FLUSH_SHARE)))  # type: ignore[union-attr]
            await _listening("SIP", self.config.settings.sip.listen, self.ingest.start())
            self._consume_while_running(stack, pipeline.consume(self.ingest.events()), self._hang_up)
            self._stack = stack.pop_all()
        self._accepting = True
        self.metrics.watch_sip(self.ingest.sip.stats)
        self.metrics.watch_admission(lambda: self.saturated, lambda: self.ingest.rtp_port_pairs_free if self.ingest else 0)
        log.info(
            "asr-stream ready: SIP %s (port %d), model %s on %s",
            self.config.settings.sip.listen,
            self.ingest.sip.port,
            self.config.settings.model,
            self.config.settings.backend,
        )
        if self.pool is not None and self.inference is not None:
            layout = {"main": [os.getpid()], **self.child_pids()}
            log.info(
                "process layout: main pid %d (SIP, admission, WebRTC, Kafka, HTTP); inference pid %s (%s on %s); "
                "%d ingest workers, pids %s (RTP ports %s)",
                os.getpid(),
                self.inference.pid,
                self.config.settings.model,
                self.config.settings.backend,
                self.config.workers,
                ", ".join(map(str, layout["worker"])),
                ", ".join(f"{low}-{high}" for low, high in self.pool.port_slices),
                extra={"processes": layout},
            )

    async def stop(self, deadline_s: float = 20.0) -> None:
        """Graceful shutdown within `deadline_s`: see the module docstring for the order."""
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        self._accepting = False
        self._deadline = asyncio.get_running_loop().time() + deadline_s
        log.info("shutting down: %d calls open", len(self.calls) + (self.pool.open_calls if self.pool else 0))
        try:
            await self._stack.aclose()
        finally:
            self._stopped.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    def child_pids(self) -> dict[str, list[int]]:
        """The daemon's child processes by role (empty with workers: 1)."""
        if self.inference is None or self.pool is None:
            return {}
        return {"inference": [self.inference.pid] if self.inference.pid else [], "worker": self.pool.pids()}

    def _remaining_s(self) -> float:
        return max(0.0, self._deadline - asyncio.get_running_loop().time())

    # -- components ------------------------------------------------------------------------
    async def _start_http(self, stack: contextlib.AsyncExitStack) -> None:
        """Health, readiness, metrics, the live feed and the agent-assist page (docs/operations.md)."""
        checks = {
            # In a multi-process daemon: the inference process is up with its model (not restarting).
            "model_loaded": lambda: self.model is not None or (self.inference is not None and self.inference.ready),
            "sip_listening": lambda: self._accepting,
            # A load balancer must stop sending calls while every RTP port pair is taken.
            "rtp_ports_free": lambda: self.ingest is not None and not self.ingest.rtp_ports_exhausted,
            "kafka_delivering_or_spooling": lambda: self.kafka is not None and self.kafka.alive,
        }
        if self.multiprocess:
            checks["ingest_workers_running"] = lambda: self.pool is not None and self.pool.workers_up > 0
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
        self.kafka = KafkaSink(settings, ledger=journal, on_delivered=self.metrics.observe_delivered)
        self.kafka.start()
        stack.push_async_callback(lambda: self.kafka.close(timeout_s=self._remaining_s()))  # type: ignore[union-attr]
        self.metrics.watch_kafka(self.kafka)
        if left_open:
            log.warning(
                "%d calls were left open by the previous run (killed or crashed), e.g. %s: publishing their call.ended, reason lost",
                len(left_open),
                ", ".join(clip(call.call_id, 60) for call in left_open[:3]),
            )
        for call in left_open:
            self.publish(call.lost())

    async def _start_scheduler(self, stack: contextlib.AsyncExitStack) -> TranscriptionQueue:
        """workers: 1 -- the scheduler over the model loaded in this process."""
        assert self.model is not None
        self.scheduler = live_scheduler(self.model, self.config.settings, self.metrics)
        await self.scheduler.start()
        stack.push_async_callback(lambda: self.scheduler.stop(timeout_s=self._remaining_s() * (1 - KAFKA_FLUSH_SHARE)))  # type: ignore[union-attr]
        self.metrics.watch_scheduler(self.scheduler)
        self.metrics.watch_rtp(lambda: [channel.receiver.stats() for channel in rtp_channels(self.calls.sessions())])
        return self.scheduler

    async def _start_inference_process(self, stack: contextlib.AsyncExitStack) -> None:
        """workers: N > 1 -- the inference process (its model loaded), and this process's client of it (for WebRTC sessions)."""
        _check_shared_memory(self.config.workers + 1)
        rundir = Path(tempfile.mkdtemp(prefix="asr-stream-"))  # 0700: only this user reaches the sockets
        stack.callback(shutil.rmtree, rundir, ignore_errors=True)
        self.inference = InferenceSupervisor(self.config, rundir, self.metrics, self.logs)
        await self.inference.start()
        stack.push_async_callback(lambda: self.inference.stop(self._remaining_s() * (1 - KAFKA_FLUSH_SHARE)))  # type: ignore[union-attr]
        arena = SharedArena.create(f"asr-{os.getpid()}-main", ARENA_BYTES)
        stack.callback(arena.destroy)
        self.inference_client = InferenceClient(self.inference.socket_path, arena, "main")
        await self.inference_client.start()
        stack.push_async_callback(self.inference_client.stop)
        self.metrics.watch_inference_client(self.inference_client)
        self.metrics.watch_processes(self._processes_up, self._process_restarts)

    def _media_host(self, language: str | None, hotword_lists: frozenset[str]) -> Callable[[IngestConfig, HangUp], MediaHost]:
        """Where SIP calls' media goes: this process (workers: 1), or the pool of ingest workers."""
        if not self.multiprocess:
            return RtpMediaHost

        def pool(config: IngestConfig, hang_up: HangUp) -> WorkerPool:
            assert self.inference is not None
            self.pool = WorkerPool(
                config,
                hang_up,
                count=self.config.workers,
                settings=self.config.settings,
                config_source=self.config.source,
                inference_socket=self.inference.socket_path,
                language=language,
                hotword_lists=hotword_lists,
                publish=self.publish,
                metrics=self.metrics,
                logs=self.logs,
            )
            return self.pool

        return pool

    def _processes_up(self) -> dict[str, int]:
        return {"inference": int(self.inference is not None and self.inference.ready), "worker": self.pool.workers_up if self.pool else 0}

    def _process_restarts(self) -> dict[str, int]:
        return {"inference": self.inference.restarts if self.inference else 0, "worker": self.pool.restarts if self.pool else 0}

    def _consume_while_running(
        self, stack: contextlib.AsyncExitStack, consuming: Coroutine[object, object, None], stop_ingest: Callable[[], Awaitable[None]]
    ) -> None:
        """Follow an ingest's events until, on stop, it has ended its last call (its stream ends then)."""
        consumer = asyncio.create_task(consuming, name="ingest-events")

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
        return self._scheduler_saturated or (self.ingest is not None and self.ingest.rtp_ports_exhausted)

    @property
    def _scheduler_saturated(self) -> bool:
        if self.inference is not None:
            return self.inference.saturated
        return self.scheduler is not None and self.scheduler.saturated

    def _admit(self, call: CallInfo) -> int | None:
        """Refuse new calls until started, while stopping, while the scheduler predicts missed
        deadlines, or while the inference process is down."""
        why = None
        if not self._accepting:
            why = "not serving (starting or shutting down)"
        elif self._scheduler_saturated:
            why = "saturated"
        elif self.inference is not None and not self.inference.ready:
            why = "the inference process is restarting"
        if why is not None:
            self._refusals.warning((call.peer[0], why), "refusing call %s from %s: %s", clip(call.call_id), call.peer[0], why)
            return self.config.settings.sip.retry_after_s
        return None

    # -- calls -----------------------------------------------------------------------------
    def publish(self, event: events.TranscriptEvent) -> None:
        assert self.kafka is not None
        self.kafka.publish(event)
        for hook in self._publish_hooks:
            hook(event)

    def _call_finished(self, session: CallSession) -> None:
        for channel in rtp_channels([session]):
            self.metrics.channel_closed(channel.receiver.stats())


def _check_shared_memory(arenas: int) -> None:
    """Refuse to start when /dev/shm could not hold every arena: touching a page past its size is SIGBUS."""
    needed = arenas * ARENA_BYTES
    if SHARED_MEMORY_DIR.is_dir() and (free := shutil.disk_usage(SHARED_MEMORY_DIR).free) < needed:
        raise OperatorError(
            f"{SHARED_MEMORY_DIR} has {free // 2**20} MiB free, the {arenas - 1} workers and the main process need "
            f"{needed // 2**20} MiB of shared memory: give it more (docker run --shm-size, a Kubernetes emptyDir "
            "with medium: Memory) or lower `workers`"
        )


class ListenError(OperatorError):
    """A listening socket could not be opened (the port is taken, or the address is not this host's)."""


async def _listening(what: str, address: str, opening: Awaitable[_T]) -> _T:
    try:
        return await opening
    except OSError as error:
        raise ListenError(f"cannot listen for {what} on {address}: {error.strerror or error}") from error


async def serve(config: Config, on_ready: Callable[[Daemon], None] | None = None, logs: LogSettings | None = None) -> int:
    """Run the daemon until SIGTERM/SIGINT."""
    daemon = Daemon(config, logs=logs)
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
