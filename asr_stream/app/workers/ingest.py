"""An ingest worker process: the whole media path of the calls the main process assigns to it.

Each worker runs, for its calls, exactly the code the single-process daemon runs: an
`RtpMediaHost` on its own slice of the RTP port range (receivers, jitter buffers, decoding,
resampling), and a `CallPipeline` (VAD, segmenter, `ChannelTranscriber`, `CallSession`), whose
transcription queue is an `InferenceClient` to the inference process and whose events go to the
main process over the control link, in order, to be published there. A call stays in one worker
from INVITE to `call.ended`, so its events keep their order.

The main process drives it with the messages of `app.workers.messages`: OpenCall (a request,
answered with the ports), UpdateCall (re-INVITE), ConfirmCall (ACK: transcription starts),
CloseCall, and finally Stop, which lets the calls finish their finals up to a deadline (each
still publishes its `call.ended`). If the control link ends without Stop, the main process is
gone and the worker exits at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from dataclasses import dataclass, replace

import numpy as np

from asr_stream.app.calls import CallPipeline, CallRegistry, CallSession, PipelineSettings, rtp_channels, start_batched_vad
from asr_stream.app.config import Config, Settings
from asr_stream.app.metrics import DaemonMetrics
from asr_stream.app.process_metrics import SNAPSHOT_INTERVAL_S
from asr_stream.app.workers.messages import (
    CloseCall,
    ConfirmCall,
    HangUp,
    MetricsReport,
    OpenCall,
    Opened,
    Publish,
    Stop,
    UpdateCall,
    WorkerReady,
)
from asr_stream.audio.vad import Vad
from asr_stream.common.ipc import Link, LinkClosed, Request
from asr_stream.common.shm_arena import SharedArena
from asr_stream.inference.remote import InferenceClient
from asr_stream.ingest.media import RtpMediaHost
from asr_stream.ingest.types import SAMPLE_RATE
from asr_stream.rtp.ports import PortsExhausted
from asr_stream.sip.call import EndReason as SipEndReason
from asr_stream.transcript.events import TranscriptEvent

log = logging.getLogger(__name__)

#: Metric families an ingest worker feeds (the main process merges them into /metrics).
METRIC_PREFIXES = ("asr_rtp_", "asr_ipc_", "asr_final_endpoint_")


@dataclass(frozen=True)
class WorkerSpec:
    index: int
    settings: Settings
    config_source: str
    rtp_ports: tuple[int, int]  # this worker's slice of rtp.port_range
    arena: str  # the shared memory its audio goes through, created by the main process
    inference_socket: str
    language: str | None  # the model's default language, which every call's events carry
    hotword_lists: frozenset[str]  # the named hotword lists the model has

    @property
    def name(self) -> str:
        return f"worker-{self.index}"


async def serve_calls(spec: WorkerSpec, link: Link) -> int:
    """The worker process's main coroutine (see the module docstring)."""
    config = Config(spec.settings, spec.config_source)
    arena = SharedArena.attach(spec.arena)
    client = InferenceClient(spec.inference_socket, arena, spec.name)
    metrics = DaemonMetrics()
    metrics.watch_inference_client(client)

    def publish(event: TranscriptEvent) -> None:
        with contextlib.suppress(LinkClosed):  # the main process is gone: nobody to publish to
            link.send(Publish(event))

    async def hang_up(call_id: str, reason: SipEndReason) -> None:
        with contextlib.suppress(LinkClosed):
            link.send(HangUp(call_id, reason))

    ingest = config.components.ingest
    media = RtpMediaHost(replace(ingest, rtp_port_min=spec.rtp_ports[0], rtp_port_max=spec.rtp_ports[1]), hang_up)

    def finished(session: CallSession) -> None:
        for channel in rtp_channels([session]):
            metrics.channel_closed(channel.receiver.stats())

    calls = CallRegistry(on_finished=finished)
    metrics.watch_rtp(lambda: [channel.receiver.stats() for channel in rtp_channels(calls.sessions())])
    # A fresh interpreter: build and run the VAD's ONNX session now, or the first segment of the
    # worker's first call (also after a restart) would wait for it.
    await asyncio.to_thread(Vad().process, np.zeros(SAMPLE_RATE, np.float32))
    vad = await start_batched_vad(spec.settings)
    settings = PipelineSettings.of(config, spec.language, spec.hotword_lists)
    pipeline = CallPipeline(settings, client, publish, calls, vad, metrics.final_endpoint.observe)
    await client.start()
    consuming = asyncio.create_task(pipeline.consume(media.events()), name="calls")
    reporting = asyncio.create_task(_report(link, metrics, media), name="metrics")
    link.send(WorkerReady(os.getpid(), media.rtp_port_pairs_free))
    stop = await _follow(link, media)
    reporting.cancel()
    # Asked to stop: every call was closed before Stop, so their channels are ending; their last
    # finals get the deadline. The main process gone: nothing can be published, so stop at once.
    deadline_s = stop.body.deadline_s if stop is not None else 0.0
    await media.close()
    await asyncio.gather(consuming, reporting, return_exceptions=True)
    await calls.drain(deadline_s)
    if vad is not None:
        await vad.stop()
    await client.stop()
    arena.close()
    if stop is not None:
        with contextlib.suppress(LinkClosed):
            link.send(MetricsReport(metrics.snapshot(METRIC_PREFIXES), media.rtp_port_pairs_free))
            link.reply(stop)
            await link.drain()
    return 0


async def _follow(link: Link, media: RtpMediaHost) -> Request | None:
    """Apply the main process's messages in order until Stop (returned) or the link ends (None)."""
    async for message in link.receive():
        body = message.body if isinstance(message, Request) else message
        if isinstance(body, Stop):
            return message
        try:
            if isinstance(body, OpenCall):
                link.reply(message, Opened(await media.open_call(body.call), media.rtp_port_pairs_free))
            elif isinstance(body, UpdateCall):
                await media.update_call(body.call)
                link.reply(message)
            elif isinstance(body, ConfirmCall):
                await media.confirm_call(body.call)
            elif isinstance(body, CloseCall):
                await media.close_call(body.call, body.reason)
        except LinkClosed:
            break
        except (PortsExhausted, ValueError) as error:  # the answers SIP turns into 503 / 488
            link.reply(message, error=error)
        except Exception as error:  # a bug costs this call, not the worker's other calls
            log.exception("%s failed", type(body).__name__)
            if isinstance(message, Request):
                link.reply(message, error=RuntimeError(f"{type(error).__name__}: {error}"))
    return None


async def _report(link: Link, metrics: DaemonMetrics, media: RtpMediaHost) -> None:
    with contextlib.suppress(LinkClosed):
        while True:
            link.send(MetricsReport(metrics.snapshot(METRIC_PREFIXES), media.rtp_port_pairs_free))
            await asyncio.sleep(SNAPSHOT_INTERVAL_S)
