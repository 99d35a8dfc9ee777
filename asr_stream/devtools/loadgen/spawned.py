"""A daemon to load-test on this host: the embedded Tansu broker plus `asr-stream serve` as a subprocess.

The operator's config decides the model, backend, scheduler, RTP and admission settings; only what
must point at the spawned pieces is overridden: SIP and HTTP listen on free loopback ports (or on
`host`), Kafka goes to the spawned broker and a fresh topic, the spool to a temporary directory.
A subprocess rather than an in-process daemon, so the generator's CPU and the daemon's stay apart
and the daemon is started exactly the way it is deployed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from types import TracebackType

import yaml

from asr_stream.app.config import ConfigError, load_config
from asr_stream.devtools.local_broker import LocalBroker, free_tcp_port
from asr_stream.errors import OperatorError


class DaemonStartError(OperatorError):
    """The daemon exited or never became ready; the message carries the end of its log."""


class SpawnedDaemon:
    """Context manager: Tansu and the daemon up, ready (`/readyz`), and both stopped on exit."""

    def __init__(self, config_path: Path, host: str = "127.0.0.1", ready_timeout_s: float = 300) -> None:
        self._config_path = config_path
        self._host = host
        self._ready_timeout_s = ready_timeout_s
        self._tmp = tempfile.TemporaryDirectory(prefix="callgen-daemon-")
        self._broker = LocalBroker()
        self._process: subprocess.Popen[bytes] | None = None
        self.log_path = Path(self._tmp.name) / "daemon.log"
        self.topic = f"asr.callgen.{uuid.uuid4().hex[:8]}"
        self.sip_port = 0
        self._http_port = 0

    @property
    def sip(self) -> tuple[str, int]:
        return (self._host, self.sip_port)

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self._http_port}/metrics"

    @property
    def bootstrap(self) -> str:
        return self._broker.bootstrap_servers

    def _config(self) -> Path:
        """The operator's config with the spawned pieces' addresses in it, validated like `serve` would."""
        try:
            document = yaml.safe_load(self._config_path.read_text()) or {}
        except (OSError, yaml.YAMLError) as error:
            raise OperatorError(f"{self._config_path}: cannot read: {error}") from None
        self.sip_port, self._http_port = free_tcp_port(self._host), free_tcp_port()
        document["sip"] = {**document.get("sip", {}), "listen": f"{self._host}:{self.sip_port}"}
        document["http"] = {**document.get("http", {}), "listen": f"127.0.0.1:{self._http_port}"}
        document["rtp"] = {**document.get("rtp", {}), "bind": self._host}
        document["kafka"] = {
            **document.get("kafka", {}),
            "bootstrap_servers": self._broker.bootstrap_servers,
            "topic": self.topic,
            "spool_dir": str(Path(self._tmp.name) / "spool"),
            "embedded": False,
        }
        path = Path(self._tmp.name) / "config.yaml"
        path.write_text(yaml.safe_dump(document))
        try:
            load_config(path)  # every problem named before anything starts
        except ConfigError as error:
            raise OperatorError(f"{self._config_path}: {'; '.join(error.problems)}") from None
        return path

    def __enter__(self) -> SpawnedDaemon:
        try:
            config = self._config()
            self._broker.start()
            with self.log_path.open("wb") as log:
                self._process = subprocess.Popen(
                    [sys.executable, "-m", "asr_stream.cli", "--log-format", "text", "serve", "--config", str(config)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=os.environ.copy(),
                )
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self._ready_timeout_s
        url = f"http://127.0.0.1:{self._http_port}/readyz"
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                raise DaemonStartError(f"the daemon exited with {self._process.returncode}: {self.log_tail()}")
            with (
                contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError),
                urllib.request.urlopen(url, timeout=1) as response,
            ):
                if response.status == 200:
                    return
            time.sleep(0.2)
        raise DaemonStartError(f"the daemon was not ready within {self._ready_timeout_s:.0f} s: {self.log_tail()}")

    def log_tail(self, chars: int = 1500) -> str:
        return self.log_path.read_text(errors="replace")[-chars:].strip() if self.log_path.exists() else ""

    def stop(self, timeout_s: float = 30) -> None:
        """SIGTERM (the daemon hangs up, flushes its finals and Kafka), SIGKILL after `timeout_s`."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._broker.stop()
        self._tmp.cleanup()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None) -> None:
        self.stop()
