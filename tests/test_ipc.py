"""Framed messages between the daemon's processes (common/ipc.py), over a real Unix socketpair."""

from __future__ import annotations

import asyncio
import socket

import pytest

from asr_stream.common.ipc import Link, LinkClosed, Request

pytestmark = pytest.mark.timeout(30)


async def linked() -> tuple[Link, Link]:
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    return await Link.adopt(left), await Link.adopt(right)


async def test_requests_are_answered_with_values_or_errors_and_messages_keep_their_order() -> None:
    a, b = await linked()

    async def serve() -> None:
        async for message in b.receive():
            if isinstance(message, Request):
                if message.body == "fail":
                    b.reply(message, error=ValueError("no such codec"))
                else:
                    b.reply(message, message.body * 2)

    server = asyncio.create_task(serve())
    assert await a.request(21) == 42
    with pytest.raises(ValueError, match="no such codec"):
        await a.request("fail")
    for i in range(1000):
        b.send(("event", i))
    received = []
    async for message in a.receive():
        received.append(message)
        if len(received) == 1000:
            break
    assert received == [("event", i) for i in range(1000)]
    await a.aclose()
    await server  # b's receive() ended when a closed
    await b.aclose()


async def test_what_was_sent_before_the_peer_closed_is_still_read_and_waiting_requests_fail() -> None:
    a, b = await linked()
    pending = asyncio.create_task(a.request("never answered"))
    for i in range(5000):  # more than the inbox holds: the rest waits in the socket
        b.send(i)
    await b.drain()
    await b.aclose()
    assert [message async for message in a.receive()] == list(range(5000))
    assert [message async for message in a.receive()] == [], "a second receive() ends at once"
    with pytest.raises(LinkClosed):
        await pending
    with pytest.raises(LinkClosed):
        a.send("late")
    await a.aclose()
