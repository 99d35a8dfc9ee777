"""The daemon's HTTP surface: probes, Prometheus metrics, the live transcript feed and the agent page.

Routes
  GET /healthz                          200 while the process serves HTTP (liveness)
  GET /readyz                           200 only when every readiness check passes; JSON names each
  GET /metrics                          Prometheus text from the daemon's own registry
  GET /v1/transcripts                   WebSocket: every call's events
  GET /v1/calls/{call_id}/transcript    WebSocket: one call's events, ends after call.ended
  GET /                                 the agent-assist page

WebSocket frames are text frames holding exactly the JSON of the Kafka record value, so a
consumer can switch between the two without a second parser. A late joiner first gets the
call's `call.started` and finals so far (see sinks/livefeed.py).

Security: transcripts of citizens' calls are personal data, so the feed and the page need a
bearer token whenever the listener is reachable from other hosts (on by default unless
http.listen is loopback; `require_auth` overrides). The token comes in an `Authorization: Bearer`
header, or as `?token=` because browsers' WebSocket API cannot set headers. The probes and
/metrics stay open for kubelet and Prometheus; they carry no transcript content. Tokens are
compared in constant time and never logged: the access log writes paths without query strings.

Logs: a request aiohttp cannot parse (a request line or header over 8,190 bytes, bytes that are
not HTTP) is answered 400 and written as one WARNING line without traceback, at most once per
client address every 10 s with a count of the rest (`BadRequestLog`); a handler that fails is
still an ERROR with its traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources

from aiohttp import WSCloseCode, web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Handler, Middleware
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from asr_stream.common.throttled_log import ThrottledLog, clip
from asr_stream.sinks.livefeed import LiveFeedHub, SubscriberTooSlow, Subscription

log = logging.getLogger(__name__)

#: WebSocket close code (application range) for a client that fell too far behind the feed.
CLOSE_TOO_SLOW = 4008
#: Routes anyone may call: probes and scraping must work without the feed's token.
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})

ReadinessCheck = Callable[[], bool]


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and `localhost`: only this host can connect."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything, so treat it as reachable


@dataclass(frozen=True, kw_only=True)
class HttpSettings:
    """Security and resource limits of the HTTP surface.

    max_websockets: concurrent feed connections; more get 503 (each holds a hub subscription)
    max_request_bytes: largest request body accepted; no route takes one, so this stays small
    send_timeout_s: a WebSocket send blocked this long means a stalled client: it is dropped
    """

    auth_token: str | None = field(default=None, repr=False)
    require_auth: bool = True  # the config turns it off for a loopback listener (only this host can connect)
    max_websockets: int = 64
    max_request_bytes: int = 16 * 1024
    send_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        if self.require_auth and not self.auth_token:
            raise ValueError(
                "HTTP auth is required (http.listen is not loopback, or http.require_auth is true) but no "
                "http.auth_token is set; set one (e.g. ASR_STREAM__HTTP__AUTH_TOKEN) or set http.require_auth: false"
            )


def presented_token(request: web.Request) -> str | None:
    """The token from `Authorization: Bearer <token>`, else from `?token=`."""
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials:
        return credentials.strip()
    return request.query.get("token")


def _token_matches(presented: str | None, expected: str) -> bool:
    return presented is not None and hmac.compare_digest(presented.encode(), expected.encode())


def _auth_middleware(settings: HttpSettings) -> Middleware:
    """Every route but OPEN_PATHS needs the token: a route added later is protected by default."""

    @web.middleware
    async def require_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        if settings.require_auth and request.path not in OPEN_PATHS:
            assert settings.auth_token is not None  # HttpSettings refuses require_auth without one
            if not _token_matches(presented_token(request), settings.auth_token):
                raise web.HTTPUnauthorized(
                    text="401: a bearer token is required (Authorization header, or ?token= in the URL)",
                    headers={"WWW-Authenticate": 'Bearer realm="asr-stream"'},
                )
        return await handler(request)

    return require_token


def create_app(
    hub: LiveFeedHub,
    registry: CollectorRegistry,
    checks: Mapping[str, ReadinessCheck],
    settings: HttpSettings,
) -> web.Application:
    """The aiohttp application; `checks` maps a name (e.g. "model_loaded") to a no-argument callable."""
    app = web.Application(client_max_size=settings.max_request_bytes, middlewares=[_auth_middleware(settings)])
    feed = _Feed(hub, settings)

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        results = {name: _passes(name, check) for name, check in checks.items()}
        ready = all(results.values())
        return web.json_response({"ready": ready, "checks": results}, status=200 if ready else 503)

    async def metrics(request: web.Request) -> web.Response:
        body = generate_latest(registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    page = resources.files("asr_stream.app").joinpath("static", "agent.html").read_bytes()

    async def agent_page(request: web.Request) -> web.Response:
        # no-referrer: the page URL may carry ?token=, which must not leak to other origins.
        headers = {"Referrer-Policy": "no-referrer", "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
        return web.Response(body=page, content_type="text/html", charset="utf-8", headers=headers)

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/v1/transcripts", feed.all_calls)
    app.router.add_get("/v1/calls/{call_id}/transcript", feed.one_call)
    app.router.add_get("/", agent_page)
    app.on_shutdown.append(lambda _: _close_feed(hub))
    return app


async def _close_feed(hub: LiveFeedHub) -> None:
    """On shutdown, end the subscriptions so WebSocket handlers close their clients and return."""
    hub.close()


def _passes(name: str, check: ReadinessCheck) -> bool:
    """A check that raises counts as failing: readiness must answer, not crash."""
    try:
        return bool(check())
    except Exception:
        log.exception("readiness check %s raised", name)
        return False


class _Feed:
    """The WebSocket endpoints: one hub subscription per connection, bounded in number."""

    def __init__(self, hub: LiveFeedHub, settings: HttpSettings) -> None:
        self.hub = hub
        self.settings = settings
        self.open_connections = 0

    async def all_calls(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, None)

    async def one_call(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, request.match_info["call_id"])

    async def _serve(self, request: web.Request, call_id: str | None) -> web.StreamResponse:
        if self.open_connections >= self.settings.max_websockets:
            raise web.HTTPServiceUnavailable(text="too many live-feed connections", headers={"Retry-After": "5"})
        ws = web.WebSocketResponse(heartbeat=20.0, max_msg_size=4096, timeout=self.settings.send_timeout_s)
        await ws.prepare(request)
        self.open_connections += 1
        try:
            with self.hub.subscribe(call_id) as subscription:
                sender = asyncio.create_task(self._send(ws, subscription, request))
                try:
                    async for _ in ws:
                        pass  # clients have nothing to say; reading notices their close and pings
                finally:
                    sender.cancel()
                    await asyncio.gather(sender, return_exceptions=True)
        finally:
            self.open_connections -= 1
        return ws

    async def _send(self, ws: web.WebSocketResponse, subscription: Subscription, request: web.Request) -> None:
        timeout = self.settings.send_timeout_s
        try:
            async for event in subscription:
                await asyncio.wait_for(ws.send_str(event.to_json().decode()), timeout)
        except (SubscriberTooSlow, TimeoutError) as error:
            log.warning("live feed client %s dropped: %s", request.remote, str(error) or f"a send blocked for {timeout:.1f} s")
            code, reason = CLOSE_TOO_SLOW, b"consumer too slow"
        else:
            code, reason = WSCloseCode.OK, b"feed ended"
        # A client that stopped reading cannot take the close frame either, and closing a
        # transport waits for its queued bytes: abort after a grace period so the slot frees.
        if request.transport is not None:
            asyncio.get_running_loop().call_later(timeout, request.transport.abort)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ws.close(code=code, message=reason), timeout)


class PathOnlyAccessLog(AbstractAccessLogger):
    """Access log lines without query strings, where `?token=` would otherwise be written."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info("%s %s %s %d %.1f ms", request.remote, request.method, request.path, response.status, time * 1000)


class BadRequestLog(logging.LoggerAdapter[logging.Logger]):
    """aiohttp's server logger for one listener, with the client's malformed requests tamed.

    aiohttp answers a request it cannot parse with 400 and logs it through
    `RequestHandler.handle_error` as "Error handling request from <address>" at ERROR with a
    traceback, the whole oversized line quoted in the exception text: a scanner or fuzzer then
    writes thousands of tracebacks. Such a request is the client's mistake (an
    `HttpProcessingError` with a 4xx code), so it becomes one WARNING line, without traceback,
    with the exception text clipped, throttled per client address. Anything else aiohttp logs
    (a handler that raised: 500) passes through unchanged. An adapter handed to aiohttp's
    `logger` option rather than a filter on the shared `aiohttp.server` logger, so each server
    has its own throttle and nothing global is touched.
    """

    def __init__(self) -> None:
        super().__init__(logging.getLogger("aiohttp.server"), {})
        self._throttled = ThrottledLog(self.logger)

    def log(self, level: int, msg: object, *args: object, exc_info: object = None, **kwargs: object) -> None:
        if level >= logging.WARNING and isinstance(exc_info, HttpProcessingError) and 400 <= exc_info.code < 500:
            client = str(args[0]) if args else "unknown"  # aiohttp's message is "... from %s" % request.remote
            reason = exc_info.message.strip().splitlines()[0] if exc_info.message.strip() else type(exc_info).__name__
            self._throttled.warning(
                ("bad request", client), "bad HTTP request from %s answered %d: %s", clip(client), exc_info.code, clip(reason)
            )
            return
        super().log(level, msg, *args, exc_info=exc_info, **kwargs)  # type: ignore[arg-type]


async def start_server(app: web.Application, host: str, port: int) -> web.AppRunner:
    """Serve `app` on host:port; cleanup() the returned runner to stop."""
    runner = web.AppRunner(app, access_log_class=PathOnlyAccessLog, logger=BadRequestLog())
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
