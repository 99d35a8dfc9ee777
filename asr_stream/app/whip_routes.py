"""WHIP over HTTP (RFC 9725): the routes that put `audio.whip.WhipIngest` on the daemon's aiohttp app.

A top-level module of its own because the audio stage must not know HTTP (tests/test_layering.py).

  POST   /v1/whip               body: SDP offer (application/sdp)
                                201 Created, Location: /v1/whip/<session>, body: SDP answer
                                400 unusable offer, 413 too large, 415 not application/sdp,
                                503 + Retry-After when at capacity or not admitted
  DELETE /v1/whip/<session>     200 (the session's call ends with reason "bye"), 404 if unknown
  PATCH  /v1/whip/<session>     405 (aiohttp's default for an unrouted method): RFC 9725's answer
                                from a session that supports neither trickle ICE nor ICE restart

Authentication is not done here: on the app from `http_api.create_app`, its middleware already
requires the bearer token on every path outside OPEN_PATHS, these included.
"""

from __future__ import annotations

from aiohttp import web

from asr_stream.ingest.webrtc.session import OfferRejected, SessionRefused, WhipIngest

SDP = "application/sdp"
WHIP_PATH = "/v1/whip"


def whip_routes(ingest: WhipIngest, path: str = WHIP_PATH) -> list[web.RouteDef]:
    """POST `path` and DELETE `path`/{session_id}, for `app.router.add_routes`."""

    async def create_session(request: web.Request) -> web.Response:
        if request.content_type != SDP:
            raise web.HTTPUnsupportedMediaType(text=f"415: the offer must be sent as {SDP}")
        offer = await _read_offer(request, ingest.config.max_offer_bytes)
        peername = request.transport.get_extra_info("peername") if request.transport is not None else None
        peer = (str(peername[0]), int(peername[1])) if peername else ("", 0)
        try:
            session_id, answer = await ingest.offer(offer, peer)
        except OfferRejected as error:
            raise web.HTTPBadRequest(text=f"400: {error}") from error
        except SessionRefused as error:
            raise web.HTTPServiceUnavailable(text=f"503: {error}", headers={"Retry-After": str(error.retry_after)}) from error
        return web.Response(status=201, body=answer.encode(), content_type=SDP, headers={"Location": f"{path}/{session_id}"})

    async def delete_session(request: web.Request) -> web.Response:
        if not await ingest.terminate(request.match_info["session_id"]):
            raise web.HTTPNotFound(text="404: no such WHIP session")
        return web.Response(status=200)

    return [web.post(path, create_session), web.delete(f"{path}/{{session_id}}", delete_session)]


async def _read_offer(request: web.Request, limit: int) -> str:
    """The body as text, refused before reading when Content-Length already says it is too large."""
    if request.content_length is not None and request.content_length > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length)
    body = await request.read()  # bounded by the app's client_max_size, for chunked bodies too
    if len(body) > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=len(body))
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise web.HTTPBadRequest(text="400: the offer is not UTF-8 text") from error
