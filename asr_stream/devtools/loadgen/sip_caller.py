"""A SIP user agent client for load generation: many outgoing calls over one UDP socket.

    caller = SipCaller(("127.0.0.1", 5060))
    await caller.start()
    answer = await caller.invite(rtp_port=40000, codec="PCMU")   # raises CallFailed
    ...                                                          # stream RTP to answer.rtp_address
    await caller.hang_up(answer.call_id)                         # BYE, waits for its 200
    await caller.close()

What aiosipua's `SipUAC` does here: it builds the INVITE (fresh Call-ID, From tag and Via branch per
call), tracks the dialog through 1xx/2xx, parses the SDP answer, ACKs every 2xx (retransmitted
ones too) and builds the in-dialog BYE. What it lacks, and this module adds by hand:

* retransmission: `SipUAC` sends each request once. Over UDP the INVITE is repeated per RFC 3261
  Timer A (T1, doubling) until any response, and given up at Timer B (64*T1); the BYE per Timer E
  (T1 doubling to T2) until a final response, given up at Timer F. The project's own
  `asr_stream.sip.transaction.retransmit` drives both.
* the ACK of a non-2xx final response (RFC 3261 §17.1.1.3, same branch as the INVITE): `SipUAC`
  sends none, so the server would keep retransmitting its 503 for 32 s.
* the failure's details: `SipUAC` reports only status and reason; a 503's Retry-After is read here.
* requests from the server: a BYE (the daemon hung up, e.g. on an RTP timeout) is answered 200 and
  remembered, so the call counts as ended by the far end instead of failing at our BYE.
* the socket: aiosipua's `UdpSipTransport` binds by address and never reports the port the kernel
  picked, but Via and Contact must carry it before the first INVITE; so the socket is bound first
  and incoming datagrams go through the project's strict parser (`asr_stream.sip.message.parse`).

Calls are told apart by Call-ID, so one socket (one per load-generator process) carries them all.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiosipua import DialogState, SipRequest, SipResponse, build_sdp
from aiosipua.outgoing_call import OutgoingCall
from aiosipua.transport import SipTransport
from aiosipua.uac import SipUAC

from asr_stream.sip.message import MalformedMessage, build_response, parse
from asr_stream.sip.transaction import SipTimers, retransmit

log = logging.getLogger(__name__)

PAYLOAD_TYPES = {"PCMU": 0, "PCMA": 8}
TELEPHONE_EVENT_PT = 101  # offered like a real gateway offers it; never sent


def _fail(outcome: asyncio.Future[Any], error: Exception) -> None:
    """Settle `outcome` with `error`, unless something settled it first (an answer beat the timer)."""
    if not outcome.done():
        outcome.set_exception(error)


class CallFailed(Exception):
    """A call could not be set up or torn down; `reason` is a short label to count failures by."""

    def __init__(self, reason: str, retry_after_s: int | None = None) -> None:
        super().__init__(reason + (f" (Retry-After {retry_after_s})" if retry_after_s is not None else ""))
        self.reason = reason
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class Answered:
    """An established call: where to send its RTP and with which payload type."""

    call_id: str
    rtp_address: tuple[str, int]
    payload_type: int
    answered_at: float  # time.monotonic() when the 200 OK arrived


class _Transport(SipTransport, asyncio.DatagramProtocol):
    """aiosipua's transport interface (`send`, `local_addr`) over a socket bound before use."""

    def __init__(self, sock: socket.socket, on_datagram: Callable[[bytes, tuple[str, int]], None]) -> None:
        SipTransport.__init__(self, local_addr=sock.getsockname()[:2])
        self._sock = sock
        self._on_datagram = on_datagram
        self._udp: asyncio.DatagramTransport | None = None

    async def start(self) -> None:
        self._udp, _ = await asyncio.get_running_loop().create_datagram_endpoint(lambda: self, sock=self._sock)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self._on_datagram(data, (str(addr[0]), int(addr[1])))

    def send(self, message: SipRequest | SipResponse, addr: tuple[str, int]) -> None:
        if self._udp is not None:
            self._udp.sendto(bytes(message), addr)

    async def stop(self) -> None:
        if self._udp is not None:
            self._udp.close()
            self._udp = None


@dataclass
class _Invite:
    call: OutgoingCall
    outcome: asyncio.Future[Answered]
    retransmission: asyncio.Task[None]


class SipCaller:
    """Outgoing calls to one SIP server (host, port) over one UDP socket; see the module docstring."""

    def __init__(
        self,
        target: tuple[str, int],
        local_host: str = "127.0.0.1",
        timers: SipTimers = SipTimers(),
        on_remote_hangup: Callable[[str], None] | None = None,
    ) -> None:
        self.target = target
        self._on_remote_hangup = on_remote_hangup
        self._local_host = local_host
        self._timers = timers
        self._transport: _Transport | None = None
        self._uac: SipUAC | None = None
        self._invites: dict[str, _Invite] = {}
        self._calls: dict[str, OutgoingCall] = {}  # answered, not yet hung up
        self._byes: dict[str, asyncio.Future[int]] = {}
        self.remote_hangups: set[str] = set()  # calls the server ended with its own BYE
        self.responses: Counter[str] = Counter()  # "INVITE 100", "BYE 200", ...: retransmissions show here
        self.malformed = 0  # datagrams the strict parser refused
        self.late_answers = 0  # 200 OKs after we had given up (hung up at once)

    async def start(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((self._local_host, 0))
        self._transport = _Transport(sock, self._on_datagram)
        await self._transport.start()
        self._uac = SipUAC(self._transport)

    async def close(self) -> None:
        for pending in self._invites.values():
            pending.retransmission.cancel()
        if self._transport is not None:
            await self._transport.stop()

    # -- calls ------------------------------------------------------------------------------
    async def invite(self, rtp_port: int, codec: str = "PCMU", user: str = "callgen") -> Answered:
        """INVITE with a PCMU or PCMA offer for `rtp_port` on our address; the answer, or `CallFailed`."""
        assert self._uac is not None and self._transport is not None
        host, port = self._transport.local_addr
        offer = build_sdp(host, rtp_port, PAYLOAD_TYPES[codec], codec, dtmf_payload_type=TELEPHONE_EVENT_PT)
        call = self._uac.send_invite(f"sip:{user}@{host}:{port}", f"sip:asr@{self.target[0]}:{self.target[1]}", self.target, offer)
        outcome: asyncio.Future[Answered] = asyncio.get_running_loop().create_future()
        # Timer A doubles without the T2 cap (RFC 3261 §17.1.1.2): T2 = 64*T1 lifts it.
        timer_a = SipTimers(t1_s=self._timers.t1_s, t2_s=self._timers.give_up_s)
        retransmission = retransmit(
            lambda: self._send(call.invite),
            timer_a,
            on_give_up=lambda: _fail(outcome, CallFailed("no response (Timer B)")),
        )
        self._invites[call.call_id] = _Invite(call, outcome, retransmission)
        try:
            # After a provisional response only the final one is awaited; 64*T1 bounds that too.
            return await asyncio.wait_for(outcome, self._timers.give_up_s + 1)
        except TimeoutError:
            raise CallFailed("no final response") from None
        finally:
            retransmission.cancel()
            await asyncio.gather(retransmission, return_exceptions=True)
            self._invites.pop(call.call_id, None)

    async def hang_up(self, call_id: str) -> None:
        """BYE an answered call and wait for its final response; `CallFailed` if none or not 2xx.

        A call the server already ended (its BYE reached us) needs no BYE: returns at once.
        """
        assert self._uac is not None and self._transport is not None
        call = self._calls.pop(call_id, None)
        if call is None:
            if call_id in self.remote_hangups:
                return
            raise CallFailed("hang-up of an unknown call")
        bye = self._uac.send_bye(call.dialog, self.target)
        answered: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._byes[call_id] = answered
        retransmission = retransmit(
            lambda: self._send(bye),
            self._timers,
            on_give_up=lambda: _fail(answered, CallFailed("BYE unanswered (Timer F)")),
        )
        try:
            status = await answered
        finally:
            retransmission.cancel()
            await asyncio.gather(retransmission, return_exceptions=True)
            self._byes.pop(call_id, None)
        if not 200 <= status < 300:
            raise CallFailed(f"BYE answered {status}")

    def _send(self, message: SipRequest) -> None:
        assert self._transport is not None
        self._transport.send(message, self.target)

    # -- receiving --------------------------------------------------------------------------
    def _on_datagram(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            message = parse(data)
        except MalformedMessage:
            self.malformed += 1
            return
        if isinstance(message, SipResponse):
            self._on_response(message, addr)
        else:
            self._on_request(message, addr)

    def _on_response(self, response: SipResponse, addr: tuple[str, int]) -> None:
        call_id = response.call_id or ""
        method = response.cseq.method.upper() if response.cseq else ""
        status = response.status_code
        self.responses[f"{method} {status}"] += 1
        if method == "BYE":
            answered = self._byes.get(call_id)
            if answered is not None and status >= 200 and not answered.done():
                answered.set_result(status)
            return
        pending = self._invites.get(call_id)
        if method != "INVITE":
            return
        if pending is not None:
            pending.retransmission.cancel()  # any response ends Timer A (RFC 3261 §17.1.1.2)
        if status >= 300:
            self._ack_failure(response)
        assert self._uac is not None
        self._uac.handle_response(response, addr)  # 2xx: dialog confirmed, SDP parsed, ACK sent
        if pending is None and 200 <= status < 300 and call_id not in self._calls:
            self._hang_up_late_answer(call_id)
        if pending is None or pending.outcome.done() or status < 200:
            return
        if status >= 300:
            retry_after = response.headers.get_first("retry-after")
            digits = (retry_after or "").split(";")[0].strip()
            pending.outcome.set_exception(CallFailed(f"{status} {response.reason_phrase}", int(digits) if digits.isdigit() else None))
            return
        try:
            pending.outcome.set_result(self._answered(pending.call))
        except CallFailed as failure:
            self._uac.send_bye(pending.call.dialog, self.target)  # an answered dialog we cannot use
            pending.outcome.set_exception(failure)
            return
        self._calls[call_id] = pending.call

    def _hang_up_late_answer(self, call_id: str) -> None:
        """A 200 OK after we gave up on the INVITE: BYE it once (not awaited) rather than leave the
        server a call nobody streams to until its RTP timeout. Its retransmissions find no call."""
        assert self._uac is not None
        late = self._uac.get_call(call_id)
        if late is not None and late.dialog.state == DialogState.CONFIRMED:
            self._uac.send_bye(late.dialog, self.target)
            self.late_answers += 1

    def _answered(self, call: OutgoingCall) -> Answered:
        """Where the answer asks for RTP: its first audio m-line with a port, and the codec it kept."""
        answer = call.sdp_answer
        media = next((m for m in answer.media if m.media == "audio" and m.port), None) if answer else None
        connection = (media.connection or answer.connection) if media and answer else None
        if media is None or connection is None:
            raise CallFailed("answer has no audio stream")
        offered = {codec.payload_type for codec in call.sdp_offer.media[0].codecs} if call.sdp_offer else set()
        kept = [codec.payload_type for codec in media.codecs if codec.payload_type in offered and codec.payload_type != TELEPHONE_EVENT_PT]
        if not kept:
            raise CallFailed("answer kept no offered codec")
        return Answered(call.call_id, (connection.address, media.port), kept[0], time.monotonic())

    def _ack_failure(self, response: SipResponse) -> None:
        """ACK a non-2xx final (RFC 3261 §17.1.1.3): the INVITE's Request-URI, top Via, From and
        CSeq number, the response's To (with the server's tag)."""
        pending = self._invites.get(response.call_id or "")
        if pending is None:
            return  # a retransmission after we gave up: the server stops at its Timer H
        invite = pending.call.invite
        ack = SipRequest(method="ACK", uri=invite.uri)
        ack.headers.append("Via", invite.headers.get("via")[0])
        for name in ("From", "Call-ID"):
            ack.headers.set_single(name, invite.headers.get_first(name) or "")
        ack.headers.set_single("To", response.headers.get_first("to") or "")
        ack.headers.set_single("CSeq", f"{invite.cseq.seq if invite.cseq else 1} ACK")
        ack.headers.set_single("Max-Forwards", "70")
        self._send(ack)

    def _on_request(self, request: SipRequest, addr: tuple[str, int]) -> None:
        """The server hung up (BYE) or probes us (OPTIONS): 200; anything else but ACK: 405."""
        if request.method == "ACK" or self._transport is None:
            return
        if request.method == "BYE":
            call_id = request.call_id or ""
            if self._calls.pop(call_id, None) is not None:
                self.remote_hangups.add(call_id)
                if self._on_remote_hangup is not None:
                    self._on_remote_hangup(call_id)
            status = 200
        else:
            status = 200 if request.method == "OPTIONS" else 405
        self._transport.send(build_response(request, status, headers={"Allow": "ACK, BYE, OPTIONS"}), addr)
