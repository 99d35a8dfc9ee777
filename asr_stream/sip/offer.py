"""From an INVITE to a `Call`: read its body (SDP or SIPREC multipart), negotiate, label channels."""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from aiosipua import SdpMessage, SipRequest, parse_address, stringify_uri

from asr_stream.sip.call import Call, Channel, Participant, Party
from asr_stream.sip.sdp import NegotiatedMedia, negotiate, parse_offer
from asr_stream.sip.siprec import channel_labels, parse_metadata, split_multipart
from asr_stream.sip.transport import Peer

PLAIN_CALL_LABEL = "caller"
#: Chooses a named hotword list for the call (docs/mandarin.md). Only a short token is taken from
#: it, never free text: the daemon then uses it only if its config names a list so (docs/security.md).
HOTWORD_LIST_HEADER = "X-ASR-Hotwords"
_LIST_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


class UnsupportedBody(ValueError):
    """An INVITE body that is neither SDP nor SIPREC multipart (answered 415), or none (late offer)."""


@dataclass(frozen=True)
class Offer:
    """A negotiated offer: the parsed SDP, the streams we accept (by m-line index) and their labels."""

    sdp: SdpMessage
    media: tuple[NegotiatedMedia, ...]
    labels: tuple[str, ...]  # one per `media`
    participants: tuple[Participant, ...]
    is_siprec: bool


def read_offer(request: SipRequest, accepted_codecs: Collection[str]) -> Offer:
    """Negotiate the INVITE's offer.

    A plain call is transcribed as one channel, so only its first acceptable audio stream is
    accepted; a SIPREC call keeps every acceptable stream, one per recorded participant.
    Raises `UnsupportedBody`, `InvalidSdp`/`InvalidMultipart` (both `ValueError`) or `NotAcceptable`.
    """
    content_type = (request.content_type or "").strip()
    media_type = content_type.split(";", 1)[0].strip().lower()
    if not request.body:
        raise UnsupportedBody("INVITE without an SDP offer (late offer) is not supported")
    if media_type == "application/sdp":
        sdp = parse_offer(request.text)
        accepted = negotiate(sdp, accepted_codecs)[:1]
        return Offer(sdp, tuple(accepted), (PLAIN_CALL_LABEL,), (), is_siprec=False)
    if media_type == "multipart/mixed":
        body = split_multipart(content_type, request.body)
        sdp = parse_offer(body.sdp)
        accepted = negotiate(sdp, accepted_codecs)
        participants = parse_metadata(body.metadata) if body.metadata else ()
        labels = channel_labels([m.stream_label for m in accepted], participants)
        return Offer(sdp, tuple(accepted), tuple(labels), participants, is_siprec=True)
    raise UnsupportedBody(f"unsupported INVITE body {media_type!r}")


def restrict_to(offer: Offer, labels_by_index: Mapping[int, str]) -> Offer:
    """A re-offer limited to the m-lines of the original call, keeping their labels.

    RFC 3264 §8 lets a re-offer change codecs, directions and addresses, but the transcript's
    channels must stay the same ones: new streams are refused (port 0), old labels persist.
    """
    kept = tuple(m for m in offer.media if m.index in labels_by_index)
    return Offer(offer.sdp, kept, tuple(labels_by_index[m.index] for m in kept), offer.participants, offer.is_siprec)


def describe_call(request: SipRequest, peer: Peer, offer: Offer) -> Call:
    """The handler's view of the call."""
    return Call(
        call_id=request.call_id or "",
        caller=_party(request.headers.get_first("from") or ""),
        callee=_party(request.headers.get_first("to") or ""),
        channels=tuple(
            Channel(
                index=media.index,
                label=label,
                codec=media.codec,
                telephone_event_pt=media.telephone_event_pt,
                remote_address=media.remote_address,
                remote_port=media.remote_port,
                direction=media.direction,
                stream_label=media.stream_label,
            )
            for media, label in zip(offer.media, offer.labels, strict=True)
        ),
        transport=peer.transport,
        signalling_peer=peer.address,
        is_siprec=offer.is_siprec,
        participants=offer.participants,
        hotword_list=hotword_list(request),
    )


def hotword_list(request: SipRequest) -> str | None:
    """The list name in the INVITE's X-ASR-Hotwords header; None if absent or not a short token."""
    value = (request.headers.get_first(HOTWORD_LIST_HEADER) or "").strip()
    return value if _LIST_NAME.fullmatch(value) else None


def _party(header: str) -> Party:
    address = parse_address(header)
    display_name = (address.display_name or "").strip('"') or None
    return Party(uri=stringify_uri(address.uri), display_name=display_name)
