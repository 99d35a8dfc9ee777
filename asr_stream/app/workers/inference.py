"""The inference process: the model and the one BatchScheduler of a multi-process daemon.

`serve_inference` runs in the child: it loads the model (the only process that does, and on a GPU
host the only one that initialises CUDA), starts the scheduler and an `InferenceServer` on a Unix
socket for the ingest workers and the main process, then tells the main process it is ready.
While it runs it reports every change of the scheduler's `saturated` (admission control in the
main process answers 503 from it) and a metrics snapshot every second.

`InferenceSupervisor`, in the main process, owns that child: it starts it and waits until the
model is loaded (a model that cannot load is the operator's one-line error, as in one process),
restarts it if it dies (meanwhile `ready` is false, so /readyz fails and new calls get 503; the
clients send their finals again once it is back), and stops it last, after the workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from asr_stream.app.config import Config, Settings
from asr_stream.app.logs import LogSettings
from asr_stream.app.metrics import DaemonMetrics
from asr_stream.app.process_metrics import SNAPSHOT_INTERVAL_S
from asr_stream.app.serving import live_scheduler, load_live_model
from asr_stream.app.workers.messages import InferenceReady, MetricsReport, Saturation, StartFailed, Stop
from asr_stream.app.workers.process import EXIT_GRACE_S, ChildProcess
from asr_stream.app.workers.restarts import Backoff
from asr_stream.common.ipc import Link, LinkClosed, Request
from asr_stream.errors import OperatorError
from asr_stream.inference.remote import InferenceServer
from asr_stream.inference.scheduler import BatchScheduler

log = logging.getLogger(__name__)

NAME = "inference"
#: Metric families the inference process feeds (the main process merges them into /metrics).
METRIC_PREFIXES = ("asr_inference_", "asr_scheduler_")
#: How often the child looks at the scheduler's saturation (admission reacts within this).
SATURATION_POLL_S = 0.05
#: The GIL switch interval here (CPython's default is 5 ms). The event loop, which reads the workers'
#: requests and sends the answers, shares the GIL with the engine threads, whose decoding loops are
#: Python between device calls, and may wait up to a whole interval for the GIL after each socket call
#: (the convoy effect). Measured on the H200 at 2,000 channels, its effect was within run-to-run noise
#: (docs/benchmarks.md, runs E1-E3): kept because it costs nothing measurable, not as a gain.
SWITCH_INTERVAL_S = 0.0005


@dataclass(frozen=True)
class InferenceSpec:
    settings: Settings
    config_source: str
    socket_path: str


class InferenceStartFailed(OperatorError):
    """The inference process could not load the model; the message is the child's own one line."""


async def serve_inference(spec: InferenceSpec, link: Link) -> int:
    """The inference process's main coroutine (see the module docstring)."""
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    try:
        model = await asyncio.to_thread(load_live_model, Config(spec.settings, spec.config_source))
    except OperatorError as error:
        link.send(StartFailed(str(error)))
        await link.drain()
        return 2
    metrics = DaemonMetrics()
    scheduler = live_scheduler(model, spec.settings, metrics)
    metrics.watch_scheduler(scheduler)
    await scheduler.start()
    server = InferenceServer(scheduler, spec.socket_path)
    await server.start()
    link.send(InferenceReady(os.getpid(), model.language, model.max_batch, model.hotword_lists))
    reporter = asyncio.create_task(_report(link, scheduler, metrics))
    stop: Request | None = None
    async for message in link.receive():
        if isinstance(message, Request) and isinstance(message.body, Stop):
            stop = message
            break
    reporter.cancel()
    await asyncio.gather(reporter, return_exceptions=True)
    # Asked to stop: the queued finals get their deadline. The main process gone: stop at once.
    await scheduler.stop(timeout_s=stop.body.deadline_s if stop is not None else 0.0)
    await server.stop()
    if stop is not None:
        with contextlib.suppress(LinkClosed):
            link.send(MetricsReport(metrics.snapshot(METRIC_PREFIXES)))
            link.reply(stop)
            await link.drain()
    return 0


async def _report(link: Link, scheduler: BatchScheduler, metrics: DaemonMetrics) -> None:
    """Saturation changes as they happen, metrics every snapshot interval."""
    saturated = False
    next_snapshot = 0.0
    with contextlib.suppress(LinkClosed):
        while True:
            if scheduler.saturated != saturated:
                saturated = not saturated
                link.send(Saturation(saturated))
            if time.monotonic() >= next_snapshot:
                link.send(MetricsReport(metrics.snapshot(METRIC_PREFIXES)))
                next_snapshot = time.monotonic() + SNAPSHOT_INTERVAL_S
            await asyncio.sleep(SATURATION_POLL_S)


class InferenceSupervisor:
    """The main process's owner of the inference process; see the module docstring."""

    def __init__(self, config: Config, rundir: Path, metrics: DaemonMetrics, logs: LogSettings) -> None:
        self.socket_path = str(rundir / "inference.sock")
        self._spec = InferenceSpec(config.settings, config.source, self.socket_path)
        self._metrics = metrics
        self._logs = logs
        self._child: ChildProcess | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._backoff = Backoff()
        self._stopping = False
        self.ready = False
        self.saturated = False
        self.language: str | None = None
        self.hotword_lists: frozenset[str] = frozenset()
        self.restarts = 0

    @property
    def pid(self) -> int | None:
        return self._child.pid if self._child is not None else None

    async def start(self) -> None:
        """Start the process and wait until its model is loaded; InferenceStartFailed if it cannot be."""
        await self._spawn()  # on failure, reaped by _spawn
        self._watcher = asyncio.create_task(self._watch(), name="inference-supervisor")

    async def stop(self, deadline_s: float) -> None:
        """Let it finish queued finals within `deadline_s`, then reap it (killed if it does not exit)."""
        self._stopping = True
        child = self._child
        if child is not None and child.link is not None and self.ready:
            with contextlib.suppress(LinkClosed, TimeoutError):
                await asyncio.wait_for(child.link.request(Stop(deadline_s)), deadline_s + EXIT_GRACE_S)
        if self._watcher is not None:  # also ends a restart in progress (and reaps what it spawned)
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
        if self._child is not None:
            await self._child.reap()
        self.ready = False

    async def _spawn(self) -> None:
        child = ChildProcess(NAME, serve_inference, self._spec, self._logs)
        self._child = child
        try:
            link = await child.start()
            async for message in link.receive():
                if isinstance(message, InferenceReady):
                    self.language, self.hotword_lists = message.language, message.hotword_lists
                    self.ready = True
                    self._backoff.started()
                    log.info("inference process ready (pid %d)", message.pid)
                    return
                if isinstance(message, StartFailed):
                    raise InferenceStartFailed(message.message)
            raise InferenceStartFailed(f"the inference process (pid {child.pid}) exited while loading the model")
        except BaseException:
            await child.reap(0 if self._stopping else EXIT_GRACE_S)
            raise

    async def _watch(self) -> None:
        """Follow the child's reports; when it dies, restart it (with back-off) until stopped."""
        while True:
            child = self._child
            assert child is not None and child.link is not None
            async for message in child.link.receive():
                if isinstance(message, Saturation):
                    self.saturated = message.saturated
                elif isinstance(message, MetricsReport):
                    self._metrics.children.update(NAME, message.families)
            self.ready = self.saturated = False
            self._metrics.children.retire(NAME)
            if self._stopping:
                return
            status = await child.reap()
            log.error("inference process (pid %s) ended with status %s: restarting it", child.pid, status)
            while not self._stopping:
                await asyncio.sleep(self._backoff.delay())
                try:
                    await self._spawn()
                    self.restarts += 1
                    break
                except InferenceStartFailed as error:
                    log.error("inference process failed to start again: %s", error)
