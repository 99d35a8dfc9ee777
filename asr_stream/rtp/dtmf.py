"""RFC 4733 telephone-event (DTMF) payloads -> one event per key press.

A sender repeats an event's packets while the key is held (same RTP timestamp, growing
duration) and sends the final one, with the end bit, three times. We report each press once:
when its first end packet arrives, or, if all end packets were lost, when the next press
starts or the stream closes. Hand-written: the format is four octets, and aiortp's
DtmfReceiver reports events in its own clock, not on our channel timeline.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from asr_stream.rtp.packet import MalformedPacket

_EVENT = struct.Struct("!BBH")
_NAMES = "0123456789*#ABCD"
_FLASH = 16


@dataclass(frozen=True, slots=True)
class DtmfEvent:
    """A key press: `digit` is 0-9, *, #, A-D or "flash"; times are on the channel clock."""

    digit: str
    start_sample: int
    duration_samples: int
    rate: int

    @property
    def start_ms(self) -> float:
        return 1000.0 * self.start_sample / self.rate


class DtmfDetector:
    """Turns the telephone-event packets of one channel into `DtmfEvent`s."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.ignored_events = 0  # valid RFC 4733 events that are not keys (e.g. tones, line events)
        self._pending: tuple[int, int, int] | None = None  # (start, event code, duration) not yet ended
        self._last_reported: tuple[int, int] | None = None  # (start, event code): drops end-packet repeats

    def observe(self, payload: bytes, start_sample: int) -> list[DtmfEvent]:
        """Account one packet whose RTP timestamp maps to `start_sample`; returns presses now complete."""
        if len(payload) < _EVENT.size:
            raise MalformedPacket("bad_dtmf")
        code, flags, duration = _EVENT.unpack_from(payload)
        if code > _FLASH:
            self.ignored_events += 1
            return []
        key = (start_sample, code)
        if key == self._last_reported:
            return []
        done = []
        if self._pending is not None and self._pending[:2] != key:
            done.append(self._report(*self._pending))
        if flags & 0x80:
            self._pending = None
            done.append(self._report(start_sample, code, duration))
        else:
            self._pending = (start_sample, code, duration)
        return done

    def finish(self) -> list[DtmfEvent]:
        """Stream over: a press whose end packets never came is still reported."""
        pending, self._pending = self._pending, None
        return [self._report(*pending)] if pending else []

    def _report(self, start_sample: int, code: int, duration: int) -> DtmfEvent:
        self._last_reported = (start_sample, code)
        digit = "flash" if code == _FLASH else _NAMES[code]
        return DtmfEvent(digit, start_sample, duration, self.rate)
