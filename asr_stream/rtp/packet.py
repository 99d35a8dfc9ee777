"""RTP fixed header (RFC 3550 §5.1): parse with validation, build for senders.

Hand-written rather than taken from aiortp/aiortc: their parsers raise bare ValueErrors (or
silently accept bad padding), while the receiver must count every rejected datagram by a
stable reason without ever raising, and the hot path must stay a single `struct` call plus
a few integer checks (tens of thousands of packets per second per core).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

RTP_VERSION = 2
HEADER_SIZE = 12
_FIXED_HEADER = struct.Struct("!BBHII")
_EXTENSION_HEADER = struct.Struct("!HH")
# With rtcp-mux (RFC 5761) RTCP packet types 200..204 show up as marker=1, PT 72..76 here.
_RTCP_PAYLOAD_TYPES = range(72, 77)


class MalformedPacket(ValueError):
    """A datagram that is not a valid packet; `reason` is a short stable label used as a counter key."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(slots=True)
class RtpPacket:
    """One RTP packet; `payload` excludes the header, extension and padding."""

    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    payload: bytes
    marker: bool = False
    csrcs: tuple[int, ...] = ()
    # (profile-defined 16 bits, extension data) of the RFC 3550 §5.3.1 header extension.
    extension: tuple[int, bytes] | None = None

    def to_bytes(self, padding: int = 0) -> bytes:
        """Serialise; `padding` appends that many padding octets (the last one holds the count)."""
        if not 0 <= padding <= 255:
            raise ValueError(f"padding must be 0..255 octets, got {padding}")
        first = (RTP_VERSION << 6) | (0x20 if padding else 0) | (0x10 if self.extension else 0) | len(self.csrcs)
        second = (0x80 if self.marker else 0) | self.payload_type
        parts = [_FIXED_HEADER.pack(first, second, self.sequence & 0xFFFF, self.timestamp & 0xFFFFFFFF, self.ssrc)]
        parts.extend(struct.pack("!I", csrc) for csrc in self.csrcs)
        if self.extension:
            profile, data = self.extension
            if len(data) % 4:
                raise ValueError("header extension data must be a whole number of 32-bit words")
            parts.append(_EXTENSION_HEADER.pack(profile, len(data) // 4) + data)
        parts.append(self.payload)
        if padding:
            parts.append(bytes(padding - 1) + bytes([padding]))
        return b"".join(parts)


def parse_rtp(data: bytes) -> RtpPacket:
    """Parse and validate one RTP datagram; raises `MalformedPacket` with a counter reason."""
    size = len(data)
    if size < HEADER_SIZE:
        raise MalformedPacket("truncated_header")
    first, second, sequence, timestamp, ssrc = _FIXED_HEADER.unpack_from(data)
    if first >> 6 != RTP_VERSION:
        raise MalformedPacket("bad_version")
    payload_type = second & 0x7F
    if payload_type in _RTCP_PAYLOAD_TYPES and second & 0x80:
        raise MalformedPacket("rtcp_on_rtp_port")
    offset = HEADER_SIZE + 4 * (first & 0x0F)
    if offset > size:
        raise MalformedPacket("csrc_overflow")
    csrcs = struct.unpack_from(f"!{first & 0x0F}I", data, HEADER_SIZE) if first & 0x0F else ()
    extension = None
    if first & 0x10:
        if offset + 4 > size:
            raise MalformedPacket("extension_overflow")
        profile, words = _EXTENSION_HEADER.unpack_from(data, offset)
        start = offset + 4
        offset = start + 4 * words
        if offset > size:
            raise MalformedPacket("extension_overflow")
        extension = (profile, bytes(data[start:offset]))
    end = size
    if first & 0x20:
        padding = data[-1]
        if padding == 0 or offset + padding > size:
            raise MalformedPacket("bad_padding")
        end -= padding
    return RtpPacket(
        payload_type=payload_type,
        sequence=sequence,
        timestamp=timestamp,
        ssrc=ssrc,
        payload=bytes(data[offset:end]),
        marker=bool(second & 0x80),
        csrcs=csrcs,
        extension=extension,
    )
