"""A child process's handle reports the status the child exited with (app/workers/process.py)."""

from __future__ import annotations

import asyncio

from asr_stream.app.logs import LogSettings
from asr_stream.app.workers.process import ChildProcess
from asr_stream.common.ipc import Link


async def exit_with(status: object, link: Link) -> int:
    """A child's main that returns at once: its exit status is its spec."""
    assert isinstance(status, int)
    return status


async def test_reaping_children_that_exit_together_collects_every_status() -> None:
    """The sentinel reads as closed a moment before the kernel lets the status be collected; a
    handle that did not wait that moment out reported None for about half of these children."""
    children = [ChildProcess(f"exit-{status}", exit_with, status, LogSettings()) for status in range(20, 28)]
    for child in children:
        await child.start()
    statuses = await asyncio.gather(*(child.reap(timeout_s=60) for child in children))
    assert statuses == list(range(20, 28))
