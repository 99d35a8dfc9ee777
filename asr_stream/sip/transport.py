"""SIP over UDP and TCP on one address: bytes in, bytes out, with hard size limits.

Written here rather than taken from aiosipua because its transports drop unparseable input
silently (we must answer 400 where we can, and count the rest), keep no per-message size limit
on UDP, and assert in `connection_made` on Python 3.11. Framing on TCP follows RFC 3261 §18.3:
headers up to the blank line, then exactly Content-Length bytes; a stream whose framing is
broken cannot be resynchronised, so the connection is closed.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass

from asr_stream.sip.call import Transport

log = logging.getLogger(__name__)

_CONTENT_LENGTH = re.compile(rb"^(?:content-length|l)[ \t]*:[ \t]*(\S*)[ \t]*\r?$", re.IGNORECASE | re.MULTILINE)


@dataclass(frozen=True)
class Peer:
    """Where a message came from, and so where (and how) its answer goes."""

    transport: Transport
    address: tuple[str, int]


@dataclass(frozen=True)
class TransportLimits:
    """Caps on what one peer can make us buffer."""

    max_message_bytes: int = 32 * 1024  # a SIPREC INVITE is ~5 KiB; nothing real comes close
    max_tcp_connections: int = 1024


MessageSink = Callable[[bytes, Peer], None]
DropSink = Callable[[str], None]
SourceCheck = Callable[[str], bool]  # peer host -> may it connect


class SipTransports:
    """A UDP socket and a TCP listener on the same host and port."""

    def __init__(
        self, host: str, port: int, on_message: MessageSink, on_drop: DropSink, limits: TransportLimits, admit: SourceCheck
    ) -> None:
        self._host = host
        self._port = port
        self._on_message = on_message
        self._on_drop = on_drop
        self._limits = limits
        self._admit = admit
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp_server: asyncio.Server | None = None
        self._tcp_writers: dict[tuple[str, int], asyncio.StreamWriter] = {}
        self._tcp_tasks: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        """The bound port (the configured one, or the one the OS chose for port 0)."""
        return self._port

    async def start(self) -> None:
        """Bind UDP first (so port 0 picks a number), then TCP on the same number.

        With port 0 the number the OS gave UDP may be taken for TCP; another is tried then.
        """
        attempts = 20 if self._port == 0 else 1
        for attempt in range(attempts):
            try:
                await self._bind(self._port)
                return
            except OSError:
                if attempt == attempts - 1:
                    raise

    async def _bind(self, port: int) -> None:
        loop = asyncio.get_running_loop()
        self._udp, _ = await loop.create_datagram_endpoint(lambda: _UdpProtocol(self._received_datagram), local_addr=(self._host, port))
        bound = self._udp.get_extra_info("sockname")[1]
        try:
            self._tcp_server = await asyncio.start_server(self._serve_tcp, self._host, bound, limit=self._limits.max_message_bytes)
        except OSError:
            self._udp.close()
            self._udp = None
            raise
        self._port = bound

    def send(self, data: bytes, peer: Peer) -> bool:
        """Send one message; False when the peer's TCP connection is gone (nothing to do then)."""
        if peer.transport == "udp":
            if self._udp is None:
                return False
            self._udp.sendto(data, peer.address)
            return True
        writer = self._tcp_writers.get(peer.address)
        if writer is None or writer.is_closing():
            return False
        writer.write(data)
        return True

    async def close(self) -> None:
        """Close the listener and every connection, and wait for their readers to finish."""
        if self._tcp_server is not None:
            self._tcp_server.close()
        for writer in list(self._tcp_writers.values()):
            writer.close()
        for task in list(self._tcp_tasks):
            task.cancel()
        await asyncio.gather(*self._tcp_tasks, return_exceptions=True)
        if self._tcp_server is not None:
            await self._tcp_server.wait_closed()
        if self._udp is not None:
            self._udp.close()

    def _received_datagram(self, data: bytes, address: tuple[str, int]) -> None:
        if len(data) > self._limits.max_message_bytes:
            self._on_drop("oversized")
            return
        if data.strip(b"\r\n"):  # a bare CRLF is a keep-alive (RFC 5626 §4.4.1), not a message
            self._on_message(data, Peer("udp", address))

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peername = writer.get_extra_info("peername")
        address = (str(peername[0]), int(peername[1]))
        if not self._admit(address[0]):  # before reading a byte: an outsider gets nothing but a close
            writer.close()
            return
        if len(self._tcp_writers) >= self._limits.max_tcp_connections:
            self._on_drop("tcp_connection_limit")
            writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        self._tcp_tasks.add(task)
        self._tcp_writers[address] = writer
        try:
            while (message := await self._read_message(reader, writer)) is not None:
                self._on_message(message, Peer("tcp", address))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._tcp_tasks.discard(task)
            self._tcp_writers.pop(address, None)
            writer.close()

    async def _read_message(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes | None:
        """One framed message, or None when the connection ends or its framing is broken."""
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.LimitOverrunError:
                self._on_drop("oversized")
                return None
            if head.strip(b"\r\n"):
                break
            writer.write(b"\r\n")  # RFC 5626 §4.4.1 keep-alive: CRLFCRLF ping, CRLF pong
        head = head.lstrip(b"\r\n")
        match = _CONTENT_LENGTH.search(head)
        declared = match.group(1) if match else b"0"
        if not declared.isdigit():
            self._on_drop("framing")
            return None
        length = int(declared)
        if len(head) + length > self._limits.max_message_bytes:
            self._on_drop("oversized")
            return None
        return head + await reader.readexactly(length)


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, on_datagram: Callable[[bytes, tuple[str, int]], None]) -> None:
        self._on_datagram = on_datagram

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        # IPv6 addresses come as 4-tuples (host, port, flowinfo, scope_id).
        self._on_datagram(data, (str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable from a peer that went away: not our problem, not fatal.
        log.debug("UDP error: %s", exc)
