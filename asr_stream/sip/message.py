"""Parsing, validating and answering SIP messages.

Parsing and serialisation are aiosipua's (`SipMessage.parse`, `bytes(message)`): it unfolds
headers, expands compact forms, splits multi-value headers and caps the header count. It is
lenient on purpose (a CSeq of "abc" parses as 0), so this module adds the strict checks of
RFC 3261 §8.2 that decide between serving a request, answering 400, and dropping it: a request we
cannot address a response to (no usable Via) must be dropped, anything else gets an answer.

It also bounds every field that travels further (into `Call`, logs and Kafka events): RFC 3261
sets no limits, so a 30,000-character Call-ID used to be published and logged whole. A request
over a `FieldLimits` bound is answered 400 with the field named in the reason phrase.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from aiosipua import SipMessage, SipRequest, SipResponse, generate_tag, parse_address, stringify_uri

REASONS: dict[int, str] = {
    100: "Trying",
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    405: "Method Not Allowed",
    407: "Proxy Authentication Required",
    415: "Unsupported Media Type",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    500: "Server Internal Error",
    503: "Service Unavailable",
}

_METHOD = re.compile(r"^[A-Za-z]{1,32}$")
_CSEQ = re.compile(r"^(\d{1,10})\s+([A-Za-z]{1,32})$")
# sent-protocol SP sent-by [; params] (RFC 3261 §20.42); the host part may be an IPv6 reference.
_VIA = re.compile(r"^SIP\s*/\s*2\.0\s*/\s*[A-Za-z]+\s+(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-]+)(:\d{1,5})?\s*(;.*)?$")
_REQUIRED = ("from", "to", "call-id", "cseq")


@dataclass(frozen=True)
class FieldLimits:
    """Longest accepted value of each field that reaches the handler, logs or Kafka.

    Each is several times what deployed equipment sends, and about what the open-source servers
    in front of us accept, so a request within these passes any SBC and nothing is cut here:
    Kamailio's database schema stores Call-IDs in 255 characters and tags in 128; Asterisk builds
    pjproject with PJSIP_MAX_URL_SIZE 512. A real Call-ID is a UUID@host (~60 characters); a
    display name is a CNAM-style caller name (15 characters in the NANP, 50 in most PBXs).
    """

    call_id: int = 255
    uri: int = 512  # Request-URI and the From/To/Contact URIs
    display_name: int = 128
    tag: int = 128  # From/To tags
    header_value: int = 4096  # any single header value (Authorization and Route sets stay far below)
    headers: int = 128  # header count; aiosipua refuses more than 256 outright (then we cannot answer)


class MalformedMessage(ValueError):
    """A message we cannot serve. `request` is set when a 400 can still be addressed."""

    def __init__(self, reason: str, request: SipRequest | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.request = request


def parse(data: bytes, limits: FieldLimits = FieldLimits()) -> SipRequest | SipResponse:
    """Parse one datagram or TCP-framed message; raise `MalformedMessage` on anything invalid."""
    start_line = data.split(b"\n", 1)[0].rstrip(b"\r")
    try:
        message = SipMessage.parse(data)
    except (ValueError, IndexError) as exc:
        raise MalformedMessage(f"unparseable: {exc}") from exc
    if isinstance(message, SipResponse):
        if not 100 <= message.status_code <= 699 or not message.headers.get("via"):
            raise MalformedMessage("invalid response")
        return message
    _validate_request(message, start_line)
    _check_limits(message, limits)
    return message


def _validate_request(request: SipRequest, start_line: bytes) -> None:
    if not has_valid_via(request):
        raise MalformedMessage("missing or invalid Via")
    # aiosipua does not keep the protocol version, so it is checked on the raw start line.
    if not _METHOD.match(request.method) or not start_line.endswith(b" SIP/2.0"):
        raise MalformedMessage("invalid request line", request)
    missing = [name for name in _REQUIRED if not request.headers.get_first(name)]
    if missing:
        raise MalformedMessage(f"missing {', '.join(missing)}", request)
    cseq = _CSEQ.match(request.headers.get_first("cseq") or "")
    if cseq is None or cseq.group(2) != request.method:
        raise MalformedMessage("invalid CSeq", request)
    declared = request.headers.get_first("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise MalformedMessage("invalid Content-Length", request)
        if int(declared) > len(request.body):
            raise MalformedMessage("body shorter than Content-Length", request)


def _check_limits(request: SipRequest, limits: FieldLimits) -> None:
    """400 for a request with a field beyond `limits` (its Via is known good by now)."""

    def refuse(what: str, limit: int) -> MalformedMessage:
        return MalformedMessage(f"{what} longer than {limit} characters", request)

    count = sum(len(values) for _, values in request.headers.items())
    if count > limits.headers:
        raise MalformedMessage(f"more than {limits.headers} headers", request)
    if len(request.call_id or "") > limits.call_id:
        raise refuse("Call-ID", limits.call_id)
    if len(request.uri) > limits.uri:
        raise refuse("Request-URI", limits.uri)
    for name in ("From", "To", "Contact"):
        header = request.headers.get_first(name)
        if header is None:
            continue
        address = parse_address(header)
        if len(stringify_uri(address.uri)) > limits.uri:
            raise refuse(f"{name} URI", limits.uri)
        if len(address.display_name or "") > limits.display_name:
            raise refuse(f"{name} display name", limits.display_name)
        if len(address.tag or "") > limits.tag:
            raise refuse(f"{name} tag", limits.tag)
    for name, values in request.headers.items():  # last, so that the specific limits name the field
        if any(len(value) > limits.header_value for value in values):
            raise refuse(f"{name[:32]} header", limits.header_value)


def has_valid_via(message: SipMessage) -> bool:
    """Whether every Via is well formed: the top one is where a response must go."""
    vias = message.headers.get("via")
    return bool(vias) and all(_VIA.match(via) for via in vias)


def build_response(
    request: SipRequest,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    headers: Mapping[str, str | Sequence[str]] | None = None,
    body: bytes = b"",
    content_type: str | None = None,
) -> SipResponse:
    """A response that mirrors the request's Via/From/To/Call-ID/CSeq (RFC 3261 §8.2.6.2).

    `to_tag` is added to To unless the request already carries one (in-dialog requests); a
    final response outside a dialog needs some tag, so one is generated if none is given.
    A sequence value in `headers` becomes one header line per item (several digest challenges).
    """
    response = SipResponse(status_code=status, reason_phrase=reason or REASONS.get(status, ""))
    for via in request.headers.get("via"):
        response.headers.append("Via", via)
    for name in ("From", "Call-ID", "CSeq"):
        value = request.headers.get_first(name)
        if value is not None:
            response.headers.set_single(name, value)
    to = request.headers.get_first("to")
    if to is not None:
        if status > 100 and ";tag=" not in to.replace(" ", "").lower():
            to += f";tag={to_tag or generate_tag()}"
        response.headers.set_single("To", to)
    for name, given in (headers or {}).items():
        if isinstance(given, str):
            response.headers.set_single(name, given)
        else:
            for item in given:
                response.headers.append(name, item)
    if content_type is not None:
        response.headers.set_single("Content-Type", content_type)
    response.body = body
    return response
