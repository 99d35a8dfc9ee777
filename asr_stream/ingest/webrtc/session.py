"""WHIP ingest (RFC 9725): a browser softphone or an agent's microphone as a one-channel call.

The daemon consumes it exactly like `TelephonyIngest`:

    whip = WhipIngest(WhipConfig(), admit=scheduler_admit)
    # the HTTP layer (asr_stream/http_whip.py) calls whip.offer(...) and whip.terminate(...)
    async for event in whip.events():
        match event:
            case CallStarted(call, channels):  # one channel, labelled "caller"
                spawn(transcribe(call.call_id, channels[0].channel.label, channels[0].frames()))
            case CallEnded(call, reason): ...  # frames() has ended by now
    await whip.stop()

A session is a call whose id is the WHIP session id. It starts (CallStarted) when the offer is
answered and ends (CallEnded, exactly once) on: terminate() = HTTP DELETE (reason HANGUP, or the
caller's), the peer closing its connection, which sends RTCP BYE (HANGUP), ICE/DTLS failure or no
audio for `inactivity_timeout_s` (MEDIA_TIMEOUT), or stop() (SHUTDOWN).

Signalling is non-trickle: aiortc gathers every local candidate inside setLocalDescription,
so the answer returned by offer() is complete and WHIP's PATCH (trickle, ICE restart) is not
needed; the HTTP layer answers it 405.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCRtpReceiver, RTCSessionDescription
from aiortc.exceptions import InvalidAccessError, OperationError
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiosipua import Codec as SdpCodec

from asr_stream.ingest.types import AdmissionHook, CallEnded, CallInfo, CallStarted, ChannelInfo, EndReason, Party
from asr_stream.ingest.webrtc.audio import WebRtcChannelAudio
from asr_stream.sip.sdp import InvalidSdp, parse_offer

log = logging.getLogger(__name__)

#: Codecs aiortc can decode, best first, with the only clock rate each is valid with. Opus carries
#: the whole 8 kHz band Whisper's 16 kHz input holds; G.711 stops at 4 kHz, a last resort.
PREFERRED_CODECS = (("opus", 48000), ("PCMU", 8000), ("PCMA", 8000))
#: What `events()` yields: the same types as `TelephonyIngest` (WHIP has no DTMF).
WhipEvent = CallStarted | CallEnded


class OfferRejected(ValueError):
    """The offer is not a usable WHIP offer (HTTP 400); the message says why."""


class SessionRefused(Exception):
    """No capacity for a new session now (HTTP 503 with `Retry-After: retry_after`)."""

    def __init__(self, retry_after: int, reason: str) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


@dataclass(frozen=True)
class WhipConfig:
    """Limits of the WHIP ingest.

    max_sessions: concurrent sessions, counting offers still being answered (each holds UDP sockets)
    max_offer_bytes: a browser's audio-only offer is 2-6 KiB; the HTTP body limit must be at least this
    inactivity_timeout_s: no decoded audio this long (also: ICE never connecting) ends the session
    gather_timeout_s: bound on ICE gathering; only STUN/TURN servers can make it slow
    max_queued_frames: decoded frames buffered for a slow consumer (500 = 10 s of 20 ms Opus)
    max_pending_events: CallStarted/CallEnded not yet taken from events(); offers wait beyond it
    ice_servers: STUN/TURN for the daemon's side; empty = host candidates only (aiortc would
        otherwise use a public Google STUN server, unreachable from a call-centre network)
    """

    max_sessions: int = 64
    max_offer_bytes: int = 16 * 1024
    inactivity_timeout_s: float = 30.0
    gather_timeout_s: float = 5.0
    retry_after_s: int = 5
    max_queued_frames: int = 500
    max_pending_events: int = 1024
    ice_servers: tuple[RTCIceServer, ...] = ()


@dataclass
class _Session:
    call: CallInfo
    pc: RTCPeerConnection
    audio: WebRtcChannelAudio
    receiver: asyncio.Task[None]  # feeds `audio` from the track; ends the session when the track does


class WhipIngest:
    """WHIP sessions as calls; see the module docstring."""

    def __init__(self, config: WhipConfig = WhipConfig(), admit: AdmissionHook | None = None) -> None:
        self.config = config
        self._admit = admit
        self._sessions: dict[str, _Session] = {}
        self._opening = 0  # offers between admission and registration
        self._stopped = False
        self._events: asyncio.Queue[WhipEvent | None] = asyncio.Queue(config.max_pending_events)  # None: stopped

    @property
    def active_sessions(self) -> int:
        return len(self._sessions)

    async def events(self) -> AsyncIterator[WhipEvent]:
        """Every session's events in order, until `stop()` has ended the last session."""
        while (event := await self._events.get()) is not None:
            yield event

    async def offer(self, sdp_offer: str, peer: tuple[str, int] = ("", 0)) -> tuple[str, str]:
        """Answer a WHIP offer: returns (session id, SDP answer) and emits CallStarted.

        `peer` is the HTTP client's address (the call's `signalling_peer`). Raises
        `OfferRejected` for an unusable offer, `SessionRefused` when over capacity or not admitted.
        """
        if len(sdp_offer.encode()) > self.config.max_offer_bytes:
            raise OfferRejected(f"offer larger than {self.config.max_offer_bytes} bytes")
        session_id = secrets.token_urlsafe(16)  # the DELETE URL: unguessable, so only its creator ends it
        call = _describe_call(session_id, sdp_offer, peer)
        if self._stopped or len(self._sessions) + self._opening >= self.config.max_sessions:
            raise SessionRefused(self.config.retry_after_s, "WHIP ingest is at capacity or stopping")
        if self._admit is not None and (retry_after := self._admit(call)) is not None:
            raise SessionRefused(retry_after, "not admitted")
        self._opening += 1
        try:
            pc, track = await self._answer(sdp_offer, call.channels[0].codec)
        finally:
            self._opening -= 1
        if self._stopped:  # stop() ran while this offer was being answered
            await pc.close()
            raise SessionRefused(self.config.retry_after_s, "WHIP ingest is stopping")
        audio = WebRtcChannelAudio(
            session_id,
            call.channels[0],
            max_queued_frames=self.config.max_queued_frames,
            max_gap_s=self.config.inactivity_timeout_s,
        )
        receiver = asyncio.create_task(self._receive(session_id, audio, track), name=f"whip-{session_id}")
        self._sessions[session_id] = _Session(call, pc, audio, receiver)

        @pc.on("connectionstatechange")
        async def on_connection_state() -> None:
            if pc.connectionState == "failed":  # ICE consent lost or DTLS failed: no media will come
                await self.terminate(session_id, EndReason.MEDIA_TIMEOUT)

        await self._events.put(CallStarted(call, (audio,)))
        log.info("WHIP session %s started (%s from %s)", session_id, call.channels[0].codec, peer[0])
        return session_id, pc.localDescription.sdp

    async def terminate(self, session_id: str, reason: EndReason = EndReason.HANGUP) -> bool:
        """End a session (HTTP DELETE: the sender hung up); False if there is no such session.

        Returns after CallEnded is queued, with the peer connection closed and frames() ended.
        """
        session = self._sessions.pop(session_id, None)
        if session is None:
            return False
        if session.receiver is not asyncio.current_task():
            session.receiver.cancel()
            await asyncio.gather(session.receiver, return_exceptions=True)
        await session.pc.close()
        session.audio.end()
        log.info("WHIP session %s ended: %s (%d frames dropped)", session_id, reason, session.audio.dropped_frames)
        await self._events.put(CallEnded(session.call, reason))
        return True

    async def stop(self) -> None:
        """Refuse new offers and end every session (reason SHUTDOWN); `events()` ends."""
        self._stopped = True
        for session_id in list(self._sessions):
            await self.terminate(session_id, EndReason.SHUTDOWN)
        await self._events.put(None)

    async def _answer(self, sdp_offer: str, codec: str) -> tuple[RTCPeerConnection, MediaStreamTrack]:
        """A receive-only peer connection for the offer, its answer set and every candidate gathered."""
        pc = RTCPeerConnection(RTCConfiguration(iceServers=list(self.config.ice_servers)))
        try:
            transceiver = pc.addTransceiver("audio", direction="recvonly")
            capabilities = RTCRtpReceiver.getCapabilities("audio")
            assert capabilities is not None, "aiortc returns None only for a kind other than audio or video"
            # Only the codec chosen in _describe_call, so the channel's codec is what aiortc decodes.
            transceiver.setCodecPreferences([c for c in capabilities.codecs if c.mimeType.lower() == f"audio/{codec.lower()}"])
            await pc.setRemoteDescription(RTCSessionDescription(sdp_offer, "offer"))
            answer = await pc.createAnswer()
            await asyncio.wait_for(pc.setLocalDescription(answer), self.config.gather_timeout_s)
        except (ValueError, InvalidAccessError, OperationError) as error:  # e.g. no ICE credentials, no RTCP mux
            await pc.close()
            raise OfferRejected(f"offer not usable for WebRTC: {error}") from error
        except TimeoutError as error:
            await pc.close()
            raise SessionRefused(self.config.retry_after_s, "ICE gathering timed out") from error
        except BaseException:
            await pc.close()
            raise
        track = transceiver.receiver.track
        assert track is not None  # setRemoteDescription creates it for a sendonly/sendrecv m-line
        return pc, track

    async def _receive(self, session_id: str, audio: WebRtcChannelAudio, track: MediaStreamTrack) -> None:
        """Feed decoded frames to the channel until the track ends or stays silent too long."""
        try:
            while True:
                frame = await asyncio.wait_for(track.recv(), self.config.inactivity_timeout_s)
                audio.push(frame)  # type: ignore[arg-type]  # an audio track yields av.AudioFrame
        except MediaStreamError:  # the sender's RTCP BYE ended the track
            reason = EndReason.HANGUP
        except TimeoutError:
            reason = EndReason.MEDIA_TIMEOUT
        await self.terminate(session_id, reason)


def _describe_call(session_id: str, sdp_offer: str, peer: tuple[str, int]) -> CallInfo:
    """The call of a session: one "caller" channel with the best codec of the offer we can decode.

    The offer is checked with the SIP stage's SDP parser (same validity rules as for calls) before
    aiortc sees it. Opus's rtpmap is always opus/48000/2 (RFC 7587), whatever the microphone, so
    its clock rate is 48000 Hz; the channel is mixed to mono on receipt.
    """
    try:
        offer = parse_offer(sdp_offer)
    except InvalidSdp as error:
        raise OfferRejected(str(error)) from error
    kinds = [media.media for media in offer.media]
    if kinds != ["audio"]:
        raise OfferRejected(f"a WHIP offer here must have exactly one audio m-line, got {kinds}")
    media = offer.media[0]
    if media.direction not in ("sendonly", "sendrecv"):
        raise OfferRejected(f"the audio stream must be sendonly or sendrecv, got {media.direction}")
    name, codec = _best_codec(media.codecs)
    return CallInfo(
        call_id=session_id,
        caller=Party(f"whip:{session_id}"),
        callee=Party("whip:asr-stream"),
        channels=(ChannelInfo(index=0, label="caller", codec=name, clock_rate=codec.clock_rate),),
        source="webrtc",
        peer=peer,
    )


def _best_codec(codecs: list[SdpCodec]) -> tuple[str, SdpCodec]:
    """Our most preferred codec among those offered (canonical name, the offer's rtpmap)."""
    for name, clock_rate in PREFERRED_CODECS:
        for codec in codecs:
            if codec.encoding_name.lower() == name.lower() and codec.clock_rate == clock_rate:
                return name, codec
    offered = sorted({codec.encoding_name for codec in codecs})
    raise OfferRejected(f"no decodable codec offered (need one of {[n for n, _ in PREFERRED_CODECS]}, got {offered})")
