"""Issue 11's SIP defects, each reproduced on real sockets (raw UDP/TCP and SIPp) and shown fixed.

- a 30,000-character Call-ID reached the handler (and Kafka, and the log) whole;
- INVITEs never ACKed held the RTP range while legitimate calls got 503;
- one source could flood INVITEs unhindered;
- 1,024 silent TCP connections locked out all TCP signalling.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import time
from pathlib import Path

import pytest
from test_sip_server import (  # noqa: F401 (fixture)
    FAST_TIMERS,
    RAW_INVITE,
    SIPP,
    RecordingHandler,
    handler,
    run_sipp,
    serving,
    wait_until,
)

from asr_stream.rtp.ports import PortAllocator, PortPair, PortsExhausted
from asr_stream.sip.call import SipReject
from asr_stream.sip.ratelimit import InviteRateLimit, SourceRateLimiter
from asr_stream.sip.server import SipServer
from asr_stream.sip.transport import TransportLimits

pytestmark = [pytest.mark.skipif(SIPP is None, reason="SIPp (Debian sip-tester) is not installed"), pytest.mark.timeout(60)]

CORPUS = Path(__file__).parent / "malformed" / "sip"


def raw_invite(client: socket.socket, n: int, call_id: str | None = None) -> bytes:
    """RAW_INVITE as a new call: its own branch, tag and Call-ID, with Via/Contact at `client`."""
    port = str(client.getsockname()[1])
    text = (
        RAW_INVITE.replace("5999", port)
        .replace("z9hG4bK-retransmitted", f"z9hG4bK-flood-{n}")
        .replace("tag=retransmitted", f"tag=flood-{n}")
        .replace("retransmitted@127.0.0.1", call_id or f"flood-{n}@127.0.0.1")
    )
    return text.replace("\n", "\r\n").encode()


def finals_by_branch(client: socket.socket, count: int) -> dict[str, str]:
    """The first final response to each of `count` requests, keyed by Via branch (bounded by the socket timeout)."""
    finals: dict[str, str] = {}
    while len(finals) < count:
        data = client.recv(65536).decode(errors="replace")
        branch = re.search(r"branch=([^\s;]+)", data).group(1)  # type: ignore[union-attr]
        if not data.startswith("SIP/2.0 1"):
            finals.setdefault(branch, data)
    return finals


def udp_client(host: str = "127.0.0.1") -> socket.socket:
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind((host, 0))
    client.settimeout(3)
    return client


# -- field bounds ------------------------------------------------------------------------------


async def test_a_30000_character_call_id_is_refused_400_and_logged_clipped_once(handler: RecordingHandler, caplog) -> None:
    data = (CORPUS / "400-call-id-30000-chars.sip").read_bytes()
    async with serving(handler) as server:
        with udp_client() as client, caplog.at_level(logging.WARNING, logger="asr_stream.sip.server"):

            def exchange() -> bytes:
                client.sendto(data, ("127.0.0.1", server.port))
                return client.recv(65536)

            answers = [await asyncio.to_thread(exchange) for _ in range(20)]
    assert {answer.split(b"\r\n", 1)[0] for answer in answers} == {b"SIP/2.0 400 Bad Request (Call-ID longer than 255 characters)"}
    assert handler.invites == [] and server.stats.bad_requests == 20
    lines = [r.getMessage() for r in caplog.records if r.name == "asr_stream.sip.server" and r.levelno >= logging.WARNING]
    assert len(lines) == 1, lines  # one line for twenty, the rest counted into the next one
    assert len(lines[0]) < 400 and "…(+29880 chars)" in lines[0], lines[0]


def test_limits_are_named_in_the_reason_phrase_for_each_field() -> None:
    from asr_stream.sip.message import MalformedMessage, parse

    expected = {
        "400-from-uri-too-long.sip": "From URI longer than 512 characters",
        "400-display-name-too-long.sip": "From display name longer than 128 characters",
        "400-too-many-headers.sip": "more than 128 headers",
        "400-header-value-too-long.sip": "User-Agent header longer than 4096 characters",
        "400-request-uri-too-long.sip": "Request-URI longer than 512 characters",
    }
    for name, reason in expected.items():
        with pytest.raises(MalformedMessage) as refused:
            parse((CORPUS / name).read_bytes())
        assert refused.value.reason == reason and refused.value.request is not None


# -- per-source INVITE rate limit --------------------------------------------------------------


async def test_an_invite_flood_from_one_allowed_source_gets_503_retry_after_and_others_still_get_through(
    handler: RecordingHandler, tmp_path: Path
) -> None:
    limit = InviteRateLimit(per_second=1.0, burst=3)
    async with serving(handler, invite_rate_limit=limit, allowed_sources=("127.0.0.0/8",)) as server:
        with udp_client() as client:
            for n in range(6):
                client.sendto(raw_invite(client, n), ("127.0.0.1", server.port))
            finals = await asyncio.to_thread(finals_by_branch, client, 6)
        run = await run_sipp(server, tmp_path, local_ip="127.0.0.2")  # another gateway: its own bucket
        assert run.returncode == 0, run.explain()
    statuses = sorted(final.split(" ", 2)[1] for final in finals.values())
    assert statuses == ["200", "200", "200", "503", "503", "503"]
    refused = [final for final in finals.values() if final.startswith("SIP/2.0 503")]
    assert all("Retry-After: 1\r\n" in final and "rate limit" in final for final in refused), refused[0]
    assert server.stats.rate_limited == 3 and len(handler.invites) == 4


def test_the_rate_limiter_refills_and_keeps_bounded_memory() -> None:
    limiter = SourceRateLimiter(InviteRateLimit(per_second=10.0, burst=2, max_sources=3))
    assert [limiter.admit("10.0.0.1", 0.0) for _ in range(3)] == [None, None, 1]
    assert limiter.admit("10.0.0.1", 0.1) is None  # 0.1 s at 10/s: one token back
    for n in range(10):
        limiter.admit(f"10.0.1.{n}", 1.0)
    assert len(limiter) == 3


# -- dialogs that are never confirmed ----------------------------------------------------------


class PressureHandler(RecordingHandler):
    """Out of RTP ports, it releases the oldest unconfirmed call first (what the ingest does)."""

    server: SipServer

    async def allocate(self) -> PortPair:
        while True:
            try:
                return self.ports.allocate()
            except PortsExhausted as exhausted:
                if await self.server.release_oldest_unconfirmed() is None:
                    raise SipReject(503, "Service Unavailable", retry_after=1) from exhausted


def free_port_range(pairs: int) -> tuple[int, int]:
    """An even-aligned range of `pairs` RTP/RTCP pairs that is free right now (other suites share the host)."""
    for start in range(42000, 43000, 2 * pairs):
        probe = PortAllocator("127.0.0.1", start, start + 2 * pairs - 1)
        taken = []
        try:
            while len(taken) < pairs:
                taken.append(probe.allocate())
            return start, start + 2 * pairs - 1
        except PortsExhausted:
            continue
        finally:
            for pair in taken:
                probe.release(pair)
    raise AssertionError("no free port range")


async def test_unacked_invites_give_their_ports_to_a_real_call_under_pressure(tmp_path: Path) -> None:
    handler = PressureHandler(PortAllocator("127.0.0.1", *free_port_range(2)))
    async with serving(handler) as server:
        handler.server = server
        with udp_client() as client:
            for n in range(3):  # two take the range, the third finds nothing old enough to release
                client.sendto(raw_invite(client, n), ("127.0.0.1", server.port))
            finals = await asyncio.to_thread(finals_by_branch, client, 3)
            assert sorted(final.split(" ", 2)[1] for final in finals.values()) == ["200", "200", "503"]
            assert handler.ports.exhausted  # what /readyz and the saturation gauge read
            assert server.unconfirmed_calls() == ["flood-0@127.0.0.1", "flood-1@127.0.0.1"]
            await asyncio.sleep(4 * FAST_TIMERS.t1_s)  # old enough to be given up on
            run = await run_sipp(server, tmp_path, extra=("-d", "200"))
        assert run.returncode == 0, run.explain()
        await wait_until(lambda: len(handler.ended) >= 2)
    assert server.stats.unconfirmed_released == 1
    ended = {call.call_id: reason for call, reason in handler.ended}
    assert ended["flood-0@127.0.0.1"] == "ack_timeout"  # the oldest went first
    assert [call.call_id for call in handler.confirmed] == [handler.invites[-1].call_id]  # only the real call


async def test_a_bye_without_ack_confirms_the_dialog_before_ending_it(handler: RecordingHandler) -> None:
    async with serving(handler) as server:
        with udp_client() as client:
            client.sendto(raw_invite(client, 1), ("127.0.0.1", server.port))
            (ok,) = (await asyncio.to_thread(finals_by_branch, client, 1)).values()
            to = re.search(r"^To: (.*)\r$", ok, re.MULTILINE).group(1)  # type: ignore[union-attr]
            bye = (
                raw_invite(client, 1)
                .decode()
                .replace("INVITE sip:", "BYE sip:", 1)
                .replace("CSeq: 1 INVITE", "CSeq: 2 BYE")
                .replace("z9hG4bK-flood-1", "z9hG4bK-bye-1")
                .replace("To: <sip:asr@127.0.0.1>", f"To: {to}")
            )
            client.sendto(
                bye.split("\r\n\r\n", 1)[0].replace("Content-Length: 89", "Content-Length: 0").encode() + b"\r\n\r\n",
                ("127.0.0.1", server.port),
            )
            (answer,) = (await asyncio.to_thread(finals_by_branch, client, 1)).values()
        assert answer.startswith("SIP/2.0 200 OK") and "CSeq: 2 BYE" in answer
        await wait_until(lambda: len(handler.ended) == 1)
    assert [what for what, _ in handler.timeline] == ["invite", "confirmed", "ended:bye"]


# -- TCP connections ---------------------------------------------------------------------------


async def open_silent(count: int, port: int, host: str = "127.0.0.1") -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    connections = []
    for _ in range(count):
        connections.append(await asyncio.open_connection("127.0.0.1", port, local_addr=(host, 0)))
    return connections


async def closed_by_server(reader: asyncio.StreamReader, timeout_s: float = 3.0) -> bool:
    """Whether the server closes the connection within `timeout_s` (keep-alive pongs are skipped)."""
    try:
        return await asyncio.wait_for(reader.read(), timeout=timeout_s) in (b"", b"\r\n")
    except TimeoutError:
        return False


async def test_1024_silent_tcp_connections_no_longer_lock_out_a_tcp_call(handler: RecordingHandler, tmp_path: Path) -> None:
    async with serving(handler) as server:  # the default caps: 1,024 in all, 128 per source
        sources = [f"127.0.1.{n}" for n in range(1, 9)]  # 8 sources x 128: exactly the global cap
        silent = [c for host in sources for c in await open_silent(128, server.port, host)]
        await wait_until(lambda: server.tcp_connections == 1024)
        try:
            run = await run_sipp(server, tmp_path, transport="t1", extra=("-d", "200"))
            assert run.returncode == 0, run.explain()
            assert await closed_by_server(silent[0][0])  # the one idle the longest made room
            assert not await closed_by_server(silent[-1][0], timeout_s=0.2)
        finally:
            for _, writer in silent:
                writer.close()
    assert server.stats.dropped["tcp_evicted"] == 1 and server.stats.dropped["tcp_connection_limit"] == 0


async def test_a_source_at_its_connection_cap_evicts_its_own_idlest(handler: RecordingHandler, tmp_path: Path) -> None:
    limits = TransportLimits(max_tcp_connections_per_source=5)
    async with serving(handler, limits=limits) as server:
        other = await open_silent(1, server.port, "127.0.0.3")
        mine = await open_silent(5, server.port)
        try:
            run = await run_sipp(server, tmp_path, transport="t1")
            assert run.returncode == 0, run.explain()
            assert await closed_by_server(mine[0][0])
            assert not await closed_by_server(other[0][0], timeout_s=0.2)  # older, but another source's
        finally:
            for _, writer in other + mine:
                writer.close()


async def test_idle_tcp_connections_are_closed_but_not_one_carrying_a_call(handler: RecordingHandler, tmp_path: Path) -> None:
    # SIPp connects about a second before it sends its INVITE (more on a loaded runner), hence 3 s here.
    limits = TransportLimits(tcp_idle_timeout_s=3.0)
    async with serving(handler, limits=limits) as server:
        (silent, pinging) = await open_silent(2, server.port)
        pinging[1].write(b"\r\n\r\n")  # keep-alives are not messages: they do not keep it open
        started = time.monotonic()
        # The call lasts 6 s with no SIP in between; its BYE must still travel on its connection.
        run, closed = await asyncio.gather(
            run_sipp(server, tmp_path, transport="t1", extra=("-d", "6000")),
            asyncio.gather(closed_by_server(silent[0], 8.0), closed_by_server(pinging[0], 8.0)),
        )
        assert run.returncode == 0, run.explain()
        assert closed == [True, True] and time.monotonic() - started >= 3.0
        silent[1].close()
        pinging[1].close()
    assert handler.ended[0][1] == "bye" and server.stats.dropped["tcp_idle_timeout"] >= 2
