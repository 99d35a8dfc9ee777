"""RTP header parsing (RFC 3550 §5.1) and the malformed corpus, without sockets."""

from pathlib import Path

import pytest

from asr_stream.rtp.packet import MalformedPacket, RtpPacket, parse_rtp
from asr_stream.rtp.rtcp import rtcp_packet_types

CORPUS = sorted((Path(__file__).parent / "malformed" / "rtp").glob("*.bin"))


def test_round_trip_keeps_every_header_field():
    packet = RtpPacket(
        payload_type=8,
        sequence=65535,
        timestamp=0xFFFFFFF0,
        ssrc=0x01020304,
        payload=b"\x55" * 160,
        marker=True,
        csrcs=(1, 0xFFFFFFFF),
        extension=(0xBEDE, b"\x10\xaa\x00\x00"),
    )
    assert parse_rtp(packet.to_bytes(padding=7)) == packet


def test_padding_is_stripped_from_the_payload():
    data = RtpPacket(0, 1, 2, 3, b"abc").to_bytes(padding=5)
    assert len(data) == 12 + 3 + 5
    assert parse_rtp(data).payload == b"abc"


def test_a_header_only_packet_has_an_empty_payload():
    assert parse_rtp(RtpPacket(0, 1, 2, 3, b"").to_bytes()).payload == b""


@pytest.mark.parametrize("path", CORPUS, ids=[path.stem for path in CORPUS])
def test_malformed_corpus_is_rejected_with_its_reason(path):
    with pytest.raises(MalformedPacket) as rejected:
        parse_rtp(path.read_bytes())
    assert rejected.value.reason == path.stem.split("--")[0]


def test_corpus_covers_every_reason_the_brief_names():
    reasons = {path.stem.split("--")[0] for path in CORPUS}
    assert {"bad_version", "bad_padding", "truncated_header", "csrc_overflow", "extension_overflow"} <= reasons


def test_rtcp_compound_packet_is_split_by_type():
    receiver_report = bytes.fromhex("81c90007") + bytes(28)
    bye = bytes.fromhex("81cb0001") + bytes(4)
    assert rtcp_packet_types(receiver_report + bye) == ["rr", "bye"]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (bytes.fromhex("81c9"), "truncated_header"),
        (bytes.fromhex("81c90007"), "length_overflow"),
        (bytes.fromhex("41c90000"), "bad_version"),
    ],
)
def test_malformed_rtcp_is_rejected_with_its_reason(data, reason):
    with pytest.raises(MalformedPacket) as rejected:
        rtcp_packet_types(data)
    assert rejected.value.reason == reason
