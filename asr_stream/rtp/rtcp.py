"""RTCP (RFC 3550 §6) on the odd port: validated and counted by packet type, nothing more.

Transcription needs nothing from RTCP (timing comes from RTP timestamps, the call's end from
SIP or the RTP inactivity timeout), but peers send it, so the port must be bound and its
traffic visible in the statistics.
"""

from __future__ import annotations

import struct

from asr_stream.rtp.packet import RTP_VERSION, MalformedPacket

_HEADER = struct.Struct("!BBH")
PACKET_TYPES = {200: "sr", 201: "rr", 202: "sdes", 203: "bye", 204: "app", 205: "rtpfb", 206: "psfb", 207: "xr"}


def rtcp_packet_types(data: bytes) -> list[str]:
    """Names of the packets in one compound RTCP datagram; raises `MalformedPacket`."""
    names = []
    offset = 0
    while offset < len(data):
        if offset + _HEADER.size > len(data):
            raise MalformedPacket("truncated_header")
        first, packet_type, words = _HEADER.unpack_from(data, offset)
        if first >> 6 != RTP_VERSION:
            raise MalformedPacket("bad_version")
        offset += 4 * (words + 1)
        if offset > len(data):
            raise MalformedPacket("length_overflow")
        names.append(PACKET_TYPES.get(packet_type, "other"))
    if not names:
        raise MalformedPacket("empty")
    return names
