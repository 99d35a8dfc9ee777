"""What the SIP layer tells the rest of the daemon about a call, and what it needs back.

These are plain frozen dataclasses so that the RTP/audio stages can keep them, log them and
compare them without knowing anything about SIP. `server.py` documents how they are used.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

Transport = Literal["udp", "tcp"]

#: Our side of a media stream. "recvonly": the far end sends us audio. "inactive": on hold, or
#: the offer said it would not send (so an RTP-silence timeout should not end the call).
MediaDirection = Literal["recvonly", "inactive"]


class EndReason(enum.StrEnum):
    """Why a call ended. A StrEnum, so it logs and serialises as its plain value."""

    BYE = "bye"  # the far end hung up (BYE received)
    CANCEL = "cancel"  # the far end cancelled before we answered
    ACK_TIMEOUT = "ack_timeout"  # our 200 OK was never acknowledged (64*T1)
    RTP_TIMEOUT = "rtp_timeout"  # daemon-initiated: media stopped arriving
    SHUTDOWN = "shutdown"  # daemon-initiated: the server is stopping
    LOCAL_BYE = "local_bye"  # daemon-initiated for any other reason


@dataclass(frozen=True)
class Codec:
    """A negotiated RTP payload format (RFC 3551 / the offer's a=rtpmap)."""

    name: str  # canonical spelling: "PCMU", "PCMA", "opus"
    payload_type: int
    clock_rate: int
    channels: int = 1
    fmtp: str | None = None


@dataclass(frozen=True)
class Party:
    """One end of the signalling dialog (From or To)."""

    uri: str
    display_name: str | None = None


@dataclass(frozen=True)
class Participant:
    """A SIPREC participant from the RFC 7865 recording metadata."""

    participant_id: str
    name: str | None  # <nameID><name>, the human/role name ("caller", "agent", "Alice")
    aor: str | None  # <nameID aor="...">
    sends: tuple[str, ...] = ()  # SDP a=label values of the streams this participant sends


@dataclass(frozen=True)
class Channel:
    """One audio stream of a call: what the RTP receiver for it needs to know."""

    index: int  # position of its m-line in the SDP offer (stable across re-INVITEs)
    label: str  # "caller" for plain calls; the SIPREC participant's name (or stream label)
    codec: Codec
    telephone_event_pt: int | None  # RFC 4733 DTMF payload type, when the offer had one
    remote_address: str  # where the far end says it sends from / receives on (SDP c=)
    remote_port: int
    direction: MediaDirection
    stream_label: str | None = None  # SDP a=label (SIPREC ties metadata to m-lines with it)


@dataclass(frozen=True)
class Call:
    """Everything known about a call from its signalling. A re-INVITE produces a new instance."""

    call_id: str
    caller: Party  # From
    callee: Party  # To
    channels: tuple[Channel, ...]
    transport: Transport
    signalling_peer: tuple[str, int]  # the address the INVITE came from (an SBC, a recorder)
    is_siprec: bool = False
    participants: tuple[Participant, ...] = ()
    hotword_list: str | None = None  # the X-ASR-Hotwords header: a list name, for the daemon to look up


@dataclass(frozen=True)
class LocalMedia:
    """Where we receive one channel's RTP. A wildcard address is replaced by the SIP address."""

    address: str
    port: int


@dataclass(frozen=True)
class MediaAnswer:
    """The handler's answer to an INVITE: one `LocalMedia` per `Call.channels`, same order."""

    channels: Sequence[LocalMedia] = field(default_factory=tuple)


class SipReject(Exception):
    """Raised by a handler to refuse a call (e.g. 486 Busy Here, 503 with Retry-After)."""

    def __init__(self, status: int, reason: str, retry_after: int | None = None) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.retry_after = retry_after


class CallHandler(Protocol):
    """What the daemon implements to receive calls; see `asr_stream.sip.server` for the contract."""

    async def on_invite(self, call: Call) -> MediaAnswer:
        """Allocate RTP receivers for `call.channels`, or raise `SipReject`."""
        ...

    async def on_reinvite(self, call: Call) -> None:
        """The far end changed the session (hold/resume/codec/address); raise `SipReject` to refuse."""
        ...

    async def on_dialog_confirmed(self, call: Call) -> None:
        """The caller confirmed the dialog (ACK): the call is real, publish it from here.

        Called at most once per call and always before its `on_call_ended`; never for a call
        that was not confirmed (ACK timeout, cancel, released under pressure), so a flood of
        INVITEs that are never ACKed publishes nothing.
        """
        ...

    async def on_call_ended(self, call: Call, reason: EndReason) -> None:
        """Release what `on_invite` allocated. Called exactly once per answered or cancelled call."""
        ...
