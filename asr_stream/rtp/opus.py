"""Opus (RFC 6716, RTP payload RFC 7587) for SIP/RTP channels: libopus through PyAV.

Why PyAV's `CodecContext` and not aiortc's `OpusDecoder`: the latter is the same libopus
context wrapped for aiortc's own jitter buffer (it takes a `JitterFrame` and is fixed to
stereo output), while here our jitter buffer already orders packets and fills losses, so the
bare context is all that is needed, and asking libopus for one channel makes libopus itself
mix a stereo stream down (RFC 7587 always signals opus/48000/2; most senders send mono).

The RTP clock of Opus is always 48 kHz whatever the audio bandwidth, and a packet's duration
is in its TOC byte, so the timeline can place it before (and without) decoding.
"""

from __future__ import annotations

import av
import numpy as np

CLOCK_RATE = 48000
_MAX_PACKET_SAMPLES = 5760  # 120 ms, the longest packet RFC 6716 §3.2.5 allows
# Frame size in 48 kHz samples by TOC configuration (RFC 6716 §3.1, Table 2): SILK, hybrid, CELT.
_FRAME_SAMPLES = (480, 960, 1920, 2880) * 3 + (480, 960) * 2 + (120, 240, 480, 960) * 4


def packet_samples(payload: bytes) -> int:
    """Duration of an Opus packet in 48 kHz samples from its TOC byte; 0 if it is not a valid packet."""
    if not payload:
        return 0
    toc = payload[0]
    code = toc & 0x03
    if code == 0:
        frames = 1
    elif code in (1, 2):
        frames = 2
    elif len(payload) < 2:
        return 0
    else:
        frames = payload[1] & 0x3F
    samples = frames * _FRAME_SAMPLES[toc >> 3]
    return samples if samples <= _MAX_PACKET_SAMPLES else 0


class OpusDecoder:
    """One channel's libopus decoder; stateful, so `make_decoder` returns a new one per channel.

    A payload libopus rejects is counted in `corrupt` and decodes to nothing (the jitter buffer
    pads it to its timestamp duration with silence): `decode` runs in the receiver's datagram
    and timer callbacks, where an exception would cost more than the one packet.
    """

    clock_rate: int = CLOCK_RATE

    def __init__(self) -> None:
        self.corrupt = 0
        self._codec = av.CodecContext.create("libopus", "r")
        self._codec.sample_rate = CLOCK_RATE
        self._codec.layout = "mono"
        self._codec.format = "s16"

    def sample_count(self, payload: bytes) -> int:
        return packet_samples(payload)

    def decode(self, payload: bytes) -> np.ndarray:
        try:
            frames = self._codec.decode(av.Packet(payload))
        except av.error.FFmpegError:
            self.corrupt += 1
            return np.zeros(0, np.int16)
        if not frames:
            return np.zeros(0, np.int16)
        return np.concatenate([frame.to_ndarray().reshape(-1) for frame in frames]).astype(np.int16, copy=False)
