"""The HTTP surface on a real aiohttp server on 127.0.0.1: probes, auth, the WebSocket feed and its limits."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import aiohttp
import pytest
from prometheus_client import CollectorRegistry
from test_livefeed import ended, final, partial, started

from asr_stream.app.config import HttpSection
from asr_stream.app.http_api import CLOSE_TOO_SLOW, HttpSettings, ReadinessCheck, create_app, is_loopback, start_server
from asr_stream.sinks.livefeed import LiveFeedHub

TOKEN = "s3cret-feed-token"
#: The longest one publish() may take: generous, since a loaded runner pauses a process for tens of ms.
PUBLISH_BOUND_S = 0.5


@asynccontextmanager
async def serving(
    hub: LiveFeedHub,
    settings: HttpSettings = HttpSettings(auth_token=TOKEN),
    checks: Mapping[str, ReadinessCheck] | None = None,
    registry: CollectorRegistry | None = None,
) -> AsyncIterator[str]:
    """The app on a free 127.0.0.1 port; yields its base URL and always stops the server."""
    app = create_app(hub, registry or CollectorRegistry(), checks or {}, settings)
    runner = await start_server(app, "127.0.0.1", 0)
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_healthz_answers_and_readyz_names_every_check() -> None:
    model_loaded = [False]

    def kafka_reachable() -> bool:
        raise ConnectionError("broker gone")  # a check that raises counts as failing

    checks = {"model_loaded": lambda: model_loaded[0], "sip_listening": lambda: True, "kafka": kafka_reachable}
    async with serving(LiveFeedHub(), checks=checks) as base, aiohttp.ClientSession() as http:
        async with http.get(f"{base}/healthz") as response:
            assert response.status == 200
        async with http.get(f"{base}/readyz") as response:
            assert response.status == 503
            assert await response.json() == {"ready": False, "checks": {"model_loaded": False, "sip_listening": True, "kafka": False}}
        model_loaded[0] = True
        checks["kafka"] = lambda: True
        async with http.get(f"{base}/readyz") as response:
            assert response.status == 200
            assert (await response.json())["ready"] is True


async def test_websocket_with_a_token_gets_the_kafka_json_replay_then_live_events() -> None:
    hub = LiveFeedHub()
    history = [started("c1"), partial("c1", 0, 0, "hello"), final("c1", 0, "Hello, city hall.")]
    for event in history:
        hub.publish(event)
    async with (
        serving(hub) as base,
        aiohttp.ClientSession() as http,
        http.ws_connect(f"{base}/v1/calls/c1/transcript?token={TOKEN}") as ws,
    ):
        replayed = [await ws.receive_str(timeout=2) for _ in range(2)]
        live = [partial("c1", 1, 0, "my bin"), final("c1", 1, "My bin was not emptied."), ended("c1", 2)]
        for event in live:
            hub.publish(event)
        streamed = [await ws.receive_str(timeout=2) for _ in range(3)]
        closing = await ws.receive(timeout=2)
    assert [text.encode() for text in replayed] == [history[0].to_json(), history[2].to_json()]
    assert [text.encode() for text in streamed] == [event.to_json() for event in live]
    assert closing.type is aiohttp.WSMsgType.CLOSE  # the per-call feed ends after call.ended
    assert hub.subscriber_count == 0


async def test_all_calls_feed_accepts_the_authorization_header() -> None:
    hub = LiveFeedHub()
    async with serving(hub) as base, aiohttp.ClientSession() as http, http.ws_connect(f"{base}/v1/transcripts", headers=bearer()) as ws:
        hub.publish(started("a"))
        hub.publish(started("b"))
        calls = [json.loads(await ws.receive_str(timeout=2))["call_id"] for _ in range(2)]
    assert calls == ["a", "b"]


WRONG_CREDENTIALS = [
    {},
    {"params": {"token": "wrong"}},
    {"headers": {"Authorization": "Bearer wrong"}},
    {"headers": {"Authorization": TOKEN}},
]


@pytest.mark.parametrize("path", ["/v1/transcripts", "/v1/calls/c1/transcript", "/"])
@pytest.mark.parametrize("credentials", WRONG_CREDENTIALS)
async def test_feed_and_page_refuse_a_missing_or_wrong_token(path: str, credentials: dict) -> None:
    async with serving(LiveFeedHub()) as base, aiohttp.ClientSession() as http, http.get(f"{base}{path}", **credentials) as response:
        assert response.status == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("credentials", WRONG_CREDENTIALS)
async def test_websocket_handshake_fails_without_the_token(credentials: dict) -> None:
    hub = LiveFeedHub()
    async with serving(hub) as base, aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(f"{base}/v1/transcripts", **credentials)
    assert refused.value.status == 401
    assert hub.subscriber_count == 0


async def test_probes_and_metrics_stay_open_while_the_page_needs_the_token() -> None:
    async with serving(LiveFeedHub()) as base, aiohttp.ClientSession() as http:
        for path in ("/healthz", "/readyz", "/metrics"):
            async with http.get(f"{base}{path}") as response:
                assert response.status == 200, path
        async with http.get(f"{base}/", params={"token": TOKEN}) as response:
            assert response.status == 200
            assert response.headers["Referrer-Policy"] == "no-referrer"
            assert "/v1/transcripts" in await response.text()


async def test_loopback_listener_may_run_without_auth() -> None:
    settings = HttpSection(listen="127.0.0.1:8080").build()
    assert settings.require_auth is False
    hub = LiveFeedHub()
    async with serving(hub, settings) as base, aiohttp.ClientSession() as http, http.ws_connect(f"{base}/v1/transcripts") as ws:
        hub.publish(started("c1"))
        assert json.loads(await ws.receive_str(timeout=2))["event"] == "call.started"


def test_auth_is_on_by_default_off_loopback_and_refuses_to_start_without_a_token() -> None:
    assert HttpSection(listen="0.0.0.0:8080", auth_token=TOKEN).build().require_auth is True
    assert HttpSection(listen="[::1]:8080").build().require_auth is False
    assert HttpSection(listen="10.0.0.5:8080", require_auth=False).build().require_auth is False
    with pytest.raises(ValueError, match="auth_token"):
        HttpSection(listen="0.0.0.0:8080")
    assert [is_loopback(host) for host in ("127.0.0.2", "::1", "localhost", "0.0.0.0", "asr.internal")] == [True, True, True, False, False]
    assert TOKEN not in repr(HttpSettings(auth_token=TOKEN))


async def test_the_access_log_never_contains_the_token(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="aiohttp.access")
    async with serving(LiveFeedHub()) as base, aiohttp.ClientSession() as http, http.get(f"{base}/", params={"token": TOKEN}) as response:
        assert response.status == 200
    access_lines = [record.getMessage() for record in caplog.records if record.name == "aiohttp.access"]
    assert any(" GET / 200 " in line for line in access_lines), access_lines
    assert not any(TOKEN in line for line in access_lines)


async def test_connections_beyond_the_limit_get_503() -> None:
    async with serving(LiveFeedHub(), HttpSettings(auth_token=TOKEN, max_websockets=1)) as base, aiohttp.ClientSession() as http:
        async with http.ws_connect(f"{base}/v1/transcripts", headers=bearer()):
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect(f"{base}/v1/transcripts", headers=bearer())
            assert refused.value.status == 503
        # The slot is free again once the first client has gone.
        for _ in range(50):
            try:
                async with http.ws_connect(f"{base}/v1/transcripts", headers=bearer()):
                    break
            except aiohttp.WSServerHandshakeError:
                await asyncio.sleep(0.02)
        else:
            pytest.fail("the connection slot was not released")


async def test_request_bodies_beyond_the_limit_are_refused() -> None:
    async with serving(LiveFeedHub(), HttpSettings(auth_token=TOKEN, max_request_bytes=1024)) as base, aiohttp.ClientSession() as http:
        async with http.post(f"{base}/healthz", data=b"x" * 4096) as response:
            assert response.status in (405, 413)
        async with http.get(f"{base}/healthz", data=b"x" * 4096) as response:
            assert response.status == 200  # handlers never read bodies, so nothing is buffered


async def test_a_client_that_falls_behind_is_closed_with_the_too_slow_code() -> None:
    hub = LiveFeedHub(subscriber_capacity=20)
    async with serving(hub) as base, aiohttp.ClientSession() as http, http.ws_connect(f"{base}/v1/transcripts", headers=bearer()) as ws:
        for index in range(200):  # published in one go: the sender cannot keep up
            hub.publish(final("c1", index, f"segment {index}"))
        messages = [await ws.receive(timeout=2) for _ in range(25)]
        closing = next(message for message in messages if message.type is not aiohttp.WSMsgType.TEXT)
    assert closing.type is aiohttp.WSMsgType.CLOSE
    assert closing.data == CLOSE_TOO_SLOW
    assert hub.dropped_subscribers == 1 and hub.subscriber_count == 0


async def test_a_stalled_reader_is_dropped_without_slowing_publish() -> None:
    """A client that stops reading: TCP backpressure blocks the send, the hub cuts it off."""
    hub = LiveFeedHub(subscriber_capacity=50)
    settings = HttpSettings(auth_token=TOKEN, max_websockets=1, send_timeout_s=0.5)
    big_text = "word " * 4000  # 20 kB per event fills socket buffers quickly
    async with serving(hub, settings) as base:
        host, port = base.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            (
                f"GET /v1/transcripts?token={TOKEN} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        assert b"101" in await reader.readline()  # upgraded; from here on this client never reads
        try:
            loop = asyncio.get_running_loop()
            worst_publish_s = 0.0
            for index in range(400):
                started_at = loop.time()
                hub.publish(final("c1", index, big_text))
                worst_publish_s = max(worst_publish_s, loop.time() - started_at)
                await asyncio.sleep(0.001)
                if hub.dropped_subscribers:
                    break
            assert hub.dropped_subscribers == 1 and hub.subscriber_count == 0
            # publish() never waits for a socket (a client that never reads would hang it for good);
            # the bound only catches work that grows with the backlog, not a loaded machine's pauses.
            assert worst_publish_s < PUBLISH_BOUND_S
            async with aiohttp.ClientSession() as http:  # the handler let go of its connection slot
                for _ in range(100):
                    try:
                        async with http.ws_connect(f"{base}/v1/transcripts", headers=bearer()):
                            break
                    except aiohttp.WSServerHandshakeError:
                        await asyncio.sleep(0.05)
                else:
                    pytest.fail("the stalled client's handler never returned")
        finally:
            writer.close()


async def raw_request(base: str, request: bytes) -> bytes:
    """Send `request` as is on a fresh connection; the first line of the answer."""
    host, port = base.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.readline(), 5)
    finally:
        writer.close()


OVERSIZED = {
    "request line": b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    "header": b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Fuzz: " + b"b" * 20_000 + b"\r\n\r\n",
}


def server_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == "aiohttp.server"]


@pytest.mark.parametrize("what", OVERSIZED)
async def test_an_oversized_request_is_one_warning_line_without_traceback(caplog: pytest.LogCaptureFixture, what: str) -> None:
    """Issue 11: answered 400 but logged at ERROR with a traceback quoting the whole line."""
    caplog.set_level(logging.DEBUG, logger="aiohttp.server")
    async with serving(LiveFeedHub()) as base:
        assert (await raw_request(base, OVERSIZED[what])).startswith(b"HTTP/1.0 400 ")
    [line] = server_lines(caplog)
    assert line.levelno == logging.WARNING and not line.exc_info and line.exc_text is None
    assert line.getMessage().startswith("bad HTTP request from 127.0.0.1 answered 400: ")
    assert "\n" not in line.getMessage() and len(line.getMessage()) < 400


async def test_a_flood_of_bad_requests_from_one_address_is_one_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="aiohttp.server")
    async with serving(LiveFeedHub()) as base:
        answers = [await raw_request(base, OVERSIZED["header"]) for _ in range(40)]
    assert all(answer.startswith(b"HTTP/1.0 400 ") for answer in answers)
    assert len(server_lines(caplog)) == 1


async def test_a_failing_handler_is_still_an_error_with_its_traceback(caplog: pytest.LogCaptureFixture) -> None:
    """Only the client's malformed requests are tamed: a bug on our side keeps its traceback."""

    caplog.set_level(logging.DEBUG, logger="aiohttp.server")
    app = create_app(LiveFeedHub(), CollectorRegistry(), {}, HttpSettings(auth_token=TOKEN))

    async def failing(request: aiohttp.web.Request) -> aiohttp.web.Response:
        raise RuntimeError("a bug in a handler")

    app.router.add_get("/fail", failing)
    runner = await start_server(app, "127.0.0.1", 0)
    host, port = runner.addresses[0][:2]
    try:
        async with aiohttp.ClientSession() as http, http.get(f"http://{host}:{port}/fail", headers=bearer()) as failed:
            assert failed.status == 500
    finally:
        await runner.cleanup()
    [line] = server_lines(caplog)
    assert line.levelno == logging.ERROR and line.exc_info is not None and "a bug in a handler" in str(line.exc_info[1])
