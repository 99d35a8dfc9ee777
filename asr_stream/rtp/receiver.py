"""One RTP channel: a UDP port pair in, gap-free PCM frames and events (DTMF, inactivity) out.

Everything runs in datagram callbacks on the event loop, so the per-packet path is plain
synchronous code: parse, source check, SSRC arbitration (stray packets of another SSRC are held
on probation, `ssrc.py`), timeline, duplicate check, jitter buffer, decode. No datagram can raise
out of it: each rejected one is counted by reason in `stats().dropped`, and stray ones are also
logged, at most once per port every 10 s.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import itertools
import logging
import socket
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from asr_stream.common.throttled_log import ThrottledLog
from asr_stream.rtp.codecs import TELEPHONE_EVENT, AudioDecoder, make_decoder
from asr_stream.rtp.dtmf import DtmfDetector, DtmfEvent
from asr_stream.rtp.jitter import JitterBuffer, PcmFrame
from asr_stream.rtp.packet import MalformedPacket, RtpPacket, parse_rtp
from asr_stream.rtp.ports import PortAllocator, PortPair
from asr_stream.rtp.rtcp import rtcp_packet_types
from asr_stream.rtp.ssrc import SsrcArbiter
from asr_stream.rtp.stats import SourceStats
from asr_stream.rtp.timeline import Timeline

logger = logging.getLogger(__name__)
_throttled = ThrottledLog(logger)
_serials = itertools.count()

#: After the signalling announced new media (`expect_new_source`), how long the first new SSRC
#: (and, with first-source latching, the first new source address) takes over without probation.
HANDOVER_WINDOW_S = 10.0


class Latching(enum.Enum):
    """Which source may send media: the SDP-announced address only, or whoever sends first
    (symmetric RTP behind NAT, where the announced address is not the one packets come from)."""

    SDP = "sdp"
    FIRST = "first"


@dataclass(frozen=True)
class ReceiverConfig:
    """What the SDP negotiation decided for one channel, plus local policy."""

    payload_types: Mapping[int, str]  # RTP payload type -> SDP encoding name ("PCMU", "telephone-event", ...)
    remote: tuple[str, int] | None = None  # the SDP-announced media address
    latching: Latching = Latching.FIRST
    playout_delay_s: float = 0.06
    inactivity_timeout_s: float = 30.0
    max_queued_frames: int = 500  # 10 s of 20 ms packets; beyond, the oldest frames are dropped


@dataclass(frozen=True, slots=True)
class RtpTimeout:
    """No media for `idle_s` seconds: the daemon usually ends the call ("rtp_timeout")."""

    idle_s: float


RtpEvent = DtmfEvent | RtpTimeout


@dataclass(frozen=True)
class ReceiverStats:
    """Snapshot of a channel's reception, summed over every SSRC it has seen."""

    packets: int  # accepted media and DTMF packets, duplicates excluded
    lost: int  # RFC 3550 cumulative lost (expected - received)
    duplicate: int
    reordered: int
    late: int  # arrived after their place on the timeline was filled
    filled_ms: float  # silence inserted for media that never arrived
    jitter_ms: float  # RFC 3550 interarrival jitter of the current SSRC
    ssrc_changes: int
    timestamp_jumps: int
    dtmf_events: int
    dropped: dict[str, int] = field(default_factory=dict)  # rejected datagrams by reason ("stray_ssrc": see ssrc.py)
    rtcp: dict[str, int] = field(default_factory=dict)  # RTCP packets by type, malformed ones by reason


_END = None  # queue sentinel: the receiver closed


class _Datagrams(asyncio.DatagramProtocol):
    """Routes a socket's datagrams to a callback of the receiver."""

    def __init__(self, on_datagram: Any) -> None:
        self.datagram_received = on_datagram  # type: ignore[method-assign]


class RtpReceiver:
    """Receives one channel on a port pair from a `PortAllocator`; create with `await RtpReceiver.open(...)`."""

    def __init__(self, allocator: PortAllocator, ports: PortPair, config: ReceiverConfig) -> None:
        self.config = config
        self.port = ports.port
        self._allocator = allocator
        self._ports = ports
        self._loop = asyncio.get_running_loop()
        self._decoders, self._dtmf_payload_types, self.rate = self._payload_map(config.payload_types)
        self._timeline = Timeline(self.rate)
        self._arbiter = SsrcArbiter(self._stray)
        self._serial = next(_serials)  # tells receivers apart in throttled logs when ports are reused
        self._jitter = JitterBuffer(self.rate, self._publish_frame, config.playout_delay_s)
        self._dtmf = DtmfDetector(self.rate)
        self._sources: dict[int, SourceStats] = {}
        self._dropped: Counter[str] = Counter()
        self._rtcp: Counter[str] = Counter()
        self._dtmf_events = 0
        self._frames: asyncio.Queue[PcmFrame | None] = asyncio.Queue(config.max_queued_frames)
        self._events: asyncio.Queue[RtpEvent | None] = asyncio.Queue(256)
        self._peer = config.remote if config.latching is Latching.SDP else None
        self._announced = config.remote
        self._relatch_until = float("-inf")  # first-source latching: a new address may take over until then
        self._last_arrival = self._loop.time()
        self.first_media_at: float | None = None  # loop time of the first accepted audio packet
        self._timed_out = False
        self._poll_timer: asyncio.TimerHandle | None = None
        self._idle_timer = self._loop.call_later(self._idle_check_interval, self._check_idle)
        self._transports: list[asyncio.DatagramTransport] = []
        self._closed = False

    @classmethod
    async def open(cls, allocator: PortAllocator, config: ReceiverConfig) -> RtpReceiver:
        """Allocate a port pair and start receiving; the caller announces `receiver.port` in SDP."""
        ports = allocator.allocate()
        try:
            receiver = cls(allocator, ports, config)
            loop = asyncio.get_running_loop()
            handlers: tuple[tuple[socket.socket, Callable[[bytes, tuple[Any, ...]], None]], ...] = (
                (ports.rtp, receiver._on_rtp),
                (ports.rtcp, receiver._on_rtcp),
            )
            for sock, handler in handlers:
                transport, _ = await loop.create_datagram_endpoint(functools.partial(_Datagrams, handler), sock=sock)
                receiver._transports.append(transport)
        except BaseException:
            allocator.release(ports)
            raise
        return receiver

    def set_remote(self, remote: tuple[str, int]) -> None:
        """A re-INVITE announced the peer's media address: when it moved, expect a new source.

        With SDP latching only the new address is accepted from now on; with first-source
        latching the first packet from another address re-latches (see `expect_new_source`).
        """
        if remote == self._announced:
            return
        self._announced = remote
        if self.config.latching is Latching.SDP:
            self._peer = remote
        self.expect_new_source()

    def expect_new_source(self) -> None:
        """The signalling says the media source changes (re-INVITE to a new address or SSRC).

        For `HANDOVER_WINDOW_S`, the first packet with a new SSRC takes over at once instead of
        going through probation, and with first-source latching the first packet from a new
        address re-latches the channel to it.
        """
        until = self._loop.time() + HANDOVER_WINDOW_S
        self._arbiter.expect_handover(until)
        if self.config.latching is Latching.FIRST:
            self._relatch_until = until

    def set_payload_types(self, payload_types: Mapping[int, str]) -> None:
        """A re-INVITE changed the codec; the new one must share the channel's clock rate."""
        decoders, dtmf_payload_types, rate = self._payload_map(payload_types)
        if rate != self.rate:
            raise ValueError(f"codec change from {self.rate} Hz to {rate} Hz would break the channel clock")
        self._decoders, self._dtmf_payload_types = decoders, dtmf_payload_types

    @staticmethod
    def _payload_map(payload_types: Mapping[int, str]) -> tuple[dict[int, AudioDecoder], set[int], int]:
        """(decoders by payload type, DTMF payload types, the audio clock rate); raises ValueError."""
        decoders: dict[int, AudioDecoder] = {}
        dtmf_payload_types: set[int] = set()
        for payload_type, encoding in payload_types.items():
            if encoding.lower() == TELEPHONE_EVENT:
                dtmf_payload_types.add(payload_type)
            else:
                decoders[payload_type] = make_decoder(encoding)
        rates = {decoder.clock_rate for decoder in decoders.values()}
        if len(rates) != 1:
            raise ValueError(f"one channel needs audio codecs of one clock rate, got {sorted(rates)}")
        return decoders, dtmf_payload_types, rates.pop()

    async def frames(self) -> AsyncIterator[PcmFrame]:
        """Frames in timeline order, contiguous unless `max_queued_frames` overflowed; ends at `close()`."""
        while (frame := await self._frames.get()) is not _END:
            yield frame

    async def events(self) -> AsyncIterator[RtpEvent]:
        """DTMF presses and inactivity timeouts, in the order they happen; ends at `close()`."""
        while (event := await self._events.get()) is not _END:
            yield event

    def stats(self) -> ReceiverStats:
        sources = list(self._sources.values())
        current = sources[-1] if sources else None
        return ReceiverStats(
            packets=sum(source.received for source in sources),
            lost=sum(source.lost for source in sources),
            duplicate=sum(source.duplicate for source in sources) + self._jitter.duplicate,
            reordered=sum(source.reordered for source in sources),
            late=self._jitter.late,
            filled_ms=1000.0 * self._jitter.filled_samples / self.rate,
            jitter_ms=1000.0 * current.jitter / self.rate if current else 0.0,
            ssrc_changes=self._timeline.ssrc_changes,
            timestamp_jumps=self._timeline.timestamp_jumps,
            dtmf_events=self._dtmf_events,
            dropped=dict(self._dropped),
            rtcp=dict(self._rtcp),
        )

    def close(self) -> None:
        """Stop receiving, release held audio and pending DTMF, end both iterators, free the ports."""
        if self._closed:
            return
        self._closed = True
        self._idle_timer.cancel()
        if self._poll_timer is not None:
            self._poll_timer.cancel()
        for transport in self._transports:
            transport.close()
        self._allocator.release(self._ports)
        self._arbiter.finish()
        self._jitter.flush()
        for event in self._dtmf.finish():
            self._publish_event(event)
        self._put_dropping_oldest(self._frames, _END)
        self._put_dropping_oldest(self._events, _END)

    # -- datagram path -------------------------------------------------------------------------

    def _on_rtp(self, data: bytes, source: tuple[Any, ...]) -> None:
        try:
            self._receive(data, source)
        except Exception:  # a bug must cost one packet, not the event loop
            self._dropped["internal_error"] += 1
            logger.exception("RTP packet on port %d dropped", self.port)

    def _receive(self, data: bytes, source: tuple[Any, ...]) -> None:
        if self._closed:
            return
        try:
            packet = parse_rtp(data)
        except MalformedPacket as error:
            self._dropped[f"malformed_{error.reason}"] += 1
            return
        now = self._loop.time()
        if not self._from_peer((source[0], source[1]), now):
            self._dropped["unexpected_source"] += 1
            return
        decoder = self._decoders.get(packet.payload_type)
        if decoder is None and packet.payload_type not in self._dtmf_payload_types:
            self._dropped["unhandled_payload_type"] += 1
            return
        for accepted, arrival in self._arbiter.offer(packet, now, is_audio=decoder is not None):
            self._accept(accepted, arrival)

    def _from_peer(self, address: tuple[str, int], now: float) -> bool:
        """Whether the datagram comes from the latched (or announced) media source."""
        if address == self._peer:
            return True
        if self.config.latching is Latching.FIRST and (self._peer is None or now <= self._relatch_until):
            self._peer = address
            self._relatch_until = float("-inf")
            return True
        return False

    def _accept(self, packet: RtpPacket, now: float) -> None:
        """A packet of the channel's current stream (`now`: its arrival, earlier if it was held)."""
        decoder = self._decoders.get(packet.payload_type)
        if decoder is None and packet.payload_type not in self._dtmf_payload_types:
            self._dropped["unhandled_payload_type"] += 1  # held on probation across a codec change
            return
        samples = decoder.sample_count(packet.payload) if decoder else 0
        position = self._timeline.locate(packet.ssrc, packet.timestamp, samples, now)
        stats = self._sources.get(packet.ssrc)
        if stats is None:
            stats = self._sources[packet.ssrc] = SourceStats.starting_at(packet.sequence)
        if not stats.observe_sequence(packet.sequence):
            return
        self._last_arrival = now
        self._timed_out = False
        if decoder is None:
            try:
                presses = self._dtmf.observe(packet.payload, self._jitter.channel_sample(position))
            except MalformedPacket as error:
                self._dropped[f"malformed_{error.reason}"] += 1
                return
            for press in presses:
                self._publish_event(press)
            return
        if self.first_media_at is None:
            self.first_media_at = now
        stats.observe_transit(packet.timestamp, now * self.rate)
        self._jitter.push(position, samples, packet.payload, decoder, now)
        self._schedule_poll()

    def _stray(self, ssrc: int, packets: int, current: int | None) -> None:
        self._dropped["stray_ssrc"] += packets
        current_text = f"{current:#010x}" if current is not None else "none"
        _throttled.warning(
            (self.port, self._serial, "stray_ssrc"),
            "RTP port %d: %d packet(s) of SSRC %#010x ignored as stray; the current stream %s continues",
            self.port,
            packets,
            ssrc,
            current_text,
        )

    def _on_rtcp(self, data: bytes, source: tuple[Any, ...]) -> None:
        try:
            self._rtcp.update(rtcp_packet_types(data))
        except MalformedPacket as error:
            self._rtcp[f"malformed_{error.reason}"] += 1

    # -- timers and output ---------------------------------------------------------------------

    def _schedule_poll(self) -> None:
        """Wake up when held audio may be released even if no further packet arrives."""
        deadline = self._jitter.deadline()
        if deadline is None or (self._poll_timer is not None and self._poll_timer.when() <= deadline):
            return
        if self._poll_timer is not None:
            self._poll_timer.cancel()
        self._poll_timer = self._loop.call_at(deadline, self._poll)

    def _poll(self) -> None:
        self._poll_timer = None
        self._jitter.poll(self._loop.time())
        self._schedule_poll()

    @property
    def _idle_check_interval(self) -> float:
        return max(0.05, self.config.inactivity_timeout_s / 4)

    def _check_idle(self) -> None:
        idle = self._loop.time() - self._last_arrival
        if idle >= self.config.inactivity_timeout_s and not self._timed_out:
            self._timed_out = True  # once per silence; media resuming re-arms it
            self._publish_event(RtpTimeout(idle))
        self._idle_timer = self._loop.call_later(self._idle_check_interval, self._check_idle)

    def _publish_frame(self, frame: PcmFrame) -> None:
        if self._put_dropping_oldest(self._frames, frame):
            self._dropped["frame_queue_overflow"] += 1

    def _publish_event(self, event: RtpEvent) -> None:
        if isinstance(event, DtmfEvent):
            self._dtmf_events += 1
        if self._put_dropping_oldest(self._events, event):
            self._dropped["event_queue_overflow"] += 1

    @staticmethod
    def _put_dropping_oldest(queue: asyncio.Queue[Any], item: Any) -> bool:
        """Bounded queues never block the datagram path: a stalled consumer loses the oldest item."""
        dropped = queue.full()
        if dropped:
            queue.get_nowait()
        queue.put_nowait(item)
        return dropped
