"""Cut encoded G.711 audio into RTP packets: for test senders, the ingest benchmark and loopback checks."""

from __future__ import annotations

from asr_stream.rtp.packet import RtpPacket

PACKET_SAMPLES = 160  # 20 ms at 8 kHz, the usual telephony ptime


def g711_packets(
    encoded: bytes,
    payload_type: int,
    ssrc: int,
    first_sequence: int = 0,
    first_timestamp: int = 0,
    packet_samples: int = PACKET_SAMPLES,
) -> list[RtpPacket]:
    """One packet per `packet_samples` octets (G.711: one octet per sample); counters wrap as on the wire."""
    return [
        RtpPacket(
            payload_type=payload_type,
            sequence=(first_sequence + index) & 0xFFFF,
            timestamp=(first_timestamp + offset) & 0xFFFFFFFF,
            ssrc=ssrc,
            payload=encoded[offset : offset + packet_samples],
            marker=index == 0,
        )
        for index, offset in enumerate(range(0, len(encoded), packet_samples))
    ]
