"""What every ingest hands the rest of the pipeline: neutral calls, channels, audio frames, events.

A SIP call, a SIPREC recording session and a WebRTC (WHIP) session all become a `CallInfo` with
one `ChannelInfo` per transcribed stream, whose audio arrives as contiguous 16 kHz `AudioFrame`s on
the sender's clock. The stages after ingest (audio, transcript, app) see only these types, so they
cannot depend on how a call was signalled: SIP's detailed end reasons, transports and SDP stay in
`ingest.telephony`, aiortc's objects in `ingest.webrtc`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal, Protocol

import numpy as np

#: The pipeline's sample rate: every ingest resamples to it, every model front end takes it.
SAMPLE_RATE = 16_000

#: How the call reached us: a plain SIP call, a SIPREC recording session, or a WHIP session.
CallSource = Literal["sip", "siprec", "webrtc"]


class EndReason(StrEnum):
    """Why a call ended, in the words consumers read in `call.ended.end_reason`."""

    HANGUP = "hangup"  # either party hung up (SIP BYE, WHIP DELETE, the browser closing its track)
    CANCELLED = "cancelled"  # the caller gave up before the call was answered
    MEDIA_TIMEOUT = "media_timeout"  # no audio for longer than the configured timeout
    SHUTDOWN = "shutdown"  # the daemon stopped while the call was up
    ERROR = "error"  # the call could not be processed further
    LOST = "lost"  # the daemon died while the call was up (killed, crashed); its next start says so


@dataclass(frozen=True)
class Party:
    """One end of the call as its signalling names it (SIP From/To, or a WHIP session URI)."""

    uri: str
    display_name: str | None = None


@dataclass(frozen=True)
class ChannelInfo:
    """One transcribed audio stream of a call."""

    index: int  # stable position within the call (the SDP m-line for SIP)
    label: str  # who speaks on it: "caller", or a SIPREC participant's name ("agent", "Alice")
    codec: str  # as received: "PCMU", "PCMA", "opus"
    clock_rate: int  # the codec's RTP clock rate (Hz), before resampling to SAMPLE_RATE


@dataclass(frozen=True)
class CallInfo:
    """Everything the pipeline needs to know about a call, whichever ingest produced it."""

    call_id: str
    caller: Party
    callee: Party
    channels: tuple[ChannelInfo, ...]
    source: CallSource
    peer: tuple[str, int]  # the signalling peer's address (a gateway, an SBC, a browser)
    hotword_list: str | None = None  # the named hotword list the signalling asked for (SIP X-ASR-Hotwords)


@dataclass(frozen=True, slots=True)
class AudioFrame:
    """Float32 mono samples at 16 kHz; `start_sample` counts from call start on the sender's clock."""

    start_sample: int
    samples: np.ndarray

    @property
    def start_ms(self) -> float:
        return 1000.0 * self.start_sample / SAMPLE_RATE

    @property
    def end_sample(self) -> int:
        return self.start_sample + self.samples.shape[0]


class CallChannel(Protocol):
    """One channel of a live call as the pipeline consumes it, whichever ingest made it."""

    @property
    def info(self) -> ChannelInfo: ...

    def frames(self) -> AsyncIterator[AudioFrame]:
        """Contiguous frames from sample 0 (call start) until the call ends; iterate once."""
        ...


@dataclass(frozen=True)
class CallStarted:
    """A call was answered: one `CallChannel` per `call.channels`, in the same order."""

    call: CallInfo
    channels: tuple[CallChannel, ...]


@dataclass(frozen=True)
class CallEnded:
    """A call is over; every one of its channels' `frames()` has ended by now. Exactly once per call."""

    call: CallInfo
    reason: EndReason


#: Admission control: given the new call, None admits it; a number refuses it (SIP 503 / HTTP 503)
#: with that many seconds of Retry-After.
AdmissionHook = Callable[[CallInfo], int | None]
