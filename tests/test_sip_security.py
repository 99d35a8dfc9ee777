"""Source allow-list and digest authentication on the wire, against real SIPp and raw sockets.

SIPp 3.6.1 computes MD5 only, and answers only the first challenge of a 401 (offered SHA-256
first it gives up: "authentication must use MD5 or AKAv1-MD5"), so its scenarios run with
`algorithms=("MD5",)`. The default SHA-256-then-MD5 offer is driven by a raw-socket UAC here,
whose digest is computed with hashlib inline rather than with the code under test.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import socket
from pathlib import Path

import pytest
from test_sip_server import RAW_INVITE, SIPP, RecordingHandler, handler, run_sipp, serving, wait_until  # noqa: F401 (fixture)

from asr_stream.sip.digest import DigestAuthConfig, DigestCredential

pytestmark = [pytest.mark.skipif(SIPP is None, reason="SIPp (Debian sip-tester) is not installed"), pytest.mark.timeout(60)]

ALICE = {"alice": DigestCredential(password="secret")}


async def test_sipp_answers_the_md5_challenge_and_its_call_is_served(handler: RecordingHandler, tmp_path: Path) -> None:
    async with serving(handler, auth=DigestAuthConfig(realm="asr.test", users=ALICE, algorithms=("MD5",))) as server:
        run = await run_sipp(server, tmp_path, scenario="auth_invite.xml")
        assert run.returncode == 0, run.explain()
        await wait_until(lambda: len(handler.ended) == 1)
    assert len(handler.invites) == 1 and server.stats.calls_answered == 1
    assert server.stats.auth == {"missing": 1, "ok": 1}
    assert 'WWW-Authenticate: Digest realm="asr.test"' in run.messages and "algorithm=MD5" in run.messages


async def test_sipp_with_a_wrong_password_is_challenged_again_and_never_reaches_the_handler(
    handler: RecordingHandler, tmp_path: Path
) -> None:
    async with serving(handler, auth=DigestAuthConfig(realm="asr.test", users=ALICE, algorithms=("MD5",))) as server:
        run = await run_sipp(server, tmp_path, scenario="auth_refused.xml")
        assert run.returncode == 0, run.explain()
    assert handler.invites == [] and server.stats.auth == {"missing": 1, "failed": 1}


@pytest.mark.parametrize(("local_ip", "scenario"), [("127.0.0.1", "forbidden.xml"), ("127.0.0.2", "uac")])
async def test_allow_list_refuses_outsiders_with_403_and_serves_the_listed_source(
    handler: RecordingHandler, tmp_path: Path, local_ip: str, scenario: str
) -> None:
    async with serving(handler, allowed_sources=("127.0.0.2/32",)) as server:
        run = await run_sipp(server, tmp_path, scenario=scenario, local_ip=local_ip)
        assert run.returncode == 0, run.explain()
    outsider = scenario == "forbidden.xml"
    assert len(handler.invites) == (0 if outsider else 1)
    assert (server.stats.forbidden_sources > 0) is outsider


async def test_tcp_from_outside_the_allow_list_is_closed_at_accept(handler: RecordingHandler) -> None:
    async with serving(handler, allowed_sources=("192.0.2.0/24", "2001:db8::/32")) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:  # the server closes before the client could even send: end of stream, nothing said
            assert await asyncio.wait_for(reader.read(65536), timeout=2) == b""
        finally:
            writer.close()
    assert server.stats.forbidden_sources == 1


# -- the default offer (SHA-256, then MD5) and 407, with a raw-socket UAC ------------------------


def exchange(client: socket.socket, request: str, port: int) -> str:
    """Send one request, return its final response (bounded by the socket's timeout).

    Responses are matched by Via branch: a 200 OK we never ACK keeps being retransmitted.
    """
    branch = re.search(r"branch=([^\s;]+)", request).group(1)  # type: ignore[union-attr]
    client.sendto(request.replace("\n", "\r\n").encode(), ("127.0.0.1", port))
    while True:
        data = client.recv(65536).decode()
        if f"branch={branch}\r" in data and not data.startswith("SIP/2.0 1"):
            return data


def authorize(invite: str, challenge: str, header: str, nc: int, password: str = "secret") -> str:
    """The INVITE again with CSeq 2, a new branch, and an RFC 7616 SHA-256 answer to `challenge`."""
    params = dict(re.findall(r'(\w+)="?([^",]+)"?', challenge))
    assert params["algorithm"] == "SHA-256" and params["qop"] == "auth"

    def h(text: str) -> str:
        return hashlib.sha256(text.encode()).hexdigest()

    realm, nonce, uri, nc_hex, cnonce = params["realm"], params["nonce"], "sip:asr@127.0.0.1", f"{nc:08x}", "0a4f113b"
    response = h(f"{h(f'alice:{realm}:{password}')}:{nonce}:{nc_hex}:{cnonce}:auth:{h(f'INVITE:{uri}')}")
    credentials = (
        f'{header}: Digest username="alice", realm="{realm}", nonce="{nonce}", uri="{uri}", '
        f'response="{response}", algorithm=SHA-256, cnonce="{cnonce}", nc={nc_hex}, qop=auth, opaque="{params["opaque"]}"\n'
    )
    branch = f"z9hG4bK-authorized-{nc}"
    return (
        invite.replace("CSeq: 1 INVITE", "CSeq: 2 INVITE")
        .replace("z9hG4bK-retransmitted", branch)
        .replace("Content-Type:", credentials + "Content-Type:")
    )


@pytest.mark.parametrize(("proxy", "status", "challenge_header", "credentials_header"), [
    (False, 401, "WWW-Authenticate", "Authorization"),
    (True, 407, "Proxy-Authenticate", "Proxy-Authorization"),
])  # fmt: skip
async def test_sha256_is_offered_first_and_a_replayed_answer_is_refused(
    handler: RecordingHandler, proxy: bool, status: int, challenge_header: str, credentials_header: str
) -> None:
    auth = DigestAuthConfig(realm="asr.test", users=ALICE, proxy=proxy)
    async with serving(handler, auth=auth) as server:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.bind(("127.0.0.1", 0))
            client.settimeout(2)
            invite = RAW_INVITE.replace("5999", str(client.getsockname()[1]))
            refused = await asyncio.to_thread(exchange, client, invite, server.port)
            challenges = re.findall(rf"^{challenge_header}: (.*)\r$", refused, re.MULTILINE)
            authorized = authorize(invite, challenges[0], credentials_header, nc=1)
            answered = await asyncio.to_thread(exchange, client, authorized, server.port)
            replayed = await asyncio.to_thread(exchange, client, authorized.replace("authorized-1", "replayed"), server.port)
    assert refused.startswith(f"SIP/2.0 {status} ")
    assert [re.search(r"algorithm=([\w-]+)", c).group(1) for c in challenges] == ["SHA-256", "MD5"]  # type: ignore[union-attr]
    assert answered.startswith("SIP/2.0 200 OK") and len(handler.invites) == 1
    assert replayed.startswith(f"SIP/2.0 {status} ") and "stale=true" in replayed
    assert server.stats.auth == {"missing": 1, "ok": 1, "replayed": 1}


OPTIONS = """OPTIONS sip:asr@127.0.0.1 SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK-options
From: <sip:monitor@127.0.0.1>;tag=options
To: <sip:asr@127.0.0.1>
Call-ID: options@127.0.0.1
CSeq: 1 OPTIONS
Content-Length: 0

"""


async def test_only_the_configured_methods_are_challenged(handler: RecordingHandler) -> None:
    auth = DigestAuthConfig(realm="asr.test", users=ALICE, methods=("OPTIONS",))
    async with serving(handler, auth=auth) as server:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.bind(("127.0.0.1", 0))
            client.settimeout(2)
            port = str(client.getsockname()[1])
            options = await asyncio.to_thread(exchange, client, OPTIONS.replace("5999", port), server.port)
            invite = await asyncio.to_thread(exchange, client, RAW_INVITE.replace("5999", port), server.port)
    assert options.startswith("SIP/2.0 401 ") and invite.startswith("SIP/2.0 200 OK")
    assert server.stats.auth == {"missing": 1}
