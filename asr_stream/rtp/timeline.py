"""Map each packet's (SSRC, 32-bit RTP timestamp) onto one continuous per-channel sample clock.

The channel clock is the sender's: positions advance by timestamp, not by arrival, so a lost
packet or a silence-suppressed pause leaves a hole of exactly its length. Two things break a
plain timestamp difference and are handled here:

- 32-bit wrap: timestamps are extended by the shortest signed distance to the highest seen.
- A new SSRC (transfer, re-INVITE, gateway failover) or a timestamp jump that wall time cannot
  explain (a sender that reset its clock): the new stream is re-based to continue where the
  previous media ended, plus the wall-clock silence between them when that is long enough to
  be real rather than network jitter.

Which SSRC is current is decided before a packet gets here (`ssrc.SsrcArbiter`: stray packets of
another SSRC never reach the timeline), so every SSRC change seen here is a real switch, and an
SSRC that comes back later is simply re-based again.
"""

from __future__ import annotations

from asr_stream.rtp.stats import signed_delta

# Between two streams (or across a clock reset) a wall-clock pause shorter than this is jitter
# and the new media continues back to back; a longer one is kept as silence on the timeline.
REBASE_SILENCE_MIN_S = 1.0


class Timeline:
    """Assigns every packet of the channel's current stream a sample position."""

    def __init__(self, rate: int, jump_tolerance_s: float = 2.0) -> None:
        self.rate = rate
        self.ssrc_changes = 0
        self.timestamp_jumps = 0
        self._jump_tolerance = jump_tolerance_s * rate
        self._ssrc: int | None = None
        self._reference_timestamp = 0  # raw timestamp of the highest extended timestamp seen
        self._reference_position = 0  # its position on the channel clock
        self._reference_arrival = 0.0
        self._media_end = 0  # end of the furthest media located so far

    def locate(self, ssrc: int, timestamp: int, samples: int, arrival: float) -> int:
        """Position of the packet's first sample; `samples` is its duration (0 for events)."""
        if ssrc != self._ssrc:
            if self._ssrc is not None:
                self.ssrc_changes += 1
            self._rebase(ssrc, timestamp, arrival)
        delta = signed_delta(timestamp, self._reference_timestamp, 32)
        # Events (samples == 0) are exempt: a DTMF press keeps its start timestamp for as long as
        # the key is held, so it may trail the audio by seconds without any clock reset.
        if samples and self._is_jump(delta, arrival - self._reference_arrival):
            self.timestamp_jumps += 1
            self._rebase(ssrc, timestamp, arrival)
            delta = 0
        position = self._reference_position + delta
        if delta > 0:
            self._reference_timestamp = timestamp
            self._reference_position = position
            self._reference_arrival = arrival
        self._media_end = max(self._media_end, position + samples)
        return position

    def _is_jump(self, delta: int, elapsed: float) -> bool:
        return delta > self._jump_tolerance + elapsed * self.rate or delta < -self._jump_tolerance

    def _rebase(self, ssrc: int, timestamp: int, arrival: float) -> None:
        pause = arrival - self._reference_arrival if self._ssrc is not None else 0.0
        silence = round(pause * self.rate) if pause >= REBASE_SILENCE_MIN_S else 0
        self._ssrc = ssrc
        self._reference_timestamp = timestamp
        self._reference_position = self._media_end + silence
        self._reference_arrival = arrival
