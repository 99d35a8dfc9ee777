"""Messages between the daemon's own processes: length-prefixed pickle frames on Unix sockets.

Why this and not `multiprocessing.connection`: that API blocks, and every process of the daemon is
an asyncio loop that must keep serving RTP, SIP or the scheduler while it waits for a peer. A
frame is a 4-byte big-endian length and a pickle (protocol 5). Pickle is acceptable here because
both ends are processes of the same daemon on private sockets (a socketpair, or a path inside a
0700 directory) and only small control messages travel this way: audio goes through shared memory
(`common.shm_arena`), never through a pickle.

A `Link` carries one-way messages (`send`) and requests that the peer answers (`request` /
`reply`); `receive()` yields what the peer sent, in order, and when the peer closes or dies it
ends and every request still waiting fails with `LinkClosed`. That end of stream is also how a child
notices its parent died: the kernel closes the parent's end with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import pickle
import socket
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

_HEADER = struct.Struct("!I")
#: Larger frames are refused: a control message is a few hundred bytes, a metrics snapshot a few KiB.
MAX_FRAME_BYTES = 16 * 2**20
#: Stream buffer of a link; a frame larger than this is still read whole (readexactly).
_LIMIT = 2**20
#: Messages received but not yet taken by `receive()`; beyond, the link stops reading the socket.
INBOX_MESSAGES = 4096
#: Bytes a peer may leave unread before the link is given up as stuck (a bound, not a goal).
MAX_UNSENT_BYTES = 256 * 2**20
_END = object()  # inbox marker: wakes a reader waiting when the link closes


class LinkClosed(ConnectionError):
    """The peer closed the link or its process ended."""


@dataclass(frozen=True, slots=True)
class Request:
    """A message the peer waits to have answered with `Link.reply`."""

    id: int
    body: Any


@dataclass(frozen=True, slots=True)
class _Reply:
    id: int
    value: Any
    error: BaseException | None


class Link:
    """One framed, bidirectional connection to another process of the daemon.

    A reader task (owned by the link, ended by `close`) reads every frame as it arrives: replies
    resolve `request()` at once, other messages wait in a bounded inbox for `receive()`, so a
    reply is never stuck behind messages nobody is reading yet. When the inbox is full the reader
    stops reading and the peer's writes back up in the socket: flow control without a new queue.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._ids = itertools.count()
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._inbox: asyncio.Queue[Any] = asyncio.Queue(INBOX_MESSAGES)
        self._eof = False  # nothing more will enter the inbox
        self._closed = False
        self._reading = asyncio.create_task(self._read(), name="link-reader")

    @classmethod
    async def connect(cls, path: str) -> Link:
        """Connect to a listening Unix socket (raises OSError if nothing listens there)."""
        reader, writer = await asyncio.open_unix_connection(path, limit=_LIMIT)
        return cls(reader, writer)

    @classmethod
    async def adopt(cls, sock: socket.socket) -> Link:
        """Wrap one end of a socketpair (e.g. one handed to a child process at spawn)."""
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=_LIMIT)
        return cls(reader, writer)

    @property
    def closed(self) -> bool:
        return self._closed or self._writer.is_closing()

    def send(self, body: object) -> None:
        """Queue one message for the peer; raises LinkClosed once the link is closed."""
        if self.closed:
            raise LinkClosed("link closed")
        payload = pickle.dumps(body, protocol=5)
        if len(payload) > MAX_FRAME_BYTES:
            raise ValueError(f"message of {len(payload)} bytes exceeds the {MAX_FRAME_BYTES}-byte frame limit")
        if self._writer.transport.get_write_buffer_size() > MAX_UNSENT_BYTES:
            self.close()
            raise LinkClosed(f"the peer has not read {MAX_UNSENT_BYTES} bytes: it is stuck")
        self._writer.write(_HEADER.pack(len(payload)) + payload)

    async def request(self, body: object) -> Any:
        """Send `body` as a Request and wait for the peer's reply (its error is raised here)."""
        request = Request(next(self._ids), body)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[request.id] = future
        try:
            self.send(request)
            return await future
        finally:
            self._waiting.pop(request.id, None)

    def reply(self, request: Request, value: object = None, error: BaseException | None = None) -> None:
        """Answer `request`; a peer that has gone away is not an error here."""
        if not self.closed:
            self.send(_Reply(request.id, value, error))

    async def drain(self) -> None:
        """Wait until what was sent has been handed to the kernel (flow control)."""
        if not self.closed:
            try:
                await self._writer.drain()
            except ConnectionError as error:
                raise LinkClosed(str(error)) from error

    async def receive(self) -> AsyncIterator[Any]:
        """Messages and `Request`s from the peer, in order, until it closes (safe to stop iterating and resume)."""
        while not (self._eof and self._inbox.empty()):
            message = await self._inbox.get()
            if message is not _END:  # _END only wakes a reader waiting on an empty inbox
                yield message

    def close(self) -> None:
        self._ended()
        self._writer.close()
        self._reading.cancel()

    async def aclose(self) -> None:
        """Close and wait for the reader task and the socket."""
        self.close()
        await asyncio.gather(self._reading, return_exceptions=True)
        with contextlib.suppress(ConnectionError):
            await self._writer.wait_closed()

    async def _read(self) -> None:
        try:
            while True:
                (size,) = _HEADER.unpack(await self._reader.readexactly(_HEADER.size))
                if size > MAX_FRAME_BYTES:
                    raise LinkClosed(f"frame of {size} bytes exceeds the limit")
                message = pickle.loads(await self._reader.readexactly(size))
                if isinstance(message, _Reply):
                    self._resolve(message)
                else:
                    await self._inbox.put(message)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the peer closed the link or died
        except asyncio.CancelledError:  # closed on this side
            self._end_of_stream()
            raise
        except Exception:
            log.exception("unreadable message: link closed")
        self._end_of_stream()

    def _end_of_stream(self) -> None:
        """No more messages: what is in the inbox is still read, then `receive()` ends."""
        self._ended()
        self._eof = True
        with contextlib.suppress(asyncio.QueueFull):  # a full inbox has a reader coming back to it
            self._inbox.put_nowait(_END)

    def _ended(self) -> None:
        self._closed = True
        self._fail_waiting()

    def _resolve(self, reply: _Reply) -> None:
        future = self._waiting.get(reply.id)
        if future is None or future.done():
            return
        if reply.error is not None:
            future.set_exception(reply.error)
        else:
            future.set_result(reply.value)

    def _fail_waiting(self) -> None:
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(LinkClosed("the peer closed the link"))
        self._waiting.clear()
