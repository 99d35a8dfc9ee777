"""SDP offer/answer: what we accept, and that the answer is a valid RFC 3264 answer."""

from __future__ import annotations

import pytest
from aiosipua import parse_sdp

from asr_stream.rtp.codecs import supported_encodings
from asr_stream.sip.call import LocalMedia
from asr_stream.sip.sdp import InvalidSdp, NotAcceptable, SdpOrigin, build_answer, negotiate, parse_offer

G711 = ("PCMU", "PCMA")


def offer(*media: str, connection: str = "c=IN IP4 192.0.2.10") -> str:
    return "\r\n".join(["v=0", "o=- 7 7 IN IP4 192.0.2.10", "s=-", connection, "t=0 0", *media]) + "\r\n"


def test_offerers_preference_among_accepted_codecs_wins() -> None:
    sdp = parse_offer(offer("m=audio 4000 RTP/AVP 18 8 0", "a=rtpmap:18 G729/8000"))
    (media,) = negotiate(sdp, G711)
    assert (media.codec.name, media.codec.payload_type, media.codec.clock_rate) == ("PCMA", 8, 8000)
    assert (media.remote_address, media.remote_port, media.direction) == ("192.0.2.10", 4000, "recvonly")


def test_opus_only_when_the_handler_can_decode_it() -> None:
    sdp = parse_offer(offer("m=audio 4000 RTP/AVP 111 0", "a=rtpmap:111 opus/48000/2", "a=fmtp:111 useinbandfec=1"))
    assert negotiate(sdp, G711)[0].codec.name == "PCMU"
    opus = negotiate(sdp, (*G711, "opus"))[0].codec
    assert (opus.name, opus.payload_type, opus.clock_rate, opus.channels, opus.fmtp) == ("opus", 111, 48000, 2, "useinbandfec=1")


def test_a_gateway_offering_opus_first_is_answered_with_opus_by_the_daemons_codec_list() -> None:
    sdp = parse_offer(offer("m=audio 4000 RTP/AVP 111 0 101", "a=rtpmap:111 opus/48000/2", "a=rtpmap:101 telephone-event/48000"))
    (media,) = negotiate(sdp, tuple(supported_encodings()))  # what daemon._ingest_config accepts
    answer = parse_sdp(build_answer(sdp, {0: (media, LocalMedia("198.51.100.1", 30000))}, SdpOrigin(5, 1, "198.51.100.1")))
    assert answer.media[0].formats == ["111", "101"]
    assert answer.media[0].attributes["rtpmap"] == ["111 opus/48000/2", "101 telephone-event/48000"]


def test_telephone_event_at_the_codec_clock_rate_is_accepted() -> None:
    sdp = parse_offer(offer("m=audio 4000 RTP/AVP 0 96 101", "a=rtpmap:96 telephone-event/48000", "a=rtpmap:101 telephone-event/8000"))
    assert negotiate(sdp, G711)[0].telephone_event_pt == 101


def test_nothing_acceptable_raises_not_acceptable() -> None:
    with pytest.raises(NotAcceptable):
        negotiate(parse_offer(offer("m=audio 4000 RTP/AVP 18", "a=rtpmap:18 G729/8000")), G711)
    with pytest.raises(NotAcceptable):  # the name alone is not enough: PCMU at 16 kHz is not G.711
        negotiate(parse_offer(offer("m=audio 4000 RTP/AVP 97", "a=rtpmap:97 PCMU/16000")), G711)
    with pytest.raises(NotAcceptable):  # encrypted media we cannot key
        negotiate(parse_offer(offer("m=audio 4000 RTP/SAVP 0")), G711)


@pytest.mark.parametrize(
    ("attribute", "expected"),
    [("a=sendrecv", "recvonly"), ("a=sendonly", "recvonly"), ("a=recvonly", "inactive"), ("a=inactive", "inactive")],
)
def test_we_only_ever_receive(attribute: str, expected: str) -> None:
    assert negotiate(parse_offer(offer("m=audio 4000 RTP/AVP 0", attribute)), G711)[0].direction == expected


def test_rfc2543_hold_address_means_inactive() -> None:
    sdp = parse_offer(offer("m=audio 4000 RTP/AVP 0", connection="c=IN IP4 0.0.0.0"))
    assert negotiate(sdp, G711)[0].direction == "inactive"


def test_ipv6_connection() -> None:
    sdp = parse_offer(offer("m=audio 4000 RTP/AVP 0", connection="c=IN IP6 2001:db8::7"))
    (media,) = negotiate(sdp, G711)
    answer = parse_sdp(build_answer(sdp, {0: (media, LocalMedia("2001:db8::1", 30000))}, SdpOrigin(5, 1, "2001:db8::1")))
    assert media.remote_address == "2001:db8::7"
    assert answer.media[0].connection is not None
    assert (answer.media[0].connection.addr_type, answer.media[0].connection.address) == ("IP6", "2001:db8::1")


@pytest.mark.parametrize("connection", ["c=IN IP4 not-an-address", "c=IN IP6 192.0.2.1", ""])
def test_unusable_connection_is_invalid(connection: str) -> None:
    with pytest.raises(InvalidSdp):
        parse_offer(offer("m=audio 4000 RTP/AVP 0", connection=connection))


def test_answer_keeps_every_m_line_and_rejects_with_port_zero() -> None:
    sdp = parse_offer(
        offer(
            "m=audio 0 RTP/AVP 0",
            "m=video 5000 RTP/AVP 96",
            "a=rtpmap:96 H264/90000",
            "m=audio 4000 RTP/AVP 8 101",
            "a=rtpmap:101 telephone-event/8000",
            "a=label:main",
            "m=audio 4002 RTP/AVP 0",
        )
    )
    accepted = negotiate(sdp, G711)
    assert [m.index for m in accepted] == [2, 3]
    answer = parse_sdp(build_answer(sdp, {2: (accepted[0], LocalMedia("198.51.100.1", 30000))}, SdpOrigin(5, 3, "198.51.100.1")))
    assert [(m.media, m.port) for m in answer.media] == [("audio", 0), ("video", 0), ("audio", 30000), ("audio", 0)]
    main = answer.media[2]
    assert main.formats == ["8", "101"] and main.direction == "recvonly" and main.attributes["label"] == ["main"]
    assert main.attributes["rtpmap"] == ["8 PCMA/8000", "101 telephone-event/8000"]
    assert (answer.origin.session_id, answer.origin.session_version) == ("5", "3")


@pytest.mark.parametrize("body", ["", "hello", "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nt=0 0\r\n", "v=0\r\nm=audio seven RTP/AVP 0\r\n"])
def test_nonsense_is_invalid(body: str) -> None:
    with pytest.raises(InvalidSdp):
        parse_offer(body)
