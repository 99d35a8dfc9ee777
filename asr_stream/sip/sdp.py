"""SDP offer/answer (RFC 3264) for a receive-only transcriber.

Parsing and serialisation are aiosipua's (`parse_sdp`, `serialize_sdp`, its dataclasses). Its
`negotiate_sdp` answers only the first audio m-line and mirrors the offer's direction, while we
must answer every m-line (SIPREC sends two audio streams), answer `recvonly` (we never send
media) and report per stream what the RTP receiver needs, so the negotiation itself is here.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from aiosipua import Codec as SdpCodec
from aiosipua import ConnectionData, MediaDescription, Origin, SdpMessage, parse_sdp, serialize_sdp

from asr_stream.sip.call import Codec, LocalMedia, MediaDirection

#: Clock rates a codec name is only valid with; anything else in an rtpmap is not that codec.
_CLOCK_RATES = {"PCMU": 8000, "PCMA": 8000, "OPUS": 48000}
_CANONICAL_NAMES = {"PCMU": "PCMU", "PCMA": "PCMA", "OPUS": "opus"}
# Offer direction -> ours (RFC 3264 §6.1): we only ever receive.
_ANSWER_DIRECTION: dict[str, MediaDirection] = {
    "sendrecv": "recvonly",
    "sendonly": "recvonly",
    "recvonly": "inactive",
    "inactive": "inactive",
}
_SUPPORTED_PROTOS = {"RTP/AVP", "RTP/AVPF"}


class InvalidSdp(ValueError):
    """The body is not a usable session description (answered 400)."""


class NotAcceptable(Exception):
    """No media stream of the offer can be received (answered 488)."""


@dataclass(frozen=True)
class NegotiatedMedia:
    """An accepted audio m-line of the offer."""

    index: int
    codec: Codec
    telephone_event_pt: int | None
    remote_address: str
    remote_port: int
    direction: MediaDirection
    stream_label: str | None


def parse_offer(body: str) -> SdpMessage:
    """Parse and sanity-check an offer; nonsense raises `InvalidSdp`."""
    try:
        offer = parse_sdp(body)
    except (ValueError, IndexError) as exc:
        raise InvalidSdp(f"unparseable SDP: {exc}") from exc
    if not body.lstrip().startswith("v=0") or not offer.media:
        raise InvalidSdp("SDP needs v=0 and at least one m= line")
    for media in offer.media:
        connection = media.connection or offer.connection
        if media.port and (connection is None or not _valid_connection(connection)):
            raise InvalidSdp(f"m-line {media.media} has no valid c= line")
    return offer


def _valid_connection(connection: ConnectionData) -> bool:
    expected_version = {"IP4": 4, "IP6": 6}.get(connection.addr_type)
    try:
        return ipaddress.ip_address(connection.address).version == expected_version
    except ValueError:
        return False  # a hostname in c= would need DNS on the media path; gateways send literals


def negotiate(offer: SdpMessage, accepted_codecs: Collection[str]) -> list[NegotiatedMedia]:
    """Every audio m-line we can receive, in offer order; raise `NotAcceptable` if there is none.

    The codec is the offerer's most preferred one among `accepted_codecs` (names, any case),
    as RFC 3264 §6.1 recommends.
    """
    wanted = {name.upper() for name in accepted_codecs}
    accepted = [
        negotiated for index, media in enumerate(offer.media) if (negotiated := _negotiate_media(index, media, offer, wanted)) is not None
    ]
    if not accepted:
        raise NotAcceptable("no audio stream with an acceptable codec")
    return accepted


def _negotiate_media(index: int, media: MediaDescription, offer: SdpMessage, wanted: set[str]) -> NegotiatedMedia | None:
    if media.media != "audio" or media.port == 0 or media.proto.upper() not in _SUPPORTED_PROTOS:
        return None
    codec = next((c for c in media.codecs if _is_wanted(c, wanted)), None)
    if codec is None:
        return None
    connection = media.connection or offer.connection
    assert connection is not None  # parse_offer guarantees it for m-lines with a port
    # RFC 2543 hold (c=0.0.0.0) still appears from old gateways: it means "not sending".
    on_hold = connection.address in ("0.0.0.0", "::")
    label = media.attributes.get("label")
    return NegotiatedMedia(
        index=index,
        codec=Codec(
            name=_CANONICAL_NAMES[codec.encoding_name.upper()],
            payload_type=codec.payload_type,
            clock_rate=codec.clock_rate,
            channels=codec.channels or 1,
            fmtp=codec.fmtp,
        ),
        telephone_event_pt=_telephone_event_pt(media, codec.clock_rate),
        remote_address=connection.address,
        remote_port=media.port,
        direction="inactive" if on_hold else _ANSWER_DIRECTION[media.direction],
        stream_label=label[0] if label else None,
    )


def _is_wanted(codec: SdpCodec, wanted: set[str]) -> bool:
    name = codec.encoding_name.upper()
    return name in wanted and _CLOCK_RATES.get(name) == codec.clock_rate


def _telephone_event_pt(media: MediaDescription, clock_rate: int) -> int | None:
    """RFC 4733 events at the audio codec's clock rate (they share its RTP timestamp clock)."""
    for codec in media.codecs:
        if codec.encoding_name.lower() == "telephone-event" and codec.clock_rate == clock_rate:
            return codec.payload_type
    return None


@dataclass(frozen=True)
class SdpOrigin:
    """Our o= line: the session id stays for the dialog, the version grows per answer (RFC 3264 §8)."""

    session_id: int
    version: int
    address: str


def build_answer(
    offer: SdpMessage,
    accepted: Mapping[int, tuple[NegotiatedMedia, LocalMedia]],
    origin: SdpOrigin,
) -> str:
    """The answer: one m-line per offered m-line, port 0 for those not in `accepted` (by index)."""
    answer = SdpMessage(
        origin=Origin(
            username="asr-stream",
            session_id=str(origin.session_id),
            session_version=str(origin.version),
            addr_type=_addr_type(origin.address),
            address=origin.address,
        ),
        session_name="asr-stream",
        # Session-level c= keeps rejected (port 0) m-lines valid without one of their own.
        connection=ConnectionData(addr_type=_addr_type(origin.address), address=origin.address),
    )
    for index, offered in enumerate(offer.media):
        if index in accepted:
            answer.media.append(_accepted_media(offered, *accepted[index]))
        else:
            # RFC 3264 §6: a rejected stream keeps its m-line, port 0, and at least one format.
            answer.media.append(MediaDescription(media=offered.media, port=0, proto=offered.proto, formats=offered.formats[:1] or ["0"]))
    return serialize_sdp(answer)


def _accepted_media(offered: MediaDescription, negotiated: NegotiatedMedia, local: LocalMedia) -> MediaDescription:
    codec = negotiated.codec
    encoding = f"{codec.name}/{codec.clock_rate}" + (f"/{codec.channels}" if codec.channels > 1 else "")
    attributes: dict[str, list[str]] = {"rtpmap": [f"{codec.payload_type} {encoding}"]}
    formats = [str(codec.payload_type)]
    if codec.fmtp:
        attributes["fmtp"] = [f"{codec.payload_type} {codec.fmtp}"]
    if negotiated.telephone_event_pt is not None:
        pt = negotiated.telephone_event_pt
        formats.append(str(pt))
        attributes["rtpmap"].append(f"{pt} telephone-event/{codec.clock_rate}")
        attributes.setdefault("fmtp", []).append(f"{pt} 0-16")
    if negotiated.stream_label is not None:
        attributes["label"] = [negotiated.stream_label]
    attributes[negotiated.direction] = []
    return MediaDescription(
        media="audio",
        port=local.port,
        proto=offered.proto,
        formats=formats,
        connection=ConnectionData(addr_type=_addr_type(local.address), address=local.address),
        attributes=attributes,
    )


def _addr_type(address: str) -> str:
    return "IP6" if ":" in address else "IP4"
