"""Jitter buffer: packets placed by media position in, gap-free PCM frames on the sender's clock out.

Why not aiortp's/aiortc's JitterBuffer: they order by sequence number and skip gaps, so a
lost packet or a silence-suppressed pause shortens the output and every later transcript
timestamp drifts. Here every hole is filled with silence of exactly its length (marked
`filled`), so sample `n` of the output is always sample `n` of what the sender meant.

Latency policy: in-order audio leaves at once. A packet behind a hole waits for the hole to
fill until either it has waited `playout_delay_s` of wall time, or the audio held behind the
hole spans `playout_delay_s` (the same test on the sender's clock, which also works for
senders faster than real time); then the hole is declared lost and anything for it later is
late. The very first output waits the same way, so a reordered first packet is not lost.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from asr_stream.rtp.codecs import AudioDecoder


@dataclass(frozen=True, slots=True)
class PcmFrame:
    """Mono int16 samples starting at `start_sample` on the channel clock (codec rate, 0 = channel start)."""

    start_sample: int
    samples: np.ndarray
    rate: int
    filled: bool = False  # silence inserted for media that never arrived (loss, pause, late)

    @property
    def end_sample(self) -> int:
        return self.start_sample + self.samples.shape[0]


@dataclass(slots=True)
class _Held:
    payload: bytes
    samples: int
    decoder: AudioDecoder
    arrival: float


class JitterBuffer:
    """Reorders packets by position and emits `PcmFrame`s through `emit` in timeline order."""

    def __init__(self, rate: int, emit: Callable[[PcmFrame], None], playout_delay_s: float = 0.06) -> None:
        self.rate = rate
        self.playout_delay_s = playout_delay_s
        self.late = 0
        self.duplicate = 0
        self.filled_samples = 0
        self._emit = emit
        self._delay_samples = round(playout_delay_s * rate)
        self._held: dict[int, _Held] = {}
        self._order: list[int] = []  # heap of held positions
        self._started = False  # the first frame is out, so `_origin` is final
        self._origin = 0  # timeline position of channel sample 0
        self._next = 0  # next timeline position to emit

    def channel_sample(self, position: int) -> int:
        """Timeline position -> channel sample index (what frames and events report).

        Before the first frame is out the origin is provisional (the first packet's position).
        """
        return position - self._origin

    def push(self, position: int, samples: int, payload: bytes, decoder: AudioDecoder, arrival: float) -> None:
        """Accept one packet of `samples` samples whose first sample sits at timeline `position`."""
        if self._started and position < self._next:
            self.late += 1
        elif position in self._held:
            self.duplicate += 1
        elif position == self._next and self._started and not self._held:
            self._emit_packet(position, samples, payload, decoder)  # the common in-order case
        else:
            self._held[position] = _Held(payload, samples, decoder, arrival)
            heapq.heappush(self._order, position)
            self.poll(arrival)

    def deadline(self) -> float | None:
        """Wall time at which `poll` may release held audio; None when nothing waits."""
        if not self._held:
            return None
        return min(held.arrival for held in self._held.values()) + self.playout_delay_s

    def poll(self, now: float) -> None:
        """Release what is in order, and cross holes whose wait is over."""
        while self._order:
            position = self._order[0]
            if not self._started:
                if not self._hole_expired(now):
                    return
                self._started = True
                self._origin = self._next = position
            if position < self._next:  # overlaps audio already out (packet size changed): too late
                self._discard_first()
                self.late += 1
                continue
            if position > self._next:
                if not self._hole_expired(now):
                    return
                self._emit_silence(position - self._next)
            held = self._discard_first()
            self._emit_packet(position, held.samples, held.payload, held.decoder)

    def flush(self) -> None:
        """End of stream: everything held goes out now, holes between packets filled."""
        self.poll(float("inf"))

    def _hole_expired(self, now: float) -> bool:
        newest_end = max(position + held.samples for position, held in self._held.items())
        oldest_arrival = min(held.arrival for held in self._held.values())
        return newest_end - self._order[0] >= self._delay_samples or now >= oldest_arrival + self.playout_delay_s

    def _discard_first(self) -> _Held:
        return self._held.pop(heapq.heappop(self._order))

    def _emit_packet(self, position: int, samples: int, payload: bytes, decoder: AudioDecoder) -> None:
        # Decoding in output order, not arrival order: stateful codecs (Opus) need it.
        pcm = decoder.decode(payload)
        if pcm.shape[0] != samples:  # a decoder that disagrees with the timestamps: the clock wins
            pcm = np.pad(pcm[:samples], (0, max(0, samples - pcm.shape[0])))
        self._emit(PcmFrame(position - self._origin, pcm, self.rate))
        self._next = position + samples

    def _emit_silence(self, samples: int) -> None:
        self.filled_samples += samples
        self._emit(PcmFrame(self._next - self._origin, np.zeros(samples, np.int16), self.rate, filled=True))
        self._next += samples
