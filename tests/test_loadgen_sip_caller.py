"""The load generator's SIP UAC against the daemon's real SIP server, over real UDP sockets.

What `SipCaller` adds to aiosipua's `SipUAC` is tested here: INVITE retransmission (Timer A), the
ACK of an error response, the failure reason with its Retry-After, BYE with its 200, and a BYE
from the server. The server runs with the fast timers of tests/test_sip_server.py.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest
from test_sip_server import FAST_TIMERS, RecordingHandler, RefusingHandler, serving, wait_until

from asr_stream.devtools.loadgen.sip_caller import CallFailed, SipCaller
from asr_stream.rtp.ports import PortAllocator
from asr_stream.sip.call import EndReason
from asr_stream.sip.server import SipServer, SipServerConfig

pytestmark = pytest.mark.timeout(30)


def ports() -> PortAllocator:
    return PortAllocator("127.0.0.1", 32000, 32999)


@pytest.fixture
async def caller_for() -> AsyncIterator:
    callers: list[SipCaller] = []

    async def start(port: int, **options) -> SipCaller:
        caller = SipCaller(("127.0.0.1", port), **options)
        await caller.start()
        callers.append(caller)
        return caller

    yield start
    for caller in callers:
        await caller.close()


def free_udp_and_tcp_port() -> int:
    """A port nobody uses for UDP or TCP right now (the server binds both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port")


async def test_an_answered_call_gets_rtp_address_and_hangs_up_with_bye(caller_for) -> None:
    handler = RecordingHandler(ports())
    async with serving(handler) as server:
        caller = await caller_for(server.port)
        answer = await caller.invite(rtp_port=40000, codec="PCMA")
        call = handler.invites[0]
        assert call.channels[0].codec.name == "PCMA" and call.channels[0].remote_port == 40000
        assert answer.payload_type == 8 and answer.rtp_address[0] == "127.0.0.1" and 32000 <= answer.rtp_address[1] <= 32999
        await caller.hang_up(answer.call_id)
        await wait_until(lambda: handler.ended == [(handler.invites[0], EndReason.BYE)])
        assert caller.responses["BYE 200"] == 1


async def test_a_refused_call_fails_with_its_reason_and_retry_after_and_the_refusal_is_acknowledged(caller_for) -> None:
    async with serving(RefusingHandler(ports())) as server:
        caller = await caller_for(server.port)
        with pytest.raises(CallFailed) as failure:
            await caller.invite(rtp_port=40000)
        assert failure.value.reason == "503 Service Unavailable"
        assert failure.value.retry_after_s == 7
        # Unacknowledged, the server would repeat its 503 every 50-400 ms for 3.2 s; a stalled runner may
        # let one repeat in before the ACK, so what must hold is that the repeats stop.
        await asyncio.sleep(0.5)
        seen = caller.responses["INVITE 503"]
        await asyncio.sleep(1.0)
        assert 1 <= seen == caller.responses["INVITE 503"] <= 2
        assert server.stats.calls_rejected[503] == 1


async def test_the_invite_is_retransmitted_until_the_server_is_there(caller_for) -> None:
    port = free_udp_and_tcp_port()
    caller = await caller_for(port, timers=FAST_TIMERS)
    invite = asyncio.create_task(caller.invite(rtp_port=40000))
    await asyncio.sleep(0.3)  # the first INVITEs (0, 50, 150 ms) go to a closed port
    handler = RecordingHandler(ports())
    server = SipServer(handler, SipServerConfig(host="127.0.0.1", port=port, timers=FAST_TIMERS))
    await server.start()
    try:
        answer = await asyncio.wait_for(invite, 5)
        assert len(handler.invites) == 1, "retransmissions of one INVITE must make one call"
        await caller.hang_up(answer.call_id)
    finally:
        await server.stop(bye_grace_s=0.5)


async def test_a_bye_from_the_server_is_answered_and_reported(caller_for) -> None:
    handler = RecordingHandler(ports())
    hung_up: list[str] = []
    async with serving(handler) as server:
        caller = await caller_for(server.port, on_remote_hangup=hung_up.append)
        answer = await caller.invite(rtp_port=40000)
        assert await server.end_call(answer.call_id)
        await wait_until(lambda: hung_up == [answer.call_id])
        assert answer.call_id in caller.remote_hangups
        await caller.hang_up(answer.call_id)  # nothing left to hang up: returns at once
        assert caller.responses["BYE 200"] == 0
        await wait_until(lambda: len(handler.ended) == 1)
        assert handler.ended[0][1] == EndReason.LOCAL_BYE
