"""Which SSRC is the channel's stream: a stray packet with a new SSRC must not take the call over.

Gateways do send stray packets from the caller's address under another SSRC (comfort-noise and
DTMF generators, the losing side of a re-INVITE race). Switching to every new SSRC at once, and
ignoring the old one from then on, cut a call's audio at the first such packet. Here a new SSRC
is a *candidate* held on probation (RFC 3550 A.1 does the same with MIN_SEQUENTIAL = 2 for a new
source): it takes over only after `PROBATION_PACKETS` audio packets in sequence with no packet of
the current stream in between, or at once when the signalling announced a new source
(`expect_handover`). Its packets are held meanwhile and handed back in arrival order on takeover,
so a genuine switch loses no audio; a candidate that the current stream outlives is discarded and
its packets counted as stray.

Why 5 packets (100 ms at the usual 20 ms ptime), more than RFC 3550's 2: the strays seen in the
field come singly or as short bursts (an RFC 4733 end-of-event is sent three times; comfort-noise
and DTMF generators send while the caller is silent, so the "no current packet in between" rule
alone does not stop them). DTMF event packets never count towards probation (a key held for a
second must not take over the audio). A false takeover by a longer burst loses nothing either:
the caller's stream becomes the candidate, is held, and wins back after 5 packets. The cost of
the probation is only latency, 100 ms once per genuine switch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from asr_stream.rtp.packet import RtpPacket
from asr_stream.rtp.stats import signed_delta

PROBATION_PACKETS = 5
# Packets of the current stream after a candidate's last packet that prove the candidate stray.
OUTLIVED_AFTER = PROBATION_PACKETS
# A candidate packet counts as "in sequence" when it is at most this far from the candidate's
# highest sequence number (lets one loss or a swap through, not random garbage).
SEQUENCE_SLACK = 3
# Held packets per candidate: the probation run plus room for reordering and interleaved events.
MAX_HELD = 4 * PROBATION_PACKETS

Arrival = tuple[RtpPacket, float]  # a packet and its loop arrival time


@dataclass
class _Candidate:
    ssrc: int
    highest: int  # highest sequence number seen (16 bits)
    run: int = 0  # audio packets in sequence since the last packet of the current stream
    held: list[Arrival] = field(default_factory=list)
    current_since: int = 0  # current-stream packets since this candidate's last packet


StrayReport = Callable[[int, int, int | None], None]  # (stray SSRC, packets discarded, current SSRC)


class SsrcArbiter:
    """Decides per packet whether it belongs to the channel's stream now, later, or never."""

    def __init__(self, on_stray: StrayReport | None = None) -> None:
        self.current: int | None = None
        self.takeovers = 0  # SSRC changes that passed probation or were announced
        self.stray_packets = 0  # packets of candidates that never took over
        self._candidate: _Candidate | None = None
        self._handover_until = float("-inf")
        self._on_stray = on_stray

    def expect_handover(self, until: float) -> None:
        """The signalling announced a new media source: until loop time `until`, the first new
        SSRC takes over at its first packet."""
        self._handover_until = until

    def offer(self, packet: RtpPacket, arrival: float, is_audio: bool) -> list[Arrival]:
        """The packets to process now, in order: usually `[packet]`; `[]` while it is on probation;
        the held packets plus this one when its SSRC takes over."""
        if self.current is None:
            self.current = packet.ssrc
            return [(packet, arrival)]
        if packet.ssrc == self.current:
            self._current_packet()
            return [(packet, arrival)]
        if arrival <= self._handover_until:
            self._handover_until = float("-inf")
            return self._take_over(packet.ssrc, [(packet, arrival)])
        candidate = self._candidate
        if candidate is None or candidate.ssrc != packet.ssrc:
            self._discard_candidate()
            candidate = self._candidate = _Candidate(packet.ssrc, packet.sequence)
            step = 1
        else:
            step = signed_delta(packet.sequence, candidate.highest, 16)
        if abs(step) > SEQUENCE_SLACK:  # a jump within the candidate: start counting again
            candidate.run = 0
            candidate.highest = packet.sequence
        elif step > 0:
            candidate.highest = packet.sequence
        candidate.current_since = 0
        candidate.held.append((packet, arrival))
        if is_audio and step != 0:  # duplicates do not count
            candidate.run += 1
        if candidate.run >= PROBATION_PACKETS:
            self._candidate = None
            return self._take_over(candidate.ssrc, candidate.held)
        if len(candidate.held) > MAX_HELD:
            candidate.held.pop(0)
            self._count_stray(candidate.ssrc, 1)
        return []

    def finish(self) -> None:
        """The channel closed: a candidate still on probation was stray."""
        self._discard_candidate()

    def _current_packet(self) -> None:
        candidate = self._candidate
        if candidate is None:
            return
        candidate.run = 0  # the current stream is alive: the candidate's run is broken
        candidate.current_since += 1
        if candidate.current_since >= OUTLIVED_AFTER:
            self._discard_candidate()

    def _take_over(self, ssrc: int, packets: list[Arrival]) -> list[Arrival]:
        self._discard_candidate()
        self.current = ssrc
        self.takeovers += 1
        return packets

    def _discard_candidate(self) -> None:
        candidate, self._candidate = self._candidate, None
        if candidate is not None and candidate.held:
            self._count_stray(candidate.ssrc, len(candidate.held))

    def _count_stray(self, ssrc: int, packets: int) -> None:
        self.stray_packets += packets
        if self._on_stray is not None:
            self._on_stray(ssrc, packets, self.current)
