"""The SIP server against real SIPp processes (and raw sockets for the malformed corpus).

Every test runs a `SipServer` on 127.0.0.1 with an OS-chosen port and a handler that binds real
RTP ports with the RTP stage's allocator, then drives it with `/usr/bin/sipp` scenarios from
`tests/sipp/`. Timers are shrunk (T1 = 50 ms, so 64*T1 = 3.2 s) to keep timeouts fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from asr_stream.devtools import sipp
from asr_stream.devtools.sipp import SippRun
from asr_stream.rtp.ports import PortAllocator, PortPair
from asr_stream.sip.call import Call, EndReason, LocalMedia, MediaAnswer, SipReject
from asr_stream.sip.server import SipServer, SipServerConfig
from asr_stream.sip.transaction import SipTimers

SIPP = shutil.which("sipp")
SCENARIOS = Path(__file__).parent / "sipp"
CORPUS = Path(__file__).parent / "malformed" / "sip"
FAST_TIMERS = SipTimers(t1_s=0.05, t2_s=0.4)

pytestmark = [pytest.mark.skipif(SIPP is None, reason="SIPp (Debian sip-tester) is not installed"), pytest.mark.timeout(60)]


class RecordingHandler:
    """A real handler: binds an RTP/RTCP port pair per channel and records what it was told."""

    def __init__(self, ports: PortAllocator) -> None:
        self.ports = ports
        self.invites: list[Call] = []
        self.reinvites: list[Call] = []
        self.ended: list[tuple[Call, EndReason]] = []
        self.confirmed: list[Call] = []
        self.timeline: list[tuple[str, str]] = []  # (what, Call-ID) in the order the server called us
        self.max_concurrent = 0
        self.hold_answers = asyncio.Event()  # cleared by tests that need a call to stay unanswered
        self.hold_answers.set()
        self._pairs: dict[str, list[PortPair]] = {}

    async def on_invite(self, call: Call) -> MediaAnswer:
        self.invites.append(call)
        self.timeline.append(("invite", call.call_id))
        await asyncio.wait_for(self.hold_answers.wait(), timeout=20)
        pairs = [await self.allocate() for _ in call.channels]
        self._pairs[call.call_id] = pairs
        self.max_concurrent = max(self.max_concurrent, len(self._pairs))
        return MediaAnswer([LocalMedia(self.ports.host, pair.port) for pair in pairs])

    async def allocate(self) -> PortPair:
        return self.ports.allocate()

    async def on_reinvite(self, call: Call) -> None:
        self.reinvites.append(call)

    async def on_dialog_confirmed(self, call: Call) -> None:
        self.confirmed.append(call)
        self.timeline.append(("confirmed", call.call_id))

    async def on_call_ended(self, call: Call, reason: EndReason) -> None:
        for pair in self._pairs.pop(call.call_id, []):
            self.ports.release(pair)
        self.ended.append((call, reason))
        self.timeline.append((f"ended:{reason}", call.call_id))


@pytest.fixture
def handler() -> RecordingHandler:
    return RecordingHandler(PortAllocator("127.0.0.1", 31000, 31999))


@contextlib.asynccontextmanager
async def serving(handler: RecordingHandler, **options: Any) -> AsyncIterator[SipServer]:
    """A server on 127.0.0.1 with fast timers; `options` are further `SipServerConfig` fields."""
    server = SipServer(handler, SipServerConfig(host="127.0.0.1", port=0, timers=FAST_TIMERS, **options))
    await server.start()
    try:
        yield server
    finally:
        await server.stop(bye_grace_s=0.5)


@pytest.fixture
async def server(handler: RecordingHandler) -> AsyncIterator[SipServer]:
    async with serving(handler) as server:
        yield server


async def run_sipp(
    server: SipServer,
    tmp_path: Path,
    *,
    scenario: str = "uac",
    transport: str = "u1",
    calls: int = 1,
    extra: tuple[str, ...] = (),
    timeout_s: int = 15,
    local_ip: str = "127.0.0.1",
) -> SippRun:
    """Run one SIPp UAC from `local_ip` to completion (bounded), always killing it on the way out."""
    assert SIPP is not None
    source = ["-sn", scenario] if scenario in ("uac",) else ["-sf", str(SCENARIOS / scenario)]
    return await sipp.run_sipp(
        f"127.0.0.1:{server.port}", [*source, *extra], tmp_path, calls=calls, timeout_s=timeout_s, local_ip=local_ip, transport=transport
    )


async def wait_until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Poll `condition` every 10 ms; fail the test if it does not hold within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


async def test_a_sipp_run_whose_port_was_taken_meanwhile_starts_again_on_another(
    server: SipServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A port chosen free can be taken before SIPp binds it (SIPp then exits -2 having sent nothing):
    the helper runs it again on other ports rather than failing a test on the machine's luck."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken_port = taken.getsockname()[1]
        chosen: list[int] = []
        free_port = sipp._free_port

        def first_one_taken(host: str) -> int:
            chosen.append(free_port(host) if chosen else taken_port)
            return chosen[-1]

        monkeypatch.setattr(sipp, "_free_port", first_one_taken)
        run = await run_sipp(server, tmp_path, scenario="options.xml")
    assert run.returncode == 0, run.explain()
    assert len(chosen) == 4 and chosen[0] == taken_port  # -p and -mp, twice


@pytest.mark.parametrize("transport", ["u1", "t1"])
async def test_options_ping_is_answered_200_with_allow(server: SipServer, tmp_path: Path, transport: str) -> None:
    run = await run_sipp(server, tmp_path, scenario="options.xml", transport=transport)
    assert run.returncode == 0, run.explain()


@pytest.mark.parametrize("transport", ["u1", "t1"])
async def test_call_is_answered_and_ends_when_caller_hangs_up(
    server: SipServer, handler: RecordingHandler, tmp_path: Path, transport: str
) -> None:
    run = await run_sipp(server, tmp_path, transport=transport, extra=("-d", "200"))
    assert run.returncode == 0, run.explain()
    await wait_until(lambda: len(handler.ended) == 1)
    (call,) = handler.invites
    assert call.transport == ("udp" if transport == "u1" else "tcp")
    assert call.caller.uri.startswith("sip:sipp@127.0.0.1") and call.caller.display_name == "sipp"
    (channel,) = call.channels
    assert (channel.label, channel.codec.name, channel.codec.payload_type, channel.direction) == ("caller", "PCMU", 0, "recvonly")
    assert channel.remote_address == "127.0.0.1" and channel.remote_port > 0
    assert handler.ended[0][1] == EndReason.BYE
    assert handler.ports.in_use == 0 and server.calls == {}
    assert [what for what, _ in handler.timeline] == ["invite", "confirmed", "ended:bye"]  # the ACK confirmed it, once


@pytest.mark.parametrize("transport", ["u1", "t1"])
async def test_server_initiated_bye_ends_the_call(server: SipServer, handler: RecordingHandler, tmp_path: Path, transport: str) -> None:
    sipp = asyncio.create_task(run_sipp(server, tmp_path, scenario="bye_from_server.xml", transport=transport))
    await wait_until(lambda: len(handler.invites) == 1)
    call_id = handler.invites[0].call_id
    ended_by_us = False
    deadline = time.monotonic() + 5
    while not ended_by_us and time.monotonic() < deadline:  # False until the 200 OK is out
        ended_by_us = await server.end_call(call_id, EndReason.RTP_TIMEOUT)
        await asyncio.sleep(0.01)
    run = await sipp
    assert ended_by_us and run.returncode == 0, run.explain()
    assert handler.ended[0][1] == EndReason.RTP_TIMEOUT
    assert (handler.invites[0].channels[0].codec.name, handler.invites[0].channels[0].telephone_event_pt) == ("PCMA", 101)
    bye = run.messages[run.messages.index("BYE sip:") :]
    assert re.search(r"CSeq: 1 BYE", bye) and 'text="rtp_timeout"' in bye, bye[:600]


async def test_cancel_while_handler_decides_gets_487_and_ends_the_call(
    server: SipServer, handler: RecordingHandler, tmp_path: Path
) -> None:
    handler.hold_answers.clear()
    run = await run_sipp(server, tmp_path, scenario="cancel.xml")
    assert run.returncode == 0, run.explain()
    handler.hold_answers.set()
    await wait_until(lambda: len(handler.ended) == 1)
    assert handler.ended[0][1] == EndReason.CANCEL
    assert server.stats.calls_answered == 0 and handler.ports.in_use == 0


async def test_offer_without_g711_is_refused_with_488(server: SipServer, handler: RecordingHandler, tmp_path: Path) -> None:
    run = await run_sipp(server, tmp_path, scenario="g729_only.xml")
    assert run.returncode == 0, run.explain()
    assert handler.invites == [] and server.stats.calls_rejected[488] == 1


async def test_reinvite_hold_resume_and_codec_change(server: SipServer, handler: RecordingHandler, tmp_path: Path) -> None:
    run = await run_sipp(server, tmp_path, scenario="hold_resume.xml")
    assert run.returncode == 0, run.explain()
    directions = [call.channels[0].direction for call in handler.reinvites]
    assert directions == ["recvonly", "inactive", "recvonly"]
    assert [call.channels[0].codec.name for call in handler.reinvites] == ["PCMU", "PCMU", "PCMA"]
    origins = re.findall(r"o=asr-stream (\d+) (\d+) ", run.messages)
    assert len({session_id for session_id, _ in origins}) == 1, origins
    assert [int(version) for _, version in origins] == [1, 2, 3, 4]


@pytest.mark.slow
async def test_fifty_simultaneous_calls_are_answered(server: SipServer, handler: RecordingHandler, tmp_path: Path) -> None:
    run = await run_sipp(server, tmp_path, calls=50, extra=("-d", "2500"), timeout_s=20)
    assert run.returncode == 0, run.explain()
    await wait_until(lambda: len(handler.ended) == 50)
    assert handler.max_concurrent == 50
    assert {reason for _, reason in handler.ended} == {EndReason.BYE}
    assert handler.ports.in_use == 0 and server.stats.calls_answered == 50


async def test_saturated_server_answers_503_with_retry_after(server: SipServer, handler: RecordingHandler, tmp_path: Path) -> None:
    server.set_saturated(7)
    run = await run_sipp(server, tmp_path, scenario="saturated.xml")
    assert run.returncode == 0, run.explain()
    assert handler.invites == []
    server.set_saturated(None)
    run = await run_sipp(server, tmp_path)
    assert run.returncode == 0, run.explain()


async def test_missing_ack_ends_the_call_after_64_t1(server: SipServer, handler: RecordingHandler, tmp_path: Path) -> None:
    started = time.monotonic()
    run = await run_sipp(server, tmp_path, scenario="no_ack.xml")
    assert run.returncode == 0, run.explain()
    await wait_until(lambda: len(handler.ended) == 1)
    assert handler.ended[0][1] == EndReason.ACK_TIMEOUT
    assert handler.confirmed == [] and server.stats.calls_confirmed == 0  # never published as a call
    assert time.monotonic() - started >= FAST_TIMERS.give_up_s
    assert run.messages.count("SIP/2.0 200 OK") >= 5, "the 200 OK was not retransmitted"


async def test_siprec_invite_gives_two_labelled_channels(server: SipServer, handler: RecordingHandler, tmp_path: Path) -> None:
    run = await run_sipp(server, tmp_path, scenario="siprec.xml")
    assert run.returncode == 0, run.explain()
    (call,) = handler.invites
    assert call.is_siprec
    assert [(c.label, c.stream_label, c.codec.name, c.telephone_event_pt) for c in call.channels] == [
        ("caller", "1", "PCMU", 101),
        ("agent", "2", "PCMA", None),
    ]
    assert {p.aor for p in call.participants} == {"sip:alice@example.com", "sip:agent42@callcentre.example"}
    assert call.channels[1].remote_port == call.channels[0].remote_port + 2


RAW_INVITE = """INVITE sip:asr@127.0.0.1 SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK-retransmitted
From: <sip:caller@127.0.0.1>;tag=retransmitted
To: <sip:asr@127.0.0.1>
Call-ID: retransmitted@127.0.0.1
CSeq: 1 INVITE
Contact: <sip:caller@127.0.0.1:5999>
Content-Type: application/sdp
Content-Length: 89

v=0
o=- 1 1 IN IP4 127.0.0.1
s=-
c=IN IP4 127.0.0.1
t=0 0
m=audio 7000 RTP/AVP 0 8
"""


async def test_retransmitted_invite_gets_the_same_answer_not_a_second_call(server: SipServer, handler: RecordingHandler) -> None:
    invite = RAW_INVITE.replace("\n", "\r\n").encode()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.bind(("127.0.0.1", 0))
        client.settimeout(2)
        for _ in range(2):
            client.sendto(invite, ("127.0.0.1", server.port))
            await asyncio.sleep(0.1)
        answers = await asyncio.to_thread(_final_responses, client, 2)
    assert len(handler.invites) == 1
    assert answers[0] == answers[1] and answers[0].startswith(b"SIP/2.0 200 OK")


@pytest.mark.parametrize(("value", "expected"), [("housing", "housing"), ("公积金", None), ("a b", None), ("x" * 65, None)])
async def test_hotword_list_header_is_taken_only_as_a_short_token(server: SipServer, handler: RecordingHandler, value, expected) -> None:
    """X-ASR-Hotwords names a configured list; anything but a short token (free text, spaces, non-ASCII) is ignored."""
    invite = RAW_INVITE.replace("CSeq: 1 INVITE\n", f"CSeq: 1 INVITE\nX-ASR-Hotwords: {value}\n").replace("\n", "\r\n").encode()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.bind(("127.0.0.1", 0))
        client.settimeout(2)
        client.sendto(invite, ("127.0.0.1", server.port))
        (answer,) = await asyncio.to_thread(_final_responses, client, 1)
    assert answer.startswith(b"SIP/2.0 200 OK")
    assert handler.invites[0].hotword_list == expected


def _final_responses(client: socket.socket, count: int) -> list[bytes]:
    finals: list[bytes] = []
    while len(finals) < count:
        data = client.recv(65536)
        if not data.startswith(b"SIP/2.0 1"):
            finals.append(data)
    return finals


# -- malformed input -----------------------------------------------------------------------


def corpus_files() -> list[Path]:
    return sorted(path for path in CORPUS.iterdir() if path.name != "README.md")


def expected_status(path: Path) -> int | None:
    prefix = path.name.split("-", 1)[0]
    return None if prefix == "drop" else int(prefix)


def first_final_status(client: socket.socket, wait_s: float) -> int | None:
    """The status of the first final response within `wait_s`, or None if none came."""
    deadline = time.monotonic() + wait_s
    while (left := deadline - time.monotonic()) > 0:
        client.settimeout(left)
        try:
            data = client.recv(65536)
        except TimeoutError:
            return None
        status = int(data.split(b" ", 2)[1])
        if status >= 200:
            return status
    return None


async def test_malformed_corpus_over_udp_then_a_good_call(server: SipServer, tmp_path: Path) -> None:
    def throw_all() -> dict[str, int | None]:
        outcomes = {}
        for path in corpus_files():
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
                client.bind(("127.0.0.1", 0))
                client.sendto(path.read_bytes(), ("127.0.0.1", server.port))
                outcomes[path.name] = first_final_status(client, 1.0 if expected_status(path) else 0.3)
        return outcomes

    outcomes = await asyncio.to_thread(throw_all)
    assert outcomes == {path.name: expected_status(path) for path in corpus_files()}
    assert sum(server.stats.dropped.values()) >= sum(1 for path in corpus_files() if expected_status(path) is None)
    run = await run_sipp(server, tmp_path)
    assert run.returncode == 0, run.explain()


async def test_malformed_corpus_over_tcp_then_a_good_call(server: SipServer, tmp_path: Path) -> None:
    async def throw(path: Path) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            writer.write(path.read_bytes())
            await writer.drain()
            # Either an answer, the server closing a broken stream, or (incomplete framing) silence.
            await asyncio.wait_for(reader.read(65536), timeout=0.5)
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    for path in corpus_files():
        await throw(path)
    run = await run_sipp(server, tmp_path, transport="t1")
    assert run.returncode == 0, run.explain()


class RefusingHandler(RecordingHandler):
    async def on_invite(self, call: Call) -> MediaAnswer:
        raise SipReject(503, "Service Unavailable", retry_after=7)


async def test_handler_can_refuse_a_call_with_retry_after(tmp_path: Path) -> None:
    async with serving(RefusingHandler(PortAllocator("127.0.0.1", 31000, 31999))) as server:
        run = await run_sipp(server, tmp_path, scenario="saturated.xml")
        assert run.returncode == 0, run.explain()
        assert server.stats.calls_rejected[503] == 1
