"""Per-source INVITE rate limiting: one token bucket per source address, in bounded memory.

An allow-listed SBC is trusted to be who it is, not to behave: a gateway in a retry storm, or a
loop between two proxies, can send hundreds of INVITEs a second, and each answered one holds an
RTP port pair until its ACK (or 32 s without one). A token bucket lets the normal rate and short
bursts through and answers the excess 503 + Retry-After (RFC 3261 §21.5.4: how a UAS says it is
overloaded; SIP has no 429), statelessly, so refused INVITEs cost no memory.

Written here rather than taken from a library: the PyPI limiters are either per-process (one
bucket) or built around a storage backend (Redis); this is a dict and two floats per source.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True)
class InviteRateLimit:
    """New-call INVITEs per source address (re-INVITEs, retransmissions and other methods are free).

    Defaults: a hotline's SBC aggregating ~2,000 agent positions starts about 10 calls/s on
    average (3-minute calls), a few times that at the top of the hour; 50/s sustained with a
    burst of 100 lets such a gateway through untouched while capping a storm at what the RTP
    range and the models can absorb. Raise them for a bigger single gateway.
    """

    per_second: float = 50.0
    burst: int = 100
    max_sources: int = 4096  # buckets kept; the least recently seen source is forgotten beyond


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class SourceRateLimiter:
    """Token buckets by source address; `admit` spends one token or says how long to wait.

    Memory is bounded by `max_sources`: beyond it the least recently seen source is forgotten
    and starts again with a full bucket. That fails open (a flood from many spoofed addresses
    makes others' buckets full again) rather than shut, by choice: it can never refuse a
    well-behaved gateway because of someone else's traffic.
    """

    def __init__(self, limit: InviteRateLimit) -> None:
        if limit.per_second <= 0 or limit.burst < 1 or limit.max_sources < 1:
            raise ValueError(f"invalid INVITE rate limit {limit}")
        self.limit = limit
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def admit(self, source: str, now: float) -> int | None:
        """None if a request from `source` may pass now; otherwise the seconds until it could."""
        bucket = self._buckets.get(source)
        if bucket is None:
            bucket = self._buckets[source] = _Bucket(float(self.limit.burst), now)
            if len(self._buckets) > self.limit.max_sources:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(source)
            elapsed = max(0.0, now - bucket.updated)
            bucket.tokens = min(float(self.limit.burst), bucket.tokens + elapsed * self.limit.per_second)
            bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return None
        return max(1, math.ceil((1.0 - bucket.tokens) / self.limit.per_second))
