"""The SIP user-agent server: takes calls from SBCs, PBXs and SIPREC recorders.

How the daemon uses it
----------------------
    server = SipServer(handler, SipServerConfig(host="0.0.0.0", port=5060))
    await server.start()              # binds UDP and TCP on the same port
    ...
    server.set_saturated(5)           # new INVITEs get 503 + Retry-After: 5 ...
    server.set_saturated(None)        # ... until this
    await server.end_call(call_id, EndReason.RTP_TIMEOUT)   # we hang up: BYE
    await server.stop()               # BYE every call (reason "shutdown"), close sockets

The handler (`asr_stream.sip.call.CallHandler`, three coroutines) is called like this:

* `on_invite(call) -> MediaAnswer` for each new INVITE whose offer has at least one audio stream
  we can decode. `call.channels` lists the streams to receive: one labelled "caller" for a plain
  call, one per recorded participant for SIPREC. The handler binds an RTP receiver per channel
  and returns their addresses in the same order; the server answers 200 OK with SDP `recvonly`.
  Raise `SipReject(status, reason, retry_after)` to refuse the call instead.
* `on_reinvite(call)` when the far end changes an established call (hold: channels become
  "inactive"; resume; codec or remote address change). Local ports stay those of `on_invite`.
  Raise `SipReject` to refuse the change; the call then continues as before.
* `on_call_ended(call, reason)` exactly once for every call `on_invite` accepted, including
  one cancelled while `on_invite` was running (reason "cancel"). Reasons: `EndReason`.

Handlers run on the server's event loop and must not block it. An exception from a handler
never reaches the network code: `on_invite` failing answers 500, the others are logged.

What the server does by itself (RFC 3261/3264/7866): 100 Trying; 2xx retransmission until ACK
(T1 doubling to T2, ending the call with "ack_timeout" after 64*T1); retransmitted requests get
the same response; CANCEL -> 200 + 487; BYE -> 200; OPTIONS -> 200; other methods -> 405 with
Allow; unparseable requests -> 400 when a response can be addressed, otherwise dropped and
counted in `stats`; offers without a usable audio codec -> 488.

Access control (docs/security.md, "SIP"): with `allowed_sources` set, requests from other
addresses get 403 (nothing else: no transaction, no handler) and TCP connections from them are
closed at accept; with `auth` set, the listed methods need digest credentials (401/407 first).
Both run before any handler. An outsider's request leaves no state behind; a challenged one
keeps only its transaction, to repeat the 401 to retransmissions and until its ACK.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import ipaddress
import logging
import secrets
from collections import Counter
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from aiosipua import Dialog, SipRequest, SipResponse, create_dialog_from_request, parse_address, parse_uri, parse_via
from aiosipua.dialog import dialog_matches, remote_cseq_valid

from asr_stream.sip.access import SourceFilter
from asr_stream.sip.call import Call, CallHandler, EndReason, LocalMedia, SipReject
from asr_stream.sip.digest import DigestAuthConfig, DigestAuthenticator, Verdict
from asr_stream.sip.message import MalformedMessage, build_response, parse
from asr_stream.sip.offer import Offer, UnsupportedBody, describe_call, read_offer, restrict_to
from asr_stream.sip.sdp import NotAcceptable, SdpOrigin, build_answer
from asr_stream.sip.transaction import ServerTransaction, ServerTransactions, SipTimers, retransmit, transaction_key
from asr_stream.sip.transport import Peer, SipTransports, TransportLimits

log = logging.getLogger(__name__)

ALLOW = "INVITE, ACK, BYE, CANCEL, OPTIONS"
ACCEPTED_BODIES = "application/sdp, multipart/mixed, application/rs-metadata+xml"


@dataclass(frozen=True)
class SipServerConfig:
    """Where to listen and how to behave; `timers` are shrunk by tests."""

    host: str = "0.0.0.0"
    port: int = 5060  # 0: let the OS choose (tests); `SipServer.port` tells which
    advertised_address: str | None = None  # our address in Contact/SDP when `host` is a wildcard
    accepted_codecs: tuple[str, ...] = ("PCMU", "PCMA")  # add "opus" where the RTP stage decodes it
    max_calls: int = 200  # beyond this, 503 with Retry-After: retry_after_s
    retry_after_s: int = 5
    timers: SipTimers = SipTimers()
    limits: TransportLimits = TransportLimits()
    user_agent: str = "asr-stream"
    allowed_sources: tuple[str, ...] = ()  # CIDRs (IPv4/IPv6) that may send SIP; empty: anyone
    auth: DigestAuthConfig | None = None  # digest-challenge these requests; None: no authentication


@dataclass
class SipStats:
    """Counters for the metrics endpoint; nothing the network sends raises, it lands here."""

    received: int = 0
    dropped: Counter[str] = field(default_factory=Counter)  # reason -> count
    bad_requests: int = 0  # answered 400
    calls_answered: int = 0
    calls_rejected: Counter[int] = field(default_factory=Counter)  # status -> count
    calls_ended: Counter[str] = field(default_factory=Counter)  # EndReason -> count
    forbidden_sources: int = 0  # messages and TCP connections from outside `allowed_sources`
    auth: Counter[str] = field(default_factory=Counter)  # digest `Verdict` -> count


@dataclass
class _Session:
    """The server's state for one call, from INVITE to its end."""

    call: Call
    dialog: Dialog
    peer: Peer
    origin: SdpOrigin
    local_media: dict[int, LocalMedia] = field(default_factory=dict)  # by m-line index
    last_answer: str = ""
    state: Literal["proceeding", "answered", "confirmed"] = "proceeding"
    ack_wait: asyncio.Task[None] | None = None

    def stop_waiting_for_ack(self) -> None:
        if self.ack_wait is not None:
            self.ack_wait.cancel()
            self.ack_wait = None


class SipServer:
    """A SIP UAS on UDP and TCP that turns INVITEs into `Call`s for a `CallHandler`."""

    def __init__(self, handler: CallHandler, config: SipServerConfig = SipServerConfig()) -> None:
        self._handler = handler
        self._config = config
        self._sources = SourceFilter(config.allowed_sources)
        self._auth = DigestAuthenticator(config.auth) if config.auth is not None else None
        self._transports = SipTransports(config.host, config.port, self._on_bytes, self._count_drop, config.limits, self._admit_source)
        self._transactions = ServerTransactions(config.timers)
        self._sessions: dict[str, _Session] = {}
        self._bye_retransmissions: dict[str, asyncio.Task[None]] = {}  # by Via branch
        self._tasks: set[asyncio.Task[Any]] = set()
        self._retry_after_s: int | None = None
        self._stopping = False
        self.stats = SipStats()

    @property
    def port(self) -> int:
        """The port bound for both UDP and TCP."""
        return self._transports.port

    @property
    def calls(self) -> Mapping[str, Call]:
        """Calls answered or being answered, by Call-ID (a snapshot)."""
        return {call_id: session.call for call_id, session in self._sessions.items()}

    async def start(self) -> None:
        await self._transports.start()
        log.info("SIP listening on %s:%d (udp, tcp)", self._config.host, self.port)

    def set_saturated(self, retry_after_s: int | None) -> None:
        """While set, new INVITEs get 503 with this Retry-After; None accepts calls again."""
        self._retry_after_s = retry_after_s

    async def end_call(self, call_id: str, reason: EndReason = EndReason.LOCAL_BYE) -> bool:
        """Hang up an answered call (BYE through its route set); False if there is no such call."""
        session = self._sessions.get(call_id)
        if session is None or session.state == "proceeding":
            return False
        await self._end(session, reason, send_bye=True)
        return True

    async def stop(self, bye_grace_s: float = 2.0) -> None:
        """BYE every answered call, refuse new ones, close the sockets.

        Waits up to `bye_grace_s` for the BYEs to be answered, so that a peer on a lossy link
        still learns that its call ended before our socket goes away.
        """
        self._stopping = True
        for session in list(self._sessions.values()):
            if session.state != "proceeding":
                await self._end(session, EndReason.SHUTDOWN, send_bye=True)
        if self._bye_retransmissions:
            await asyncio.wait(list(self._bye_retransmissions.values()), timeout=bye_grace_s)
        for task in [*self._tasks, *self._bye_retransmissions.values()]:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._transactions.clear()
        await self._transports.close()

    # -- receiving ---------------------------------------------------------------------------

    def _count_drop(self, reason: str) -> None:
        self.stats.dropped[reason] += 1

    def _admit_source(self, host: str) -> bool:
        if self._sources.allows(host):
            return True
        self.stats.forbidden_sources += 1
        return False

    def _on_bytes(self, data: bytes, peer: Peer) -> None:
        self.stats.received += 1
        if peer.transport == "udp" and not self._admit_source(peer.address[0]):
            self._forbid(data, peer)
            return
        try:
            message = parse(data)
        except MalformedMessage as exc:
            if exc.request is None:
                self._count_drop("unaddressable")
            else:
                self.stats.bad_requests += 1
                self._send(build_response(exc.request, 400, f"Bad Request ({exc.reason})"), peer)
            return
        try:
            if isinstance(message, SipResponse):
                self._on_response(message)
            else:
                self._on_request(message, peer)
        except Exception:  # a bug must cost one message, never the server
            log.exception("SIP message from %s could not be handled", peer.address)
            self._count_drop("internal_error")

    def _forbid(self, data: bytes, peer: Peer) -> None:
        """403 to a request from outside the allow-list, statelessly; anything else is dropped.

        No transaction is kept, so an outsider's traffic costs no memory; an ACK is never answered.
        """
        try:
            message = parse(data)
        except MalformedMessage:
            return
        if isinstance(message, SipRequest) and message.method != "ACK":
            self._send(build_response(message, 403, "Forbidden (source not allowed)"), peer)

    def _on_response(self, response: SipResponse) -> None:
        """The only requests we send are BYEs: any response ends their retransmission."""
        branch = parse_via(response.headers.get("via")[0]).branch or ""
        task = self._bye_retransmissions.pop(branch, None)
        if task is None:
            self._count_drop("stray_response")
        elif response.status_code >= 200:
            task.cancel()
        else:
            self._bye_retransmissions[branch] = task  # provisional: keep waiting for the final

    def _on_request(self, request: SipRequest, peer: Peer) -> None:
        if request.method == "ACK":
            self._on_ack(request)
            return
        key = transaction_key(request)
        existing = self._transactions.find(key)
        if existing is not None:  # a retransmission: repeat ourselves, nothing more
            if existing.last_response is not None:
                self._transports.send(existing.last_response, peer)
            return
        transaction = self._transactions.create(key, request, peer)
        if not self._authenticated(transaction):
            return
        to_tag = parse_address(request.headers.get_first("to") or "").tag
        if request.method == "INVITE" and to_tag is None:
            self._spawn(self._new_call(request, peer, transaction))
        elif request.method == "INVITE":
            self._spawn(self._reinvite(request, transaction))
        elif request.method == "CANCEL":
            self._on_cancel(request, transaction)
        elif request.method == "BYE":
            self._on_bye(request, transaction)
        elif request.method == "OPTIONS":
            self._respond(transaction, 200, headers={"Allow": ALLOW, "Accept": ACCEPTED_BODIES})
        else:
            self._respond(transaction, 405, headers={"Allow": ALLOW})

    def _authenticated(self, transaction: ServerTransaction) -> bool:
        """Whether the request may be served; if not, it has been challenged (401/407).

        A wrong password gets a fresh challenge, not 403: RFC 7235 §3.1 makes a 401 to a request
        with credentials mean "these credentials were refused", and UACs stop retrying on it.
        """
        request = transaction.request
        if self._auth is None or request.method not in self._auth.config.methods:
            return True
        header_values = request.headers.get(self._auth.credentials_header.lower())
        result = self._auth.verify(request.method, header_values)
        self.stats.auth[result.verdict] += 1
        if result.verdict == Verdict.OK:
            return True
        if result.verdict in (Verdict.FAILED, Verdict.REPLAYED):
            peer = transaction.peer.address[0]
            log.warning("SIP %s from %s: digest %s for user %r", request.method, peer, result.verdict, result.username)
        challenges = self._auth.challenges(stale=result.verdict in (Verdict.STALE, Verdict.REPLAYED))
        self._respond(transaction, self._auth.status, headers={self._auth.challenge_header: challenges})
        return False

    def _on_ack(self, request: SipRequest) -> None:
        """ACK of a 2xx belongs to the dialog; ACK of an error response to the INVITE transaction."""
        session = self._sessions.get(request.call_id or "")
        if session is not None and dialog_matches(session.dialog, request) and session.state == "answered":
            session.stop_waiting_for_ack()
            session.state = "confirmed"
            return
        transaction = self._transactions.find(transaction_key(request, "INVITE"))
        if transaction is not None:
            transaction.stop_retransmitting()

    def _on_cancel(self, request: SipRequest, transaction: ServerTransaction) -> None:
        invite = self._transactions.find(transaction_key(request, "INVITE"))
        if invite is None:
            self._respond(transaction, 481)
            return
        self._respond(transaction, 200)
        if invite.final_status is None:  # still ringing: the INVITE ends with 487 (RFC 3261 §9.2)
            session = self._sessions.get(request.call_id or "")
            self._respond(invite, 487, to_tag=session.dialog.local_tag if session else None)
            if session is not None and session.state == "proceeding":
                del self._sessions[session.call.call_id]

    def _on_bye(self, request: SipRequest, transaction: ServerTransaction) -> None:
        session = self._sessions.get(request.call_id or "")
        if session is None or session.state == "proceeding" or not dialog_matches(session.dialog, request):
            self._respond(transaction, 481)
            return
        self._respond(transaction, 200)
        self._spawn(self._end(session, EndReason.BYE, send_bye=False))

    # -- INVITE ------------------------------------------------------------------------------

    async def _new_call(self, request: SipRequest, peer: Peer, transaction: ServerTransaction) -> None:
        if transaction.final_status is not None:  # cancelled before this task even started
            return
        self._respond(transaction, 100)
        call_id = request.call_id or ""
        if call_id in self._sessions:  # same Call-ID, new branch, no To tag: a merged request
            self._respond(transaction, 482)
            return
        retry_after = self._admission_retry_after()
        if retry_after is not None:
            self._respond(transaction, 503, headers={"Retry-After": str(retry_after)})
            return
        offer = self._negotiate_or_reject(request, transaction)
        if offer is None:
            return
        dialog = create_dialog_from_request(request)
        origin = SdpOrigin(session_id=secrets.randbelow(2**62), version=1, address=self._local_address(request))
        session = _Session(describe_call(request, peer, offer), dialog, peer, origin)
        self._sessions[call_id] = session
        try:
            answer = await self._handler.on_invite(session.call)
            if len(answer.channels) != len(session.call.channels):
                raise ValueError(f"{len(answer.channels)} local media for {len(session.call.channels)} channels")
        except SipReject as reject:
            self._sessions.pop(call_id, None)
            headers = {"Retry-After": str(reject.retry_after)} if reject.retry_after is not None else None
            self._respond(transaction, reject.status, reject.reason, headers=headers, to_tag=dialog.local_tag)
            return
        except Exception:
            log.exception("on_invite failed for %s", call_id)
            self._sessions.pop(call_id, None)
            self._respond(transaction, 500, to_tag=dialog.local_tag)
            return
        if transaction.final_status is not None:  # CANCEL won the race against the handler
            self.stats.calls_ended[EndReason.CANCEL] += 1
            await self._notify_ended(session.call, EndReason.CANCEL)
            return
        session.local_media = {
            channel.index: self._advertised(media, origin.address)
            for channel, media in zip(session.call.channels, answer.channels, strict=True)
        }
        self.stats.calls_answered += 1
        log.info("call %s answered: %s", call_id, ", ".join(c.label for c in session.call.channels))
        self._answer(session, offer, transaction)

    async def _reinvite(self, request: SipRequest, transaction: ServerTransaction) -> None:
        session = self._sessions.get(request.call_id or "")
        if session is None or not dialog_matches(session.dialog, request):
            self._respond(transaction, 481)
            return
        if not remote_cseq_valid(session.dialog, request):
            self._respond(transaction, 500, "Out of order CSeq")
            return
        if not request.body:  # an offerless re-INVITE (session refresh): offer what we have
            self._send_2xx(session, transaction, session.last_answer)
            return
        labels = {channel.index: channel.label for channel in session.call.channels}
        offer = self._negotiate_or_reject(request, transaction, labels)
        if offer is None:
            return
        call = dataclasses.replace(session.call, channels=describe_call(request, session.peer, offer).channels)
        try:
            await self._handler.on_reinvite(call)
        except SipReject as reject:
            self._respond(transaction, reject.status, reject.reason)
            return
        except Exception:
            log.exception("on_reinvite failed for %s", call.call_id)
            self._respond(transaction, 500)
            return
        session.call = call
        session.origin = dataclasses.replace(session.origin, version=session.origin.version + 1)
        self._answer(session, offer, transaction)

    def _negotiate_or_reject(
        self, request: SipRequest, transaction: ServerTransaction, labels: Mapping[int, str] | None = None
    ) -> Offer | None:
        """The offer we can accept, or None after answering 415/400/488."""
        try:
            offer = read_offer(request, self._config.accepted_codecs)
            if labels is not None:
                offer = restrict_to(offer, labels)
                if not offer.media:
                    raise NotAcceptable("re-offer drops every channel of the call")
            return offer
        except UnsupportedBody as exc:
            self._respond(transaction, 415, headers={"Accept": ACCEPTED_BODIES, "Warning": f'399 - "{exc}"'})
        except ValueError as exc:
            self._respond(transaction, 400, f"Bad Request ({exc})")
        except NotAcceptable as exc:
            self._respond(transaction, 488, headers={"Warning": f'304 - "{exc}"'})
        return None

    def _answer(self, session: _Session, offer: Offer, transaction: ServerTransaction) -> None:
        accepted = {media.index: (media, session.local_media[media.index]) for media in offer.media}
        session.last_answer = build_answer(offer.sdp, accepted, session.origin)
        self._send_2xx(session, transaction, session.last_answer)

    def _send_2xx(self, session: _Session, transaction: ServerTransaction, sdp: str) -> None:
        """200 OK, repeated over UDP until the ACK comes; without ACK the call ends (§13.3.1.4)."""
        response = build_response(
            transaction.request,
            200,
            to_tag=session.dialog.local_tag,
            headers={"Contact": self._contact(transaction.request, session.peer), "Allow": ALLOW},
            body=sdp.encode(),
            content_type="application/sdp",
        )
        data = self._respond_with(transaction, response)
        session.state = "answered"
        session.stop_waiting_for_ack()
        resend = functools.partial(self._transports.send, data, session.peer) if session.peer.transport == "udp" else None
        session.ack_wait = retransmit(resend, self._config.timers, functools.partial(self._ack_timed_out, session))

    def _ack_timed_out(self, session: _Session) -> None:
        self._spawn(self._end(session, EndReason.ACK_TIMEOUT, send_bye=True))

    def _admission_retry_after(self) -> int | None:
        if self._stopping:
            return self._config.retry_after_s
        if self._retry_after_s is not None:
            return self._retry_after_s
        answered = sum(1 for s in self._sessions.values() if s.state != "proceeding")
        if answered >= self._config.max_calls:
            return self._config.retry_after_s
        return None

    # -- ending calls ------------------------------------------------------------------------

    async def _end(self, session: _Session, reason: EndReason, *, send_bye: bool) -> None:
        if self._sessions.get(session.call.call_id) is not session:
            return  # already ended
        del self._sessions[session.call.call_id]
        session.stop_waiting_for_ack()
        if send_bye:
            self._send_bye(session, reason)
        self.stats.calls_ended[reason] += 1
        log.info("call %s ended: %s", session.call.call_id, reason)
        await self._notify_ended(session.call, reason)

    async def _notify_ended(self, call: Call, reason: EndReason) -> None:
        try:
            await self._handler.on_call_ended(call, reason)
        except Exception:
            log.exception("on_call_ended failed for %s", call.call_id)

    def _send_bye(self, session: _Session, reason: EndReason) -> None:
        """BYE with the dialog's CSeq and route set, retransmitted over UDP until answered."""
        destination = self._in_dialog_destination(session)
        local_host = session.origin.address
        bye = session.dialog.create_request("BYE", via_host=local_host, via_port=self.port, via_transport=destination.transport.upper())
        # RFC 3326: Q.850 cause 16 is "normal call clearing"; the text says why we cleared it.
        bye.headers.set_single("Reason", f'Q.850;cause=16;text="{reason}"')
        data = bytes(bye)
        branch = parse_via(bye.headers.get("via")[0]).branch or ""
        self._transports.send(data, destination)
        if destination.transport == "udp":
            resend = functools.partial(self._transports.send, data, destination)
            give_up = functools.partial(self._bye_retransmissions.pop, branch, None)
            self._bye_retransmissions[branch] = retransmit(resend, self._config.timers, give_up)

    def _in_dialog_destination(self, session: _Session) -> Peer:
        """The first Route's address when it is a literal IP over UDP; else where the INVITE came from.

        Sending to the INVITE's source rather than resolving the Contact is deliberate: behind
        an SBC or NAT the source is what is reachable, and it is what every SBC expects.
        """
        if session.peer.transport == "udp" and session.dialog.route_set:
            route = parse_address(session.dialog.route_set[0]).uri
            try:
                return Peer("udp", (str(ipaddress.ip_address(route.host.strip("[]"))), route.port or 5060))
            except ValueError:
                pass
        return session.peer

    # -- sending -----------------------------------------------------------------------------

    def _respond(
        self,
        transaction: ServerTransaction,
        status: int,
        reason: str | None = None,
        *,
        headers: Mapping[str, str | Sequence[str]] | None = None,
        to_tag: str | None = None,
    ) -> None:
        """Answer within a transaction; a final error to an INVITE is repeated until its ACK."""
        response = build_response(transaction.request, status, reason, headers=headers, to_tag=to_tag)
        data = self._respond_with(transaction, response)
        if status >= 300 and transaction.request.method == "INVITE":
            self.stats.calls_rejected[status] += 1
            if transaction.peer.transport == "udp":  # Timer G: repeat the error until its ACK
                resend = functools.partial(self._transports.send, data, transaction.peer)
                transaction.retransmission = retransmit(resend, self._config.timers)

    def _respond_with(self, transaction: ServerTransaction, response: SipResponse) -> bytes:
        """Send and remember a response; once a final one went out, the transaction is closed."""
        if transaction.final_status is not None and transaction.last_response is not None:
            return transaction.last_response
        response.headers.set_single("Server", self._config.user_agent)
        data = bytes(response)
        transaction.last_response = data
        if response.status_code >= 200 and transaction.final_status is None:
            transaction.final_status = response.status_code
            self._transactions.finished(transaction_key(transaction.request))
        self._transports.send(data, transaction.peer)
        return data

    def _send(self, response: SipResponse, peer: Peer) -> None:
        response.headers.set_single("Server", self._config.user_agent)
        self._transports.send(bytes(response), peer)

    def _local_address(self, request: SipRequest) -> str:
        """Our address as the peer should use it: configured, bound, or as the peer addressed us."""
        if self._config.advertised_address:
            return self._config.advertised_address
        if self._config.host not in ("0.0.0.0", "::"):
            return self._config.host
        return parse_uri(request.uri).host.strip("[]")

    def _advertised(self, media: LocalMedia, sip_address: str) -> LocalMedia:
        if media.address in ("0.0.0.0", "::"):
            return LocalMedia(sip_address, media.port)
        return media

    def _contact(self, request: SipRequest, peer: Peer) -> str:
        host = self._local_address(request)
        host = f"[{host}]" if ":" in host else host
        return f"<sip:{host}:{self.port};transport={peer.transport}>"

    def _spawn(self, coroutine: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task
