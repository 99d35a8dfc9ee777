"""Several asr-stream daemons behind a real Kamailio, as processes on 127.0.0.1, for scale-out tests.

A `Replica` is `asr-stream serve` run as a subprocess (the way systemd or Kubernetes runs it) on
its own SIP port, HTTP port, RTP port range and spool. `Kamailio` runs the shipped
deploy/kamailio/kamailio.cfg unchanged, with its preprocessor defines pointed at a temporary
directory and a dispatcher list naming the replicas; `kamcmd` reads the dispatcher's view of them.
Every process is started in its own session and stopped (then killed, if it must be) by its pid.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families

from asr_stream.devtools.local_broker import LOCALHOST, free_tcp_port

REPO = Path(__file__).resolve().parents[1]
KAMAILIO_CFG = REPO / "deploy" / "kamailio" / "kamailio.cfg"
# Debian installs Kamailio's binaries in /usr/sbin, which an unprivileged PATH may lack.
SBIN_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"])
RTP_PORTS_PER_REPLICA = 100


def sbin(name: str) -> str:
    found = shutil.which(name, path=SBIN_PATH)
    if found is None:
        raise RuntimeError(f"{name} not found: `make system-packages` installs Debian's kamailio package")
    return found


def stop_process(process: subprocess.Popen, sig: signal.Signals = signal.SIGTERM, timeout_s: float = 30) -> int:
    """Signal one process we started and wait for it; kill it if it outlives the timeout."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    return process.returncode


def tail(path: Path, chars: int = 4000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""


@dataclass
class Replica:
    """One `asr-stream serve` process. `sip_port` is fixed after the first start, so a restart
    comes back at the address Kamailio's dispatcher list names."""

    name: str
    workdir: Path
    config: dict
    sip_port: int = 0
    process: subprocess.Popen | None = field(default=None, repr=False)

    @classmethod
    def create(cls, name: str, workdir: Path, bootstrap: str, topic: str, rtp_base: int, **sip: object) -> Replica:
        """A replica publishing to `topic` (created with 4 partitions by whichever starts first)."""
        workdir.mkdir(parents=True, exist_ok=True)
        config = {
            "sip": {"listen": f"{LOCALHOST}:0", **sip},
            "rtp": {"port_range": [rtp_base, rtp_base + RTP_PORTS_PER_REPLICA - 1], "bind": LOCALHOST},
            "http": {"listen": f"{LOCALHOST}:{free_tcp_port()}"},
            "kafka": {"bootstrap_servers": bootstrap, "topic": topic, "partitions": 4, "spool_dir": str(workdir / "spool")},
            "model": "whisper-tiny.en",
            "engines_dir": str(REPO / "engines"),
        }
        return cls(name, workdir, config)

    @property
    def log_path(self) -> Path:
        return self.workdir / "serve.log"

    @property
    def http_url(self) -> str:
        return f"http://{self.config['http']['listen']}"

    @property
    def uri(self) -> str:
        return f"sip:{LOCALHOST}:{self.sip_port}"

    def owns_rtp_port(self, port: int) -> bool:
        low, high = self.config["rtp"]["port_range"]
        return low <= port <= high

    def start(self, timeout_s: float = 120) -> None:
        """Run `asr-stream serve` and return once /readyz answers 200 (model loaded, SIP up, Kafka)."""
        if self.sip_port:
            self.config["sip"]["listen"] = f"{LOCALHOST}:{self.sip_port}"
        config_path = self.workdir / "config.yaml"
        config_path.write_text(yaml.safe_dump(self.config))
        log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0  # a restart appends
        with self.log_path.open("a") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "asr_stream.cli", "serve", "--config", str(config_path)],
                cwd=REPO, env=os.environ | {"PYTHONUNBUFFERED": "1"}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"replica {self.name} exited {self.process.returncode}:\n{tail(self.log_path)}")
            ready = re.search(r"asr-stream ready: SIP \S+ \(port (\d+)\)", self.log_path.read_text(errors="replace")[log_offset:])
            if ready and self._http_status("/readyz") == 200:
                self.sip_port = int(ready.group(1))
                return
            time.sleep(0.2)
        raise RuntimeError(f"replica {self.name} not ready after {timeout_s} s:\n{tail(self.log_path)}")

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> int:
        assert self.process is not None
        return stop_process(self.process, sig, timeout_s=60)

    def _http_status(self, path: str) -> int | None:
        try:
            with urllib.request.urlopen(self.http_url + path, timeout=2) as response:
                return response.status
        except urllib.error.HTTPError as error:
            return error.code
        except OSError:
            return None

    def metric(self, name: str, **labels: str) -> float:
        """The sum of a sample of this replica's /metrics over the series matching `labels`."""
        with urllib.request.urlopen(self.http_url + "/metrics", timeout=5) as response:
            text = response.read().decode()
        return sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == name and labels.items() <= sample.labels.items()
        )


@dataclass
class Kamailio:
    """The shipped kamailio.cfg in the foreground, logging to a file, controlled over its own socket."""

    workdir: Path
    port: int
    process: subprocess.Popen = field(repr=False)

    @classmethod
    def start(cls, workdir: Path, replicas: list[Replica], ping_interval_s: int = 1, timeout_ms: int = 1000) -> Kamailio:
        workdir.mkdir(parents=True, exist_ok=True)
        dispatcher_list = workdir / "dispatcher.list"
        write_dispatcher_list(dispatcher_list, replicas)
        port = free_tcp_port()
        defines = {
            "SIP_ADDRESS": LOCALHOST,
            "SIP_PORT": port,
            "DISPATCHER_LIST": f'"{dispatcher_list}"',
            "CTL_SOCKET": f'"unix:{workdir / "ctl"}"',
            "DS_PING_INTERVAL": ping_interval_s,
            "TM_TIMEOUT_MS": timeout_ms,
        }
        command = [
            sbin("kamailio"),
            "-DD",
            "-E",
            "-f",
            str(KAMAILIO_CFG),
            "-Y",
            str(workdir),
            "-P",
            str(workdir / "kamailio.pid"),
            "-w",
            str(workdir),
        ]
        for name, value in defines.items():
            command += ["-A", f"{name}={value}"]
        with (workdir / "kamailio.log").open("w") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        kamailio = cls(workdir, port, process)
        try:
            kamailio.wait_for_states({replica.uri: "A" for replica in replicas}, timeout_s=20)
        except BaseException:
            kamailio.stop()
            raise
        return kamailio

    @property
    def target(self) -> str:
        return f"{LOCALHOST}:{self.port}"

    @property
    def log(self) -> str:
        return (self.workdir / "kamailio.log").read_text(errors="replace")

    def kamcmd(self, *command: str) -> str:
        result = subprocess.run(
            [sbin("kamcmd"), "-s", f"unix:{self.workdir / 'ctl'}", *command], check=False, capture_output=True, text=True, timeout=10
        )
        if result.returncode != 0:
            raise RuntimeError(f"kamcmd {' '.join(command)}: {result.stderr or result.stdout}")
        return result.stdout

    def states(self) -> dict[str, str]:
        """Destination URI -> dispatcher flags (A active, I inactive, T trying, D disabled; P probing)."""
        return dict(re.findall(r"URI: (\S+)\s+FLAGS: (\w+)", self.kamcmd("dispatcher.list")))

    def wait_for_states(self, wanted: dict[str, str], timeout_s: float) -> None:
        """Until each URI's state flag (the first letter) is the wanted one."""
        deadline = time.monotonic() + timeout_s
        states: dict[str, str] = {}
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"kamailio exited {self.process.returncode}:\n{self.log[-4000:]}")
            try:
                states = self.states()
            except RuntimeError:  # the control socket is not up yet
                states = {}
            if all(states.get(uri, "")[:1] == flag for uri, flag in wanted.items()):
                return
            time.sleep(0.2)
        raise AssertionError(f"dispatcher states {states}, wanted {wanted}:\n{self.log[-4000:]}")

    def stop(self) -> int:
        return stop_process(self.process, timeout_s=10)


def write_dispatcher_list(path: Path, replicas: list[Replica]) -> None:
    """Set 1 as deploy/kamailio/dispatcher.list lays it out, one line per replica."""
    lines = [f"1 {replica.uri} 0 0 duid={replica.name};maxload=50" for replica in replicas]
    path.write_text("\n".join(lines) + "\n")
