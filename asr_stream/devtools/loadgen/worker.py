"""One load-generator process: its share of the calls, one SIP socket, one RTP tick, one event loop.

The parent (`bench/callgen.py`) starts several of these with multiprocessing ("spawn": no Kafka
sockets or threads inherited), sends each a `WorkerPlan`, and talks to it over a pipe:

    worker -> parent   "ready"            programs built, sockets allowed, waiting for the start
    parent -> worker   start wall time    all workers share it, so the ramp is global
    worker -> parent   WorkerReport       after the last call hung up (or the deadline passed)

Everything a worker reports is plain data (wall-clock times from `time.time()`, the clock the
parent's Kafka consumer stamps arrivals with, so the two subtract).
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import socket
import time
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection

import numpy as np

from asr_stream.devtools.loadgen.call_audio import LEAD_IN_S, RATE, TAIL_S, CallProgram, Clip, build_program
from asr_stream.devtools.loadgen.rtp_pacer import RtpPacer, RtpStream
from asr_stream.devtools.loadgen.sip_caller import CallFailed, SipCaller
from asr_stream.errors import OperatorError

FD_HEADROOM = 64  # the SIP socket, the event loop's own, the pipe, stdio


@dataclass(frozen=True)
class ProgramSettings:
    codec: str = "PCMU"
    utterances: int = 4
    pause_s: tuple[float, float] = (0.8, 2.0)
    duration_s: float | None = None
    seed: int = 1


def program_for(index: int, clips: list[Clip], settings: ProgramSettings, cache: dict[str, bytes] | None = None) -> CallProgram:
    """Call `index`'s audio: the same for a given seed whichever process (or SIPp) places it."""
    return build_program(
        clips,
        np.random.default_rng([settings.seed, index]),
        codec=settings.codec,
        utterances=settings.utterances,
        pause_s=settings.pause_s,
        duration_s=settings.duration_s,
        encoded_clips=cache,
    )


def longest_call_s(clips: list[Clip], settings: ProgramSettings) -> float:
    """An upper bound on any call's length under `settings` (for deadlines), without building them all."""
    speech_s = settings.duration_s or settings.utterances * (max(clip.pcm.size for clip in clips) / RATE + settings.pause_s[1])
    return LEAD_IN_S + speech_s + TAIL_S


@dataclass(frozen=True)
class WorkerPlan:
    worker: int
    target: tuple[str, int]  # the daemon's SIP address
    local_host: str
    calls: list[tuple[int, float]]  # (call index, start offset in seconds from the shared start)
    clips: list[Clip]
    settings: ProgramSettings
    tick_phase_s: float  # this worker's tick offset within 20 ms, so workers do not burst together
    tick_phases: int  # the worker's calls are spread over this many sub-ticks of 20 ms (rtp_pacer)
    deadline_s: float  # after the start: hang up whatever is still up, and report


@dataclass
class CallRecord:
    """What happened to one call, from the generator's side."""

    index: int
    worker: int
    call_id: str | None = None
    failure: str | None = None  # why it was not answered, e.g. "503 Service Unavailable"
    retry_after_s: int | None = None
    invite_at: float | None = None  # wall times
    answered_at: float | None = None
    first_packet_at: float | None = None
    media_offset_s: float = 0.0  # answer -> first packet: the daemon's media clock starts at the answer
    utterances: list[dict] = field(default_factory=list)  # clip_id, text, start_s, speech_end_s, speech_end_sent_at
    packets: int = 0
    dropped: int = 0
    refused: int = 0
    ended_by: str | None = None  # "us" (our BYE was answered), "them" (their BYE), or the hang-up failure


@dataclass
class WorkerReport:
    worker: int
    calls: list[CallRecord]
    lateness_s: list[float]
    cpu_s: float
    wall_s: float
    malformed_sip: int
    late_answers: int  # 200 OKs after the INVITE was given up (hung up at once)
    sip_responses: dict[str, int]


def allow_sockets(needed: int) -> None:
    """Raise the soft open-files limit to fit one socket per call; fail clearly if the hard one is lower."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = needed + FD_HEADROOM
    if wanted > hard:
        raise OperatorError(f"{needed} calls need {wanted} open files, the hard limit is {hard}: raise it (ulimit -Hn)")
    if wanted > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


class Worker:
    """One process's calls: a task per call (asleep but for SIP), one RTP pacer for all of them."""

    def __init__(self, plan: WorkerPlan) -> None:
        """Builds every call's program up front, so that nothing but sending happens once calls start."""
        self.plan = plan
        cache: dict[str, bytes] = {}
        self.programs = {index: program_for(index, plan.clips, plan.settings, cache) for index, _ in plan.calls}
        self.caller = SipCaller(plan.target, plan.local_host, on_remote_hangup=self._remote_hangup)
        self.streams: dict[str, RtpStream] = {}
        self.records = {index: CallRecord(index, plan.worker) for index, _ in plan.calls}
        self.start_mono = 0.0
        self.pacer: RtpPacer | None = None

    def _remote_hangup(self, call_id: str) -> None:
        stream = self.streams.get(call_id)
        if stream is not None and self.pacer is not None:
            self.pacer.stop(stream, "them")

    async def run(self, start_wall: float) -> WorkerReport:
        """Place the calls from `start_wall` on (each at its offset), until all ended or the deadline."""
        cpu, wall = time.process_time(), time.monotonic()
        # Wall-clock start -> this process's monotonic clock, once: pacing never reads the wall clock.
        self.start_mono = time.monotonic() + (start_wall - time.time())
        self.pacer = RtpPacer(self.start_mono + self.plan.tick_phase_s, self.plan.tick_phases)
        await self.caller.start()
        ticking = asyncio.create_task(self.pacer.run(), name="rtp-pacer")
        calls = [asyncio.create_task(self._call(index, offset), name=f"call-{index}") for index, offset in self.plan.calls]
        try:
            remaining = self.start_mono + self.plan.deadline_s - time.monotonic()
            _, late = await asyncio.wait(calls, timeout=max(remaining, 0))
            for task in late:  # past the deadline: their records say how far they got
                task.cancel()
            await asyncio.gather(*calls, return_exceptions=True)
        finally:
            self.pacer.close()
            await ticking
            await self.caller.close()
        return WorkerReport(
            self.plan.worker,
            list(self.records.values()),
            self.pacer.lateness_s,
            time.process_time() - cpu,
            time.monotonic() - wall,
            self.caller.malformed,
            self.caller.late_answers,
            dict(self.caller.responses),
        )

    async def _call(self, index: int, offset_s: float) -> None:
        try:
            await self._place(index, offset_s)
        except asyncio.CancelledError:
            record = self.records[index]
            if record.call_id is None and record.failure is None:
                record.failure = "cut at the deadline"
            elif record.call_id is not None and record.ended_by is None:
                record.ended_by = "cut at the deadline"
            raise

    async def _place(self, index: int, offset_s: float) -> None:
        assert self.pacer is not None
        record, program = self.records[index], self.programs[index]
        await asyncio.sleep(max(0.0, self.start_mono + offset_s - time.monotonic()))
        rng = np.random.default_rng([self.plan.settings.seed, index, 1])
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((self.plan.local_host, 0))
            sock.setblocking(False)
            record.invite_at = time.time()
            try:
                answer = await self.caller.invite(sock.getsockname()[1], self.plan.settings.codec, user=f"callgen-{index}")
            except CallFailed as failure:
                record.failure, record.retry_after_s = failure.reason, failure.retry_after_s
                return
            record.call_id, record.answered_at = answer.call_id, time.time() - (time.monotonic() - answer.answered_at)
            sock.connect(answer.rtp_address)
            ssrc, first_sequence, first_timestamp = (int(v) for v in rng.integers(0, [2**32, 2**16, 2**32]))
            stream = RtpStream(sock, program, answer.payload_type, ssrc, first_sequence, first_timestamp)
            self.streams[answer.call_id] = stream
            try:
                how = await self.pacer.add(stream)
            finally:
                self.pacer.stop(stream, "cancelled")
                self._note_media(record, stream, answer.answered_at)
            if how == "them":
                record.ended_by = "them"
                return
            try:
                await self.caller.hang_up(answer.call_id)
                record.ended_by = "us"
            except CallFailed as failure:
                record.ended_by = failure.reason

    @staticmethod
    def _note_media(record: CallRecord, stream: RtpStream, answered_mono: float) -> None:
        record.packets, record.dropped, record.refused = stream.index, stream.dropped, stream.refused
        record.first_packet_at = stream.first_sent_wall
        if stream.first_sent_mono is not None:
            record.media_offset_s = stream.first_sent_mono - answered_mono
        sent = stream.speech_end_sent_wall
        record.utterances = [
            asdict(u) | {"speech_end_sent_at": sent[k] if k < len(sent) else None} for k, u in enumerate(stream.program.utterances)
        ]


def run_worker(plan: WorkerPlan, conn: Connection) -> None:
    """Process entry point (see the module docstring for the exchange with the parent)."""
    try:
        allow_sockets(len(plan.calls))
        with contextlib.suppress(ImportError):
            import uvloop  # optional: a faster event loop where installed

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        worker = Worker(plan)
        conn.send("ready")
        start_wall = conn.recv()
        conn.send(asyncio.run(worker.run(start_wall)))
    except Exception as error:  # the parent reports it; a traceback from a child helps nobody
        conn.send(f"worker {plan.worker} failed: {type(error).__name__}: {error}")
    finally:
        conn.close()
