"""Server transactions and retransmission timers (RFC 3261 §17).

Written here because aiosipua's transaction layer only tracks state: a retransmitted INVITE
reaches its UAS as a second call, and its timers are module constants. What we need is small:
remember the last response of each request so a retransmission gets it again, retransmit over
UDP with T1 doubling to T2 until acknowledged, and give up after 64*T1.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from aiosipua import SipRequest, parse_via

from asr_stream.sip.transport import Peer

RFC3261_BRANCH_COOKIE = "z9hG4bK"


@dataclass(frozen=True)
class SipTimers:
    """RFC 3261 timer base values; tests shrink them to keep timeouts fast."""

    t1_s: float = 0.5  # round-trip estimate: first retransmission interval
    t2_s: float = 4.0  # retransmission interval cap

    @property
    def give_up_s(self) -> float:
        """64*T1: Timer B/F/H/J, how long an unacknowledged exchange is retried or remembered."""
        return 64 * self.t1_s


def retransmit(send: Callable[[], object] | None, timers: SipTimers, on_give_up: Callable[[], object] | None = None) -> asyncio.Task[None]:
    """Call `send` at T1, 2*T1, ... (capped at T2) until cancelled; `on_give_up` after 64*T1.

    `send` is None on reliable transports (TCP): nothing is repeated, but the 64*T1 deadline
    for the acknowledgement still applies (RFC 3261 §17.2.1, Timer H).
    """

    async def loop() -> None:
        interval, elapsed = timers.t1_s, 0.0
        while elapsed + interval <= timers.give_up_s:
            await asyncio.sleep(interval)
            elapsed += interval
            if send is not None:
                send()
            interval = min(interval * 2, timers.t2_s)
        await asyncio.sleep(timers.give_up_s - elapsed)
        if on_give_up is not None:
            on_give_up()

    return asyncio.get_running_loop().create_task(loop())


TransactionKey = tuple[str, str, str]


def transaction_key(request: SipRequest, method: str | None = None) -> TransactionKey:
    """Branch, sent-by and method of the top Via (RFC 3261 §17.2.3).

    `method` overrides the request's: an ACK for a non-2xx response, and a CANCEL, are matched
    against the INVITE transaction they refer to. Pre-RFC 3261 peers (no magic cookie) get the
    whole top Via plus Call-ID and CSeq as their key, which is what RFC 2543 matching compares.
    """
    top = request.headers.get("via")[0]
    via = parse_via(top)
    branch = via.branch or ""
    if not branch.startswith(RFC3261_BRANCH_COOKIE):
        branch = f"{top}|{request.call_id}|{(request.headers.get_first('cseq') or '').split()[0]}"
    return (branch, f"{via.host}:{via.port or ''}", method or request.method)


@dataclass
class ServerTransaction:
    """One request we are answering, and the last thing we answered it with."""

    request: SipRequest
    peer: Peer
    last_response: bytes | None = None
    final_status: int | None = None
    retransmission: asyncio.Task[None] | None = field(default=None, repr=False)

    def stop_retransmitting(self) -> None:
        """The peer acknowledged our final response (or we are tearing down)."""
        if self.retransmission is not None:
            self.retransmission.cancel()
            self.retransmission = None


class ServerTransactions:
    """Live server transactions by key; each is forgotten 64*T1 after its final response."""

    def __init__(self, timers: SipTimers) -> None:
        self._timers = timers
        self._by_key: dict[TransactionKey, ServerTransaction] = {}

    def __len__(self) -> int:
        return len(self._by_key)

    def find(self, key: TransactionKey) -> ServerTransaction | None:
        return self._by_key.get(key)

    def create(self, key: TransactionKey, request: SipRequest, peer: Peer) -> ServerTransaction:
        transaction = ServerTransaction(request, peer)
        self._by_key[key] = transaction
        return transaction

    def finished(self, key: TransactionKey) -> None:
        """Keep absorbing retransmissions for 64*T1 after the final response, then forget it."""
        asyncio.get_running_loop().call_later(self._timers.give_up_s, self._forget, key)

    def _forget(self, key: TransactionKey) -> None:
        transaction = self._by_key.pop(key, None)
        if transaction is not None:
            transaction.stop_retransmitting()

    def clear(self) -> None:
        """Stop every retransmission (server shutdown)."""
        for transaction in self._by_key.values():
            transaction.stop_retransmitting()
        self._by_key.clear()
