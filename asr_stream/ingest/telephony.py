"""Telephony ingest: the SIP server plus one RTP receiver per negotiated channel, as 16 kHz audio.

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

Calls leave this module as the neutral `ingest.types` (CallInfo, ChannelInfo, EndReason): SIP's own
`Call`, its end reasons and SDP details stay here.

Media time: sample 0 of every channel is the moment the call was answered (on_invite); the
wall-clock delay to a channel's first RTP packet is inserted once as leading silence, and from
there on the channel advances only by its RTP clock (gaps filled by the jitter buffer), so
`start_ms` of any frame is sender time since call start, never arrival time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np

from asr_stream.common.throttled_log import ThrottledLog, clip
from asr_stream.ingest.resample import StreamResampler
from asr_stream.ingest.types import (
    SAMPLE_RATE,
    AdmissionHook,
    AudioFrame,
    CallEnded,
    CallInfo,
    CallStarted,
    ChannelInfo,
    EndReason,
    Party,
)
from asr_stream.rtp.codecs import TELEPHONE_EVENT, supported_encodings
from asr_stream.rtp.dtmf import DtmfEvent
from asr_stream.rtp.ports import PortAllocator, PortsExhausted
from asr_stream.rtp.receiver import Latching, ReceiverConfig, RtpReceiver, RtpTimeout
from asr_stream.sip.call import Call, Channel, LocalMedia, MediaAnswer, SipReject
from asr_stream.sip.call import EndReason as SipEndReason
from asr_stream.sip.server import SipServer, SipServerConfig

log = logging.getLogger(__name__)

_INT16_SCALE = 1.0 / 32768.0

#: SIP's detailed end reasons in the words consumers read. Hang-ups from either side are one
#: "hangup"; a 200 OK never acknowledged means the call could not be set up ("error").
END_REASONS: dict[SipEndReason, EndReason] = {
    SipEndReason.BYE: EndReason.HANGUP,
    SipEndReason.LOCAL_BYE: EndReason.HANGUP,
    SipEndReason.CANCEL: EndReason.CANCELLED,
    SipEndReason.RTP_TIMEOUT: EndReason.MEDIA_TIMEOUT,
    SipEndReason.ACK_TIMEOUT: EndReason.ERROR,
    SipEndReason.SHUTDOWN: EndReason.SHUTDOWN,
}


@dataclass(frozen=True)
class IngestConfig:
    sip: SipServerConfig = SipServerConfig()
    rtp_host: str = "0.0.0.0"
    rtp_port_min: int = 16384
    rtp_port_max: int = 32767
    latching: Latching = Latching.FIRST
    playout_delay_s: float = 0.06
    rtp_timeout_s: float = 30.0  # no media this long on an active channel ends the call ("rtp_timeout")
    max_pending_events: int = 1024


def describe_call(call: Call) -> CallInfo:
    """A SIP call as the pipeline sees it."""
    return CallInfo(
        call_id=call.call_id,
        caller=Party(call.caller.uri, call.caller.display_name),
        callee=Party(call.callee.uri, call.callee.display_name),
        channels=tuple(describe_channel(channel) for channel in call.channels),
        source="siprec" if call.is_siprec else "sip",
        peer=call.signalling_peer,
        hotword_list=call.hotword_list,
    )


def describe_channel(channel: Channel) -> ChannelInfo:
    return ChannelInfo(index=channel.index, label=channel.label, codec=channel.codec.name, clock_rate=channel.codec.clock_rate)


async def audio_frames(receiver: RtpReceiver, answered_at: float) -> AsyncIterator[AudioFrame]:
    """A receiver's frames as contiguous 16 kHz float32 `AudioFrame`s from `answered_at` (loop time).

    Until the channel's first RTP packet, the lead-in is wall time (one silent frame); from there
    on, positions follow the RTP clock. Ends, after the resampler's tail, when the receiver closes.
    """
    resampler = StreamResampler(receiver.rate, SAMPLE_RATE)
    position = 0
    async for frame in receiver.frames():
        if position == 0 and receiver.first_media_at is not None:
            lead_in = round((receiver.first_media_at - answered_at) * SAMPLE_RATE)
            if lead_in > 0:
                yield AudioFrame(0, np.zeros(lead_in, np.float32))
                position = lead_in
        samples = resampler.process(frame.samples.astype(np.float32) * _INT16_SCALE)
        if samples.shape[0]:
            yield AudioFrame(position, samples)
            position += samples.shape[0]
    tail = resampler.flush()
    if tail.shape[0]:
        yield AudioFrame(position, tail)


class ChannelAudio:
    """One channel of a call: its SIP description, its RTP receiver, and its audio at 16 kHz."""

    def __init__(self, call: Call, channel: Channel, receiver: RtpReceiver, answered_at: float) -> None:
        self.call = call
        self.channel = channel
        self.receiver = receiver
        self._answered_at = answered_at

    @property
    def info(self) -> ChannelInfo:
        return describe_channel(self.channel)

    def frames(self) -> AsyncIterator[AudioFrame]:
        """Contiguous frames from sample 0 (call start) until the call ends; iterate once."""
        return audio_frames(self.receiver, self._answered_at)


@dataclass(frozen=True)
class DtmfPressed:
    call_id: str
    channel_index: int
    press: DtmfEvent  # times on that channel's RTP clock (codec rate)


IngestEvent = CallStarted | CallEnded | DtmfPressed


@dataclass
class _CallState:
    call: Call
    channels: tuple[ChannelAudio, ...]
    watchers: list[asyncio.Task[None]]
    started: bool = False  # CallStarted went out (the dialog was confirmed)


class TelephonyIngest:
    """Runs the SIP server with itself as the call handler; see the module docstring."""

    def __init__(self, config: IngestConfig = IngestConfig(), admit: AdmissionHook | None = None) -> None:
        unsupported = set(config.sip.accepted_codecs) - set(supported_encodings())
        if unsupported:
            raise ValueError(f"SIP would accept codecs the RTP stage cannot decode: {sorted(unsupported)}")
        self.config = config
        self._admit = admit
        self._ports = PortAllocator(config.rtp_host, config.rtp_port_min, config.rtp_port_max)
        self._server = SipServer(self, config.sip)
        self._calls: dict[str, _CallState] = {}
        self._refusals = ThrottledLog(log)  # one line per source every 10 s while ports are out
        self._events: asyncio.Queue[IngestEvent | None] = asyncio.Queue(config.max_pending_events)  # None: stopped

    @property
    def sip(self) -> SipServer:
        """The SIP server (its port, stats, `set_saturated`)."""
        return self._server

    async def start(self) -> None:
        await self._server.start()

    async def stop(self) -> None:
        """BYE every call (each ends with reason "shutdown"), then close the sockets; `events()` ends."""
        await self._server.stop()
        await self._events.put(None)

    async def events(self) -> AsyncIterator[IngestEvent]:
        """Every call's events in order, until `stop()` has ended the last call."""
        while (event := await self._events.get()) is not None:
            yield event

    async def end_call(self, call_id: str, reason: SipEndReason = SipEndReason.LOCAL_BYE) -> bool:
        return await self._server.end_call(call_id, reason)

    @property
    def rtp_ports_exhausted(self) -> bool:
        """No RTP port pair is free: new calls are refused, so the daemon is not ready for more."""
        return self._ports.exhausted

    @property
    def rtp_port_pairs_free(self) -> int:
        return self._ports.free_pairs

    # -- CallHandler, called by the SIP server --------------------------------------------------

    async def on_invite(self, call: Call) -> MediaAnswer:
        if self._admit is not None and (retry_after := self._admit(describe_call(call))) is not None:
            raise SipReject(503, "Service Unavailable", retry_after)
        answered_at = asyncio.get_running_loop().time()
        channels: list[ChannelAudio] = []
        try:
            for channel in call.channels:
                receiver = await self._open_receiver(channel)
                channels.append(ChannelAudio(call, channel, receiver, answered_at))
        except PortsExhausted as error:
            for opened in channels:
                opened.receiver.close()
            self._refusals.warning(
                call.signalling_peer[0], "call %s from %s refused: %s", clip(call.call_id), call.signalling_peer[0], error
            )
            raise SipReject(503, "Service Unavailable", self.config.sip.retry_after_s) from error
        watchers = [asyncio.create_task(self._watch(call.call_id, audio)) for audio in channels]
        self._calls[call.call_id] = _CallState(call, tuple(channels), watchers)
        return MediaAnswer([LocalMedia(self.config.rtp_host, audio.receiver.port) for audio in channels])

    async def _open_receiver(self, channel: Channel) -> RtpReceiver:
        """A receiver for `channel`; out of ports, the oldest call still waiting for its ACK makes room."""
        while True:
            try:
                return await RtpReceiver.open(self._ports, self._receiver_config(channel))
            except PortsExhausted:
                if await self._server.release_oldest_unconfirmed() is None:
                    raise

    async def on_dialog_confirmed(self, call: Call) -> None:
        """The caller ACKed: only now is the call published (a never-ACKed INVITE never is)."""
        state = self._calls.get(call.call_id)
        if state is None or state.started:
            return
        state.started = True
        await self._events.put(CallStarted(describe_call(state.call), state.channels))

    async def on_reinvite(self, call: Call) -> None:
        state = self._calls.get(call.call_id)
        if state is None:
            return
        updated = [(audio, channel, self._receiver_config(channel)) for audio, channel in zip(state.channels, call.channels, strict=True)]
        try:
            for audio, _, config in updated:
                audio.receiver.set_payload_types(config.payload_types)
        except ValueError as error:  # e.g. G.711 -> a 48 kHz codec: the channel clock cannot follow
            raise SipReject(488, f"Not Acceptable Here ({error})") from error
        for audio, channel, config in updated:
            audio.channel = channel  # direction (hold) and remote address may have changed too
            audio.call = call
            audio.receiver.set_remote(config.remote)  # type: ignore[arg-type]
        state.call = call

    async def on_call_ended(self, call: Call, reason: SipEndReason) -> None:
        state = self._calls.pop(call.call_id, None)
        if state is None:
            return
        for audio in state.channels:
            audio.receiver.close()
        for watcher in state.watchers:
            watcher.cancel()
        await asyncio.gather(*state.watchers, return_exceptions=True)
        if state.started:
            await self._events.put(CallEnded(describe_call(state.call), END_REASONS[reason]))

    # -- per channel -----------------------------------------------------------------------------

    def _receiver_config(self, channel: Channel) -> ReceiverConfig:
        payload_types = {channel.codec.payload_type: channel.codec.name}
        if channel.telephone_event_pt is not None:
            payload_types[channel.telephone_event_pt] = TELEPHONE_EVENT
        return ReceiverConfig(
            payload_types,
            remote=(channel.remote_address, channel.remote_port),
            latching=self.config.latching,
            playout_delay_s=self.config.playout_delay_s,
            inactivity_timeout_s=self.config.rtp_timeout_s,
        )

    async def _watch(self, call_id: str, audio: ChannelAudio) -> None:
        """Turn a channel's RTP events into call events: DTMF out, media timeout -> hang up."""
        async for event in audio.receiver.events():
            if isinstance(event, DtmfEvent):
                await self._events.put(DtmfPressed(call_id, audio.channel.index, event))
            elif isinstance(event, RtpTimeout) and audio.channel.direction != "inactive":
                log.info("call %s: no RTP on channel %s for %.1f s", call_id, audio.channel.label, event.idle_s)
                with contextlib.suppress(asyncio.CancelledError):
                    # Shielded: ending the call cancels this watcher, which must not abort the BYE.
                    await asyncio.shield(self._server.end_call(call_id, SipEndReason.RTP_TIMEOUT))
                return
