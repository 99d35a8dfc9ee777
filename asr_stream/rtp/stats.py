"""Per-source reception statistics as RFC 3550 defines them (§6.4.1, appendix A.1, A.3, A.8).

Sequence numbers are extended to 32+ bits by the shortest signed distance to the highest one
seen, so 16-bit wrap is invisible; `lost` is expected minus received, as in receiver reports.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# RFC 3550 A.1: a jump larger than this is a restarted sender, not loss.
MAX_DROPOUT = 3000
# Sequence numbers remembered for duplicate detection (about 20 s at 20 ms packets).
_DUPLICATE_WINDOW = 1024


def signed_delta(new: int, old: int, bits: int) -> int:
    """Shortest signed distance from `old` to `new` on a `bits`-bit wrapping counter."""
    half = 1 << (bits - 1)
    return ((new - old + half) & ((1 << bits) - 1)) - half


@dataclass(slots=True)
class SourceStats:
    """Counters of one SSRC; `observe_*` are called for each packet in arrival order."""

    base_sequence: int
    highest_sequence: int  # extended
    received: int = 0
    duplicate: int = 0
    reordered: int = 0
    restarts: int = 0
    jitter: float = 0.0  # RFC 3550 interarrival jitter, in timestamp units
    _last_transit: float | None = None
    _seen: set[int] = field(default_factory=set)  # extended sequence numbers, for duplicates

    @classmethod
    def starting_at(cls, sequence: int) -> SourceStats:
        return cls(base_sequence=sequence, highest_sequence=sequence - 1)

    @property
    def expected(self) -> int:
        return self.highest_sequence - self.base_sequence + 1

    @property
    def lost(self) -> int:
        return self.expected - self.received

    def observe_sequence(self, sequence: int) -> bool:
        """Account one packet; False if it is a duplicate (already received), which the caller drops."""
        delta = signed_delta(sequence, self.highest_sequence & 0xFFFF, 16)
        if abs(delta) > MAX_DROPOUT:
            # The sender restarted its sequence: keep the totals, start counting afresh.
            self.restarts += 1
            self.base_sequence = sequence - self.received - self.lost
            self.highest_sequence = sequence - 1
            self._seen.clear()
            delta = 1
        extended = self.highest_sequence + delta
        if extended in self._seen:
            self.duplicate += 1
            return False
        self._seen.add(extended)
        if len(self._seen) > 2 * _DUPLICATE_WINDOW:
            floor = self.highest_sequence - _DUPLICATE_WINDOW
            self._seen = {seen for seen in self._seen if seen >= floor}
        if delta > 0:
            self.highest_sequence = extended
        else:
            self.reordered += 1
            self.base_sequence = min(self.base_sequence, extended)
        self.received += 1
        return True

    def observe_transit(self, timestamp: int, arrival_units: float) -> None:
        """RFC 3550 A.8 jitter update; `arrival_units` is the arrival time in timestamp units.

        Transit times are compared modulo 2^32 so a timestamp wrap is not a 2^32 jump.
        """
        transit = arrival_units - timestamp
        if self._last_transit is not None:
            difference = abs(signed_delta(round(transit - self._last_transit), 0, 32))
            self.jitter += (difference - self.jitter) / 16
        self._last_transit = transit
