"""SIPREC (RFC 7866) INVITE bodies: the SDP part, and who speaks on which stream (RFC 7865).

A recording client (SBC, PBX) sends `multipart/mixed` with `application/sdp` (one audio m-line
per recorded direction, each with `a=label`) and `application/rs-metadata+xml`. The metadata
ties a stream's label to the participant that sends it; that participant's name becomes the
channel label ("caller"/"agent"), so transcripts say who spoke.

Multipart is split with the standard library's MIME parser. The XML goes to ElementTree: the
bundled expat (>= 2.4) refuses entity-expansion bombs, and the body is size-capped by transport.
"""

from __future__ import annotations

import email.parser
import email.policy
import logging
import xml.etree.ElementTree as ElementTree
from collections.abc import Sequence
from dataclasses import dataclass

from asr_stream.sip.call import Participant

log = logging.getLogger(__name__)

METADATA_TYPE = "application/rs-metadata+xml"


class InvalidMultipart(ValueError):
    """A multipart body without exactly the parts a SIPREC INVITE needs (answered 400)."""


@dataclass(frozen=True)
class SiprecBody:
    """The two parts of a SIPREC offer that matter to us."""

    sdp: str
    metadata: bytes | None


def split_multipart(content_type: str, body: bytes) -> SiprecBody:
    """Extract the SDP and the recording metadata parts from a `multipart/mixed` body."""
    envelope = f"Content-Type: {content_type}\r\n\r\n".encode() + body
    message = email.parser.BytesParser(policy=email.policy.default).parsebytes(envelope)
    if not message.is_multipart():
        raise InvalidMultipart("multipart body without parts (bad boundary?)")
    parts = {part.get_content_type(): part.get_payload(decode=True) for part in message.iter_parts()}
    sdp = parts.get("application/sdp")
    if not isinstance(sdp, bytes):
        raise InvalidMultipart("multipart body without application/sdp")
    metadata = parts.get(METADATA_TYPE)
    return SiprecBody(sdp=sdp.decode("utf-8", errors="replace"), metadata=metadata if isinstance(metadata, bytes) else None)


def parse_metadata(xml: bytes) -> tuple[Participant, ...]:
    """Participants with the SDP labels of the streams each sends; () if the XML is unusable.

    Accepts both RFC 7865 `<participantstreamassoc>` and the older draft's `<send>` inside
    `<participant>` (still sent by deployed SBCs). Elements are matched by local name so that
    namespace prefixes and draft namespaces do not matter.
    """
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError as exc:
        log.warning("unusable SIPREC metadata: %s", exc)
        return ()
    stream_labels = {stream.get("stream_id", ""): _child_text(stream, "label") for stream in _elements(root, "stream")}
    sent_streams: dict[str, list[str]] = {}
    for element in [*_elements(root, "participantstreamassoc"), *_elements(root, "participant")]:
        participant_id = element.get("participant_id", "")
        sends = [child.text.strip() for child in element if _local(child.tag) == "send" and child.text]
        sent_streams.setdefault(participant_id, []).extend(sends)
    participants = []
    for element in _elements(root, "participant"):
        participant_id = element.get("participant_id", "")
        name_id = next((child for child in element if _local(child.tag) == "nameID"), None)
        labels = [stream_labels[s] for s in sent_streams.get(participant_id, []) if stream_labels.get(s)]
        participants.append(
            Participant(
                participant_id=participant_id,
                name=_child_text(name_id, "name") if name_id is not None else None,
                aor=name_id.get("aor") if name_id is not None else None,
                sends=tuple(label for label in labels if label is not None),
            )
        )
    return tuple(participants)


def channel_labels(stream_labels: Sequence[str | None], participants: Sequence[Participant]) -> list[str]:
    """A unique label per stream: its sender's name, else aor, else the stream label."""
    sender = {label: p for p in participants for label in p.sends}
    labels: list[str] = []
    for index, stream_label in enumerate(stream_labels):
        participant = sender.get(stream_label) if stream_label is not None else None
        label = (participant and (participant.name or participant.aor)) or stream_label or f"stream{index}"
        if label in labels:  # two streams from one participant: keep them apart
            label = f"{label}-{stream_label or index}"
        labels.append(label)
    return labels


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _elements(root: ElementTree.Element, name: str) -> list[ElementTree.Element]:
    return [element for element in root.iter() if _local(element.tag) == name]


def _child_text(element: ElementTree.Element, name: str) -> str | None:
    for child in element:
        if _local(child.tag) == name and child.text and child.text.strip():
            return child.text.strip()
    return None
