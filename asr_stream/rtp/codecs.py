"""Audio decoders by SDP encoding name, and what this build can receive.

The SIP layer answers only with encodings listed by `supported_encodings()`; the receiver
asks `make_decoder` for one decoder per channel (Opus keeps state between packets).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from asr_stream.rtp.g711 import alaw_decode, ulaw_decode
from asr_stream.rtp.opus import CLOCK_RATE as OPUS_CLOCK_RATE
from asr_stream.rtp.opus import OpusDecoder

TELEPHONE_EVENT = "telephone-event"  # RFC 4733 DTMF, same clock as the audio codec


class AudioDecoder(Protocol):
    """RTP payload -> int16 mono PCM at `clock_rate` (the RTP timestamp rate)."""

    @property
    def clock_rate(self) -> int: ...

    def sample_count(self, payload: bytes) -> int:
        """Duration of the payload in samples, known before decoding (to place it on the timeline)."""
        ...

    def decode(self, payload: bytes) -> np.ndarray: ...


@dataclass(frozen=True, slots=True)
class G711Decoder:
    """Stateless: one octet per sample at 8 kHz."""

    decode: Callable[[bytes], np.ndarray]
    clock_rate: int = 8000

    def sample_count(self, payload: bytes) -> int:
        return len(payload)


_G711 = {"PCMU": G711Decoder(ulaw_decode), "PCMA": G711Decoder(alaw_decode)}


class UnsupportedEncoding(ValueError):
    """An SDP encoding this build cannot decode."""


def supported_encodings() -> dict[str, int]:
    """Encoding name -> RTP clock rate, in order of preference: wideband Opus first (better for ASR)."""
    return {"opus": OPUS_CLOCK_RATE} | {name: decoder.clock_rate for name, decoder in _G711.items()}


def make_decoder(encoding: str) -> AudioDecoder:
    """A decoder for one channel; `encoding` is the SDP rtpmap name (case-insensitive).

    G.711 is stateless and shared; Opus gets a new decoder per call, i.e. per channel.
    """
    if encoding.upper() == "OPUS":
        return OpusDecoder()
    decoder = _G711.get(encoding.upper())
    if decoder is None:
        raise UnsupportedEncoding(encoding)
    return decoder
