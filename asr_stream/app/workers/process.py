"""Child processes of the daemon: spawned, linked to the main process, dying with it.

Every child is started with the "spawn" method (a fresh interpreter, never a fork): the main
process holds sockets, threads (Kafka, the event loop's executor) and, on a GPU host, must never
initialise CUDA, which a forked child could not use; the inference process initialises CUDA in
itself only. A child gets one end of a socketpair as its control `Link` to the main process; the
main process keeps the other end and a `ChildProcess` handle, which it must `stop` or `reap`.

No orphans: a child whose control link reaches end of stream (the main process exited or died,
since the kernel closes its end with it) stops at once; on Linux the kernel also kills a child
whose parent died (PR_SET_PDEATHSIG), in case its loop is stuck. Children ignore SIGINT and
SIGTERM: a Ctrl-C or a `systemctl stop` reaches the whole process group, and only the main process
decides how calls are drained; it then stops each child over its link.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import multiprocessing
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from asr_stream.app.blas_threads import limit_blas_threads
from asr_stream.app.logs import LogSettings
from asr_stream.common.ipc import Link

log = logging.getLogger(__name__)

SPAWN = multiprocessing.get_context("spawn")
#: How long a child that was asked to stop, or whose link closed, may take to exit before it is killed.
EXIT_GRACE_S = 5.0
_PR_SET_PDEATHSIG = 1

#: A child's main coroutine: given its spec and its end of the control link, returns the exit status.
ChildMain = Callable[[Any, Link], Awaitable[int]]


def _die_with_parent(parent_pid: int) -> None:
    """Linux: have the kernel kill this process when the main process dies (even if our loop is stuck)."""
    libc_name = ctypes.util.find_library("c")
    if sys.platform.startswith("linux") and libc_name:
        ctypes.CDLL(libc_name, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the parent died before the line above took effect
        os._exit(1)


def run_child(main: ChildMain, spec: object, control: socket.socket, name: str, logs: LogSettings, parent_pid: int) -> None:
    """The entry point of every child process (what `multiprocessing` runs after spawning)."""
    _die_with_parent(parent_pid)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    logs.apply(process=name)
    limit_blas_threads()

    async def linked() -> int:
        return await main(spec, await Link.adopt(control))

    try:
        status = asyncio.run(linked())
    except Exception:  # in the daemon's log format, not multiprocessing's bare traceback
        log.exception("%s failed", name)
        status = 1
    sys.exit(status)


class ChildProcess:
    """The main process's handle on one child: its process and its control link."""

    def __init__(self, name: str, main: ChildMain, spec: object, logs: LogSettings) -> None:
        self.name = name
        self._main = main
        self._spec = spec
        self._logs = logs
        self._process: multiprocessing.process.BaseProcess | None = None
        self.link: Link | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    async def start(self) -> Link:
        """Spawn the process (a fresh interpreter: it then imports for a second or two) and link to it."""
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        process = SPAWN.Process(
            target=run_child, args=(self._main, self._spec, child_end, self.name, self._logs, os.getpid()), name=self.name, daemon=True
        )
        with child_end:  # the child has its own copy once started
            try:
                process.start()
            except BaseException:
                parent_end.close()
                raise
        self._process = process
        self.link = await Link.adopt(parent_end)
        return self.link

    async def reap(self, timeout_s: float = EXIT_GRACE_S) -> int | None:
        """Wait up to `timeout_s` for the process to exit, kill it if it has not, and collect its status."""
        process = self._process
        if process is None:
            return None
        if not await _exited(process, timeout_s):
            log.warning("%s (pid %s) did not exit within %.1f s: killed", self.name, self.pid, timeout_s)
            process.kill()
            await _exited(process, EXIT_GRACE_S)
        # The sentinel reads as closed when the child's files close, a moment before the kernel lets
        # its status be collected; join(0) could then find no status yet (seen on a loaded 2-core CI
        # host), so a thread waits that moment out.
        await asyncio.to_thread(process.join, EXIT_GRACE_S)
        if self.link is not None:
            await self.link.aclose()
        return process.exitcode


async def _exited(process: multiprocessing.process.BaseProcess, timeout_s: float) -> bool:
    """Whether `process` exits within `timeout_s`, waited for on its sentinel (no thread blocked in join)."""
    loop = asyncio.get_running_loop()
    exited: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not exited.done():
            exited.set_result(None)

    loop.add_reader(process.sentinel, readable)
    try:
        await asyncio.wait_for(exited, max(timeout_s, 0.0))
        return True
    except TimeoutError:
        return False
    finally:
        loop.remove_reader(process.sentinel)
