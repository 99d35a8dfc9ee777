"""SIPREC bodies: multipart splitting and RFC 7865 metadata -> channel labels."""

from __future__ import annotations

import pytest

from asr_stream.sip.call import Participant
from asr_stream.sip.siprec import InvalidMultipart, channel_labels, parse_metadata, split_multipart

RFC7865_METADATA = b"""<?xml version="1.0" encoding="UTF-8"?>
<recording xmlns="urn:ietf:params:xml:ns:recording:1">
  <datamode>complete</datamode>
  <participant participant_id="p1"><nameID aor="sip:alice@example.com"><name>caller</name></nameID></participant>
  <participant participant_id="p2"><nameID aor="sip:agent@example.com"/></participant>
  <stream stream_id="s1" session_id="x"><label>10</label></stream>
  <stream stream_id="s2" session_id="x"><label>11</label></stream>
  <participantstreamassoc participant_id="p1"><send>s1</send><recv>s2</recv></participantstreamassoc>
  <participantstreamassoc participant_id="p2"><send>s2</send><recv>s1</recv></participantstreamassoc>
</recording>"""

# The pre-RFC draft form some SBCs still send: <send> inside <participant>, prefixed namespace.
DRAFT_METADATA = b"""<?xml version="1.0"?>
<rs:recording xmlns:rs="urn:ietf:params:xml:ns:recording">
  <rs:participant participant_id="a"><rs:nameID aor="sip:1001@pbx"><rs:name>agent</rs:name></rs:nameID><rs:send>m1</rs:send></rs:participant>
  <rs:stream stream_id="m1"><rs:label>1</rs:label></rs:stream>
</rs:recording>"""


def test_rfc7865_participants_and_the_streams_they_send() -> None:
    participants = parse_metadata(RFC7865_METADATA)
    assert participants == (
        Participant("p1", "caller", "sip:alice@example.com", ("10",)),
        Participant("p2", None, "sip:agent@example.com", ("11",)),
    )
    # A participant without a name is labelled by its aor; an unknown stream by its own label.
    assert channel_labels(["10", "11", "12"], participants) == ["caller", "sip:agent@example.com", "12"]


def test_draft_metadata_with_send_inside_participant() -> None:
    assert parse_metadata(DRAFT_METADATA) == (Participant("a", "agent", "sip:1001@pbx", ("1",)),)


def test_unusable_metadata_falls_back_to_stream_labels() -> None:
    assert parse_metadata(b"<recording><participant") == ()
    assert channel_labels(["1", None], ()) == ["1", "stream1"]


def test_labels_stay_unique_when_one_participant_sends_two_streams() -> None:
    participant = Participant("p", "agent", None, ("1", "2"))
    assert channel_labels(["1", "2"], [participant]) == ["agent", "agent-2"]


def test_multipart_split() -> None:
    body = (
        b"--b\r\nContent-Type: application/sdp\r\n\r\nv=0\r\n"
        b"--b\r\nContent-Type: application/rs-metadata+xml\r\nContent-Disposition: recording-session\r\n\r\n<recording/>\r\n"
        b"--b--\r\n"
    )
    parts = split_multipart('multipart/mixed; boundary="b"', body)
    assert parts.sdp.startswith("v=0") and parts.metadata is not None and parts.metadata.startswith(b"<recording/>")


@pytest.mark.parametrize(
    "body",
    [b"no boundary in here", b"--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n--b--\r\n"],
)
def test_multipart_without_sdp_is_invalid(body: bytes) -> None:
    with pytest.raises(InvalidMultipart):
        split_multipart("multipart/mixed;boundary=b", body)
