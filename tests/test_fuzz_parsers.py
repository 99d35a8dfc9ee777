"""Property-based fuzzing (Hypothesis) of everything that parses bytes from the network.

For each parser: arbitrary input and mutations of valid input raise nothing but the parser's
documented error, and where there is a serialiser, what it writes parses back to the same thing.
The example count is small for `make test` (about 150 per property, a few seconds in all);
`bench/fuzz.py` runs the same properties with many more examples (ASR_FUZZ_EXAMPLES).
"""

from __future__ import annotations

import contextlib
import os

from aiosipua import SipRequest, SipResponse, parse_sdp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asr_stream.rtp.dtmf import DtmfDetector
from asr_stream.rtp.packet import MalformedPacket, RtpPacket, parse_rtp
from asr_stream.rtp.rtcp import rtcp_packet_types
from asr_stream.rtp.ssrc import PROBATION_PACKETS, SsrcArbiter
from asr_stream.sip.call import LocalMedia
from asr_stream.sip.message import MalformedMessage, build_response, parse
from asr_stream.sip.offer import UnsupportedBody, describe_call, read_offer
from asr_stream.sip.sdp import InvalidSdp, NotAcceptable, SdpOrigin, build_answer, negotiate, parse_offer
from asr_stream.sip.siprec import InvalidMultipart, parse_metadata, split_multipart
from asr_stream.sip.transport import Peer

FUZZ = settings(
    max_examples=int(os.environ.get("ASR_FUZZ_EXAMPLES", "150")),
    deadline=None,  # a shared 2-core machine: timing is not what these test
    database=None,  # no .hypothesis/ directory in the work tree; failures print their reproducer
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

# -- building blocks ---------------------------------------------------------------------------

TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~", min_size=1, max_size=40)
HOST = st.sampled_from(["127.0.0.1", "192.0.2.10", "sbc.example.org", "[2001:db8::1]"])
CODECS = st.sampled_from([(0, "PCMU/8000"), (8, "PCMA/8000"), (18, "G729/8000"), (111, "opus/48000/2"), (9, "G722/8000")])


@st.composite
def sdp_offers(draw: st.DrawFn) -> str:
    media = []
    for _ in range(draw(st.integers(1, 3))):
        codecs = draw(st.lists(CODECS, min_size=1, max_size=4, unique_by=lambda c: c[0]))
        kind = draw(st.sampled_from(["audio", "audio", "video"]))
        port = draw(st.sampled_from([0, 4000, 49170, 65534]))
        lines = [f"m={kind} {port} RTP/AVP {' '.join(str(pt) for pt, _ in codecs)}"]
        lines += [f"a=rtpmap:{pt} {name}" for pt, name in codecs]
        if draw(st.booleans()):
            lines += ["a=rtpmap:101 telephone-event/8000", "a=fmtp:101 0-16"]
        lines.append("a=" + draw(st.sampled_from(["sendrecv", "sendonly", "recvonly", "inactive"])))
        media += lines
    connection = draw(st.sampled_from(["c=IN IP4 192.0.2.10", "c=IN IP6 2001:db8::1", "c=IN IP4 0.0.0.0"]))
    return "\r\n".join(["v=0", "o=- 7 7 IN IP4 192.0.2.10", "s=-", connection, "t=0 0", *media]) + "\r\n"


@st.composite
def sip_requests(draw: st.DrawFn) -> bytes:
    method = draw(st.sampled_from(["INVITE", "OPTIONS", "BYE", "CANCEL", "ACK"]))
    body = draw(sdp_offers()).encode() if method == "INVITE" and draw(st.booleans()) else b""
    host = draw(HOST)
    headers = [
        f"Via: SIP/2.0/{draw(st.sampled_from(['UDP', 'TCP']))} {host}:5060;branch=z9hG4bK{draw(TOKEN)}",
        f'From: "{draw(TOKEN)}" <sip:{draw(TOKEN)}@{host}>;tag={draw(TOKEN)}',
        f"To: <sip:{draw(TOKEN)}@{host}>",
        f"Call-ID: {draw(TOKEN)}@{host}",
        f"CSeq: {draw(st.integers(0, 2**31 - 1))} {method}",
        f"Max-Forwards: {draw(st.integers(0, 70))}",
    ]
    headers += [f"X-{draw(TOKEN)}: {draw(TOKEN)}" for _ in range(draw(st.integers(0, 3)))]
    if body:
        headers.append("Content-Type: application/sdp")
    headers.append(f"Content-Length: {len(body)}")
    head = f"{method} sip:{draw(TOKEN)}@{host} SIP/2.0\r\n" + "\r\n".join(headers) + "\r\n\r\n"
    return head.encode() + body


@st.composite
def mutated(draw: st.DrawFn, valid: st.SearchStrategy[bytes]) -> bytes:
    """A valid message after a few byte-level mutations: what a fuzzer (or a bad network) sends."""
    data = bytearray(draw(valid))
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        operation = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "duplicate"]))
        if operation == "flip":
            data[at] ^= draw(st.integers(1, 255))
        elif operation == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif operation == "delete":
            del data[at : at + draw(st.integers(1, 16))]
        elif operation == "truncate":
            del data[at:]
        else:
            data[at:at] = data[at : at + draw(st.integers(1, 64))]
    return bytes(data)


SIP_SYNTAX = st.text(alphabet=' \t<>;:=@"[]?&%,./+-_*0123456789abcxyzSIPsip\\\x00é工', max_size=80)


@st.composite
def rewritten_headers(draw: st.DrawFn, valid: st.SearchStrategy[bytes]) -> bytes:
    """A valid message with some lines' values (or the request line) replaced by SIP-ish junk:
    reaches the field parsers (addresses, CSeq, Via, Content-Length) that byte flips rarely do."""
    head, separator, body = draw(valid).partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(lines) - 1))
        name = lines[at].split(":", 1)[0] if at else lines[at].split(" ", 1)[0]
        lines[at] = f"{name}{':' if at else ' '}{draw(SIP_SYNTAX)}"
    return "\r\n".join(lines).encode() + separator + body


# -- SIP messages ------------------------------------------------------------------------------

PEER = Peer("udp", ("192.0.2.1", 5060))
OFFER_ERRORS = (UnsupportedBody, InvalidSdp, InvalidMultipart, NotAcceptable)


def serve_like_the_server(data: bytes) -> None:
    """What `SipServer` does with a datagram before the handler: parse, answer, read the offer."""
    try:
        message = parse(data)
    except MalformedMessage as refused:
        if refused.request is not None:
            bytes(build_response(refused.request, 400, f"Bad Request ({refused.reason})"))
        return
    if isinstance(message, SipRequest):
        bytes(build_response(message, 200, to_tag="t"))
        if message.method == "INVITE":
            with contextlib.suppress(OFFER_ERRORS):
                describe_call(message, PEER, read_offer(message, ("PCMU", "PCMA", "opus")))


@FUZZ
@given(st.binary(max_size=2048))
def test_sip_parser_survives_arbitrary_bytes(data: bytes) -> None:
    serve_like_the_server(data)


@FUZZ
@given(mutated(sip_requests()) | rewritten_headers(sip_requests()))
def test_sip_parser_survives_mutated_requests(data: bytes) -> None:
    serve_like_the_server(data)


@FUZZ
@given(sip_requests())
def test_valid_sip_requests_parse_and_round_trip(data: bytes) -> None:
    request = parse(data)
    assert isinstance(request, SipRequest)
    again = parse(bytes(request))
    assert isinstance(again, SipRequest)
    fields = ("via", "from", "to", "call-id", "cseq")
    assert [again.headers.get(name) for name in fields] == [request.headers.get(name) for name in fields]
    assert (again.method, again.uri, again.body) == (request.method, request.uri, request.body)
    response = parse(bytes(build_response(request, 486, to_tag="x")))
    assert isinstance(response, SipResponse) and response.status_code == 486
    assert response.headers.get("via") == request.headers.get("via") and response.call_id == request.call_id


METADATA = (
    b'<?xml version="1.0"?><recording xmlns="urn:ietf:params:xml:ns:recording:1">'
    b'<participant participant_id="p1"><nameID aor="sip:alice@example.com"><name>caller</name></nameID></participant>'
    b'<stream stream_id="s1"><label>1</label></stream>'
    b'<participantstreamassoc participant_id="p1"><send>s1</send></participantstreamassoc></recording>'
)
MULTIPART = (
    b"--b\r\nContent-Type: application/sdp\r\n\r\nv=0\r\nm=audio 4000 RTP/AVP 0\r\n"
    b"--b\r\nContent-Type: application/rs-metadata+xml\r\n\r\n" + METADATA + b"\r\n--b--\r\n"
)


@FUZZ
@given(mutated(st.just(MULTIPART)), st.sampled_from(["multipart/mixed;boundary=b", "multipart/mixed", 'multipart/mixed;boundary="b"']))
def test_siprec_bodies_raise_only_invalid_multipart(body: bytes, content_type: str) -> None:
    try:
        parts = split_multipart(content_type, body)
    except InvalidMultipart:
        return
    assert isinstance(parts.sdp, str)
    if parts.metadata is not None:
        assert isinstance(parse_metadata(parts.metadata), tuple)  # unusable XML is logged and ignored


@FUZZ
@given(mutated(st.just(METADATA)))
def test_siprec_metadata_never_raises(xml: bytes) -> None:
    assert isinstance(parse_metadata(xml), tuple)


# -- SDP ---------------------------------------------------------------------------------------


def negotiate_like_the_server(text: str) -> None:
    with contextlib.suppress(InvalidSdp, NotAcceptable):
        negotiate(parse_offer(text), ("PCMU", "PCMA", "opus"))


@FUZZ
@given(st.text(max_size=1024))
def test_sdp_parser_survives_arbitrary_text(text: str) -> None:
    negotiate_like_the_server(text)


@FUZZ
@given(mutated(sdp_offers().map(str.encode)))
def test_sdp_parser_survives_mutated_offers(data: bytes) -> None:
    negotiate_like_the_server(data.decode("utf-8", errors="replace"))


@FUZZ
@given(sdp_offers(), st.integers(1024, 65534).map(lambda port: port - port % 2))
def test_answers_parse_back_to_what_was_negotiated(text: str, port: int) -> None:
    offer = parse_offer(text)
    try:
        accepted = negotiate(offer, ("PCMU", "PCMA", "opus"))
    except NotAcceptable:
        return
    local = LocalMedia("198.51.100.1", port)
    answer = parse_sdp(build_answer(offer, {m.index: (m, local) for m in accepted}, SdpOrigin(1, 2, "198.51.100.1")))
    assert len(answer.media) == len(offer.media)
    for index, media in enumerate(answer.media):
        chosen = next((m for m in accepted if m.index == index), None)
        assert media.port == (port if chosen else 0)
        if chosen:
            assert media.formats[0] == str(chosen.codec.payload_type)
            assert chosen.direction in media.attributes


# -- RTP, RTCP, RFC 4733 -----------------------------------------------------------------------

RTP_PACKETS = st.builds(
    RtpPacket,
    payload_type=st.integers(0, 127).filter(lambda pt: pt not in range(72, 77)),
    sequence=st.integers(0, 0xFFFF),
    timestamp=st.integers(0, 0xFFFFFFFF),
    ssrc=st.integers(0, 0xFFFFFFFF),
    payload=st.binary(max_size=200),
    marker=st.booleans(),
    csrcs=st.lists(st.integers(0, 0xFFFFFFFF), max_size=15).map(tuple),
    extension=st.none() | st.tuples(st.integers(0, 0xFFFF), st.binary(max_size=32).map(lambda b: b[: len(b) // 4 * 4])),
)


@FUZZ
@given(RTP_PACKETS, st.integers(0, 255))
def test_rtp_packets_round_trip(packet: RtpPacket, padding: int) -> None:
    if packet.extension == (0, b""):  # an empty extension is written as "no extension"
        packet.extension = None
    assert parse_rtp(packet.to_bytes(padding)) == packet


@FUZZ
@given(st.binary(max_size=600) | mutated(RTP_PACKETS.map(RtpPacket.to_bytes)))
def test_rtp_rtcp_and_dtmf_parsers_raise_only_malformed_packet(data: bytes) -> None:
    for parser in (parse_rtp, rtcp_packet_types, lambda d: DtmfDetector(8000).observe(d, 0)):
        try:
            parser(data)
        except MalformedPacket as error:
            assert error.reason


@FUZZ
@given(st.lists(st.integers(1, 4), min_size=1, max_size=20), st.integers(0, 0xFFFF), st.integers(0, 0xFFFF))
def test_stray_bursts_shorter_than_the_probation_never_take_over(bursts: list[int], first: int, stray_first: int) -> None:
    """A main stream with stray bursts (< probation) between its packets: exactly the main packets pass, in order."""
    arbiter = SsrcArbiter()
    passed: list[int] = []
    sequence = first
    stray = stray_first
    for burst in bursts:
        for _ in range(2):  # the main stream goes on between bursts
            packet = RtpPacket(0, sequence & 0xFFFF, 0, ssrc=1, payload=b"")
            passed += [p.sequence for p, _ in arbiter.offer(packet, 0.0, is_audio=True)]
            sequence += 1
        for _ in range(min(burst, PROBATION_PACKETS - 1)):
            offered = arbiter.offer(RtpPacket(0, stray & 0xFFFF, 0, ssrc=2, payload=b""), 0.0, is_audio=True)
            assert offered == []
            stray += 1
    assert passed == [(first + n) & 0xFFFF for n in range(2 * len(bursts))]
    assert arbiter.takeovers == 0
