"""SIP signalling: accepts calls (plain and SIPREC) and describes them as `Call`s.

The daemon needs only what is re-exported here; `server` documents the contract. This package
knows nothing of RTP, audio, models or Kafka: it hands out plain dataclasses and receives a
`MediaAnswer` (where each channel's RTP will be received) from its `CallHandler`.
"""

from asr_stream.sip.call import (
    Call,
    CallHandler,
    Channel,
    Codec,
    EndReason,
    LocalMedia,
    MediaAnswer,
    Participant,
    Party,
    SipReject,
)
from asr_stream.sip.digest import DigestAuthConfig, DigestCredential
from asr_stream.sip.message import FieldLimits
from asr_stream.sip.ratelimit import InviteRateLimit
from asr_stream.sip.server import SipServer, SipServerConfig, SipStats
from asr_stream.sip.transaction import SipTimers
from asr_stream.sip.transport import TransportLimits

__all__ = [
    "Call",
    "CallHandler",
    "Channel",
    "Codec",
    "DigestAuthConfig",
    "DigestCredential",
    "EndReason",
    "FieldLimits",
    "InviteRateLimit",
    "LocalMedia",
    "MediaAnswer",
    "Participant",
    "Party",
    "SipReject",
    "SipServer",
    "SipServerConfig",
    "SipStats",
    "SipTimers",
    "TransportLimits",
]
