"""Telephony ingest: the SIP server, with a media host receiving each call's RTP as 16 kHz audio.

This is the facade the daemon uses for SIP calls (plain and SIPREC):

    ingest = TelephonyIngest(IngestConfig(sip=SipServerConfig(port=5060)), admit=admission_hook)
    await ingest.start()
    async for event in ingest.events():
        match event:
            case CallStarted(call, channels):   # one ChannelAudio per call.channels, same order
                for channel in channels:
                    spawn(transcribe(call.call_id, channel.info.label, channel.frames()))
            case DtmfPressed(call_id, channel_index, press): ...
            case CallEnded(call, reason): ...   # every channel's frames() has ended by now
    await ingest.stop()

The SIP side lives here: admission (503 + Retry-After), refusing calls when no RTP port pair is
left (after giving up the oldest call still waiting for its ACK), 488 for a re-INVITE a channel
cannot follow, and ending calls on behalf of the media host. The media side is a `MediaHost`
(`ingest.media`): by default an `RtpMediaHost` in this process, whose calls `events()` yields; the
daemon's worker pool passes one that forwards each call to an ingest worker process, and then
`events()` yields nothing, since those calls are transcribed in the workers.

Calls leave this stage as the neutral `ingest.types` (CallInfo, ChannelInfo, EndReason): SIP's own
`Call`, its end reasons and SDP details stay in `ingest`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable

from asr_stream.common.throttled_log import ThrottledLog, clip
from asr_stream.ingest.media import HangUp, IngestConfig, IngestEvent, MediaHost, RtpMediaHost, describe_call
from asr_stream.ingest.types import AdmissionHook
from asr_stream.rtp.codecs import supported_encodings
from asr_stream.rtp.ports import PortsExhausted
from asr_stream.sip.call import Call, MediaAnswer, SipReject
from asr_stream.sip.call import EndReason as SipEndReason
from asr_stream.sip.server import SipServer

log = logging.getLogger(__name__)

#: Builds the media host, given how it can ask the SIP side to hang a call up.
MediaHostFactory = Callable[[IngestConfig, HangUp], MediaHost]


class TelephonyIngest:
    """Runs the SIP server with itself as the call handler; see the module docstring."""

    def __init__(self, config: IngestConfig, admit: AdmissionHook | None = None, media: MediaHostFactory = RtpMediaHost) -> None:
        unsupported = set(config.sip.accepted_codecs) - set(supported_encodings())
        if unsupported:
            raise ValueError(f"SIP would accept codecs the RTP stage cannot decode: {sorted(unsupported)}")
        self.config = config
        self._admit = admit
        self._server = SipServer(self, config.sip)
        self._refusals = ThrottledLog(log)  # one line per source every 10 s while ports are out
        self.media = media(config, self.end_call)

    @property
    def sip(self) -> SipServer:
        """The SIP server (its port, stats, `set_saturated`)."""
        return self._server

    async def start(self) -> None:
        await self._server.start()

    async def stop(self) -> None:
        """BYE every call (each ends with reason "shutdown"), then close the sockets; `events()` ends."""
        await self._server.stop()
        await self.media.close()

    def events(self) -> AsyncIterator[IngestEvent]:
        """The calls transcribed in this process, in order, until `stop()` has ended the last one."""
        return self.media.events()

    async def end_call(self, call_id: str, reason: SipEndReason = SipEndReason.LOCAL_BYE) -> bool:
        return await self._server.end_call(call_id, reason)

    @property
    def rtp_ports_exhausted(self) -> bool:
        """No RTP port pair is free: new calls are refused, so the daemon is not ready for more."""
        return self.media.rtp_ports_exhausted

    @property
    def rtp_port_pairs_free(self) -> int:
        return self.media.rtp_port_pairs_free

    # -- CallHandler, called by the SIP server --------------------------------------------------

    async def on_invite(self, call: Call) -> MediaAnswer:
        if self._admit is not None and (retry_after := self._admit(describe_call(call))) is not None:
            raise SipReject(503, "Service Unavailable", retry_after)
        while True:
            try:
                return MediaAnswer(await self.media.open_call(call))
            except PortsExhausted as error:
                # Out of ports: the oldest call still waiting for its ACK makes room, if there is one.
                if await self._server.release_oldest_unconfirmed() is None:
                    source = call.signalling_peer[0]
                    self._refusals.warning(source, "call %s from %s refused: %s", clip(call.call_id), source, error)
                    raise SipReject(503, "Service Unavailable", self.config.sip.retry_after_s) from error

    async def on_dialog_confirmed(self, call: Call) -> None:
        """The caller ACKed: only now is the call published (a never-ACKed INVITE never is)."""
        await self.media.confirm_call(call)

    async def on_reinvite(self, call: Call) -> None:
        try:
            await self.media.update_call(call)
        except ValueError as error:  # e.g. G.711 -> a 48 kHz codec: the channel clock cannot follow
            raise SipReject(488, f"Not Acceptable Here ({error})") from error

    async def on_call_ended(self, call: Call, reason: SipEndReason) -> None:
        await self.media.close_call(call, reason)
