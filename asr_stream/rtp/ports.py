"""RTP/RTCP port pairs from a configured range: RTP on an even port, RTCP on the next odd one (RFC 3550 §11).

Both sockets are bound here, at allocation time, so a port that another process holds is
skipped instead of failing later, and nothing else can take it between the SDP answer and
the first packet. Allocation walks the range round-robin: a port just released is the last to
be reused, so stray packets of an ended call do not land in the next one.

`exhausted` and `free_pairs` are for the service layer: while no pair is free, new calls can
only be refused, so readiness should fail and the saturation metric rise (issue 11: 300 INVITEs
that were never ACKed held the range while /readyz still said ready).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

# Room for about 2 s of G.711 at 50 packets/s while the event loop is busy elsewhere.
RECEIVE_BUFFER_BYTES = 256 * 1024


class PortsExhausted(RuntimeError):
    """Every pair in the range is in use: the call cannot be answered."""


@dataclass(frozen=True, slots=True)
class PortPair:
    """Bound non-blocking UDP sockets; `port` is the RTP port to announce in SDP."""

    port: int
    rtp: socket.socket
    rtcp: socket.socket


class PortAllocator:
    """Hands out port pairs on `host` from the even ports of [port_min, port_max]."""

    def __init__(self, host: str, port_min: int, port_max: int) -> None:
        first = port_min + (port_min % 2)
        if not 0 < first < port_max <= 65535:
            raise ValueError(f"no RTP/RTCP pair fits in ports {port_min}-{port_max}")
        self.host = host
        self._ports = range(first, port_max, 2)  # port + 1 must also fit
        self._cursor = 0
        self._in_use: set[int] = set()
        self._failed = False  # the last allocation found no bindable pair, and none was released since

    @property
    def in_use(self) -> int:
        return len(self._in_use)

    @property
    def capacity(self) -> int:
        """Pairs in the range."""
        return len(self._ports)

    @property
    def free_pairs(self) -> int:
        """Pairs not held by us; 0 also when the last allocation found every remaining pair
        bound by another process (an estimate until then: such pairs are only found by trying)."""
        return 0 if self._failed else self.capacity - self.in_use

    @property
    def exhausted(self) -> bool:
        """No pair can be allocated now: a new call would be refused."""
        return self.free_pairs == 0

    def allocate(self) -> PortPair:
        for _ in range(len(self._ports)):
            port = self._ports[self._cursor]
            self._cursor = (self._cursor + 1) % len(self._ports)
            if port in self._in_use:
                continue
            pair = self._bind_pair(port)
            if pair is not None:
                self._in_use.add(port)
                return pair
        self._failed = True
        raise PortsExhausted(f"no free RTP port pair in {self._ports.start}-{self._ports.stop}")

    def release(self, pair: PortPair) -> None:
        """Close both sockets (if the transports have not) and return the pair to the pool."""
        pair.rtp.close()
        pair.rtcp.close()
        self._in_use.discard(pair.port)
        self._failed = False

    def _bind_pair(self, port: int) -> PortPair | None:
        sockets = []
        try:
            for candidate in (port, port + 1):
                sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET, socket.SOCK_DGRAM)
                sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
                sock.setblocking(False)
                sock.bind((self.host, candidate))
        except OSError:
            for sock in sockets:
                sock.close()
            return None
        return PortPair(port, sockets[0], sockets[1])
