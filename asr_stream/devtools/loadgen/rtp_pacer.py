"""Real-time RTP for many calls from one process: one timer tick every 20 ms sends a packet per call.

Why one tick rather than one task per call: at 500 calls a process, a sleeping task per call would
mean 25,000 wake-ups a second; one tick walks a list and makes one `send` per call (about 4 us per
packet here, mostly the system call). Each call has its own connected UDP socket, bound before its
INVITE so the SDP offer names it, as a gateway's media port would be.

Pacing is drift-free: tick k is due at start + k * 20 ms on the monotonic clock, whatever the
earlier ticks cost; a tick that starts late is followed at once by the next, so a stalled process
catches up with a burst, the way a real sender's RTP timestamps keep running. Each tick records
its lateness (when its last packet left, minus when the tick was due): its percentiles say whether
the generator kept up, as distinct from the daemon.

The fixed RTP header is packed here with one precompiled `struct` rather than built through
`asr_stream.rtp.packet.RtpPacket.to_bytes` (690 ns vs 72 ns per packet, measured with timeit):
at thousands of packets per tick, that is the difference between the header and the system call
dominating. The daemon's receiver parses every packet with the product's strict parser anyway.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from dataclasses import dataclass, field

from asr_stream.devtools.loadgen.call_audio import PACKET, CallProgram

PERIOD_S = PACKET / 8000
_HEADER = struct.Struct("!BBHII")
_VERSION_2 = 0x80
_MARKER = 0x80


@dataclass(eq=False)
class RtpStream:
    """One call's media: its socket, what to send, and what happened while sending."""

    sock: socket.socket  # connected to the daemon's RTP address, non-blocking
    program: CallProgram
    payload_type: int
    ssrc: int
    first_sequence: int
    first_timestamp: int
    done: asyncio.Future[str] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    index: int = 0  # next packet
    first_sent_mono: float | None = None
    first_sent_wall: float | None = None
    speech_end_sent_wall: list[float] = field(default_factory=list)  # per utterance, in order
    dropped: int = 0  # the socket buffer was full (EAGAIN)
    refused: int = 0  # ICMP port unreachable from an earlier packet: nobody listens there any more

    def __post_init__(self) -> None:
        self._marks = [u.last_packet for u in self.program.utterances]
        self._next_mark = self._marks[0] if self._marks else -1

    def send_next(self) -> bool:
        """Send packet `index`; False when that was the program's last packet."""
        i = self.index
        header = _HEADER.pack(
            _VERSION_2,
            self.payload_type | (_MARKER if i == 0 else 0),
            (self.first_sequence + i) & 0xFFFF,
            (self.first_timestamp + i * PACKET) & 0xFFFFFFFF,
            self.ssrc,
        )
        try:
            self.sock.send(header + self.program.payload(i))
        except BlockingIOError:
            self.dropped += 1
        except ConnectionRefusedError:
            self.refused += 1
        if i == 0:
            self.first_sent_mono, self.first_sent_wall = time.monotonic(), time.time()
        if i == self._next_mark:
            self.speech_end_sent_wall.append(time.time())
            marked = len(self.speech_end_sent_wall)
            self._next_mark = self._marks[marked] if marked < len(self._marks) else -1
        self.index = i + 1
        return self.index < self.program.total_packets


class RtpPacer:
    """Sends one packet per active stream every 20 ms, from `start_mono` on, until `close()`.

    With `phases` > 1 the timer ticks every 20 ms / `phases` and each stream belongs to one phase
    (the least busy when it is added), so a process's packets leave in `phases` smaller bursts
    instead of one: independent gateways' streams are not aligned either.
    """

    def __init__(self, start_mono: float, phases: int = 1) -> None:
        self._start = start_mono
        self._phases: list[list[RtpStream]] = [[] for _ in range(phases)]
        self._stopped = asyncio.Event()
        self.lateness_s: list[float] = []  # per tick that sent at least one packet
        self.ticks = 0

    def add(self, stream: RtpStream) -> asyncio.Future[str]:
        """Start streaming at its phase's next tick; the future resolves "completed" after the last packet."""
        min(self._phases, key=len).append(stream)
        return stream.done

    def stop(self, stream: RtpStream, why: str) -> None:
        """End a stream early (the far end hung up)."""
        for phase in self._phases:
            if stream in phase:
                phase.remove(stream)
        if not stream.done.done():
            stream.done.set_result(why)

    def close(self) -> None:
        self._stopped.set()

    async def run(self) -> None:
        period = PERIOD_S / len(self._phases)
        k = max(0, int((time.monotonic() - self._start) / period))
        while not self._stopped.is_set():
            due = self._start + k * period
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            if streams := self._phases[k % len(self._phases)]:
                finished = [stream for stream in streams if not stream.send_next()]
                self.lateness_s.append(time.monotonic() - due)
                for stream in finished:
                    self.stop(stream, "completed")
            self.ticks += 1
            k += 1
