"""Place real test calls with SIPp: any audio file, streamed as G.711 RTP to a SIP target.

Used by `asr-stream call` (an operator's smoke test of a deployment), by `make run`'s printed
demo command, by the end-to-end tests and by `bench/load.py`: one way to drive the daemon the way
a gateway does. SIPp (Debian `sip-tester`) streams a raw, headerless G.711 file at 20 ms per
packet; the file path in `rtp_stream` is literal (SIPp substitutes no keywords there), so a
scenario is written per audio file. ACK and BYE go to the answer's Contact through the route set
its Record-Route built (RFC 3261 12.2.1.1), so the same call works straight to a daemon and through
a SIP proxy such as Kamailio in front of several (deploy/kamailio).
"""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from asr_stream.audio.wavfile import load_audio
from asr_stream.ingest.resample import resample
from asr_stream.rtp.g711 import alaw_encode, ulaw_encode

log = logging.getLogger(__name__)

CODECS = {"PCMU": (0, ulaw_encode), "PCMA": (8, alaw_encode)}
_CALL_ID = re.compile(r"^Call-ID: *(\S+)", re.MULTILINE)
_STATUS_LINE = re.compile(r"^SIP/2\.0 \d{3} .*$", re.MULTILINE)

SCENARIO = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="asr-stream test call: stream one file, then hang up">
  <send retrans="500"><![CDATA[

      INVITE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 INVITE
      Contact: <sip:sipp@[local_ip]:[local_port];transport=[transport]>
      Max-Forwards: 70
{extra_headers}      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=user1 53655765 1 IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [rtpstream_audio_port] RTP/AVP {payload_type}
      a=rtpmap:{payload_type} {codec}/8000
      a=sendrecv

  ]]></send>
  <recv response="100" optional="true"/>
  <recv response="200" rrs="true"/>
  <send><![CDATA[

      ACK [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 1 ACK
      [routes]
      Max-Forwards: 70
      Content-Length: 0

  ]]></send>
  <nop><action><exec rtp_stream="{audio_file},1,{payload_type}"/></action></nop>
  <pause milliseconds="{pause_ms}"/>
  <send retrans="500"><![CDATA[

      BYE [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 2 BYE
      [routes]
      Max-Forwards: 70
      Content-Length: 0

  ]]></send>
  <recv response="200" crlf="true"/>
</scenario>
"""


class SippError(RuntimeError):
    """SIPp is missing, or a call it placed failed (the message carries SIPp's own account)."""


@dataclass(frozen=True)
class SippRun:
    returncode: int
    output: str  # SIPp's own account (statistics, errors)
    messages: str  # its -trace_msg log: every SIP message sent and received

    @property
    def log(self) -> str:
        return self.output + self.messages

    @property
    def call_id(self) -> str | None:
        """The Call-ID of the (first) call, from the message trace."""
        found = _CALL_ID.search(self.messages)
        return found.group(1) if found else None

    def sent_at(self, method: str) -> float | None:
        """Wall time (epoch s) SIPp first sent a `method` request, from the trace's time stamps.

        Benchmarks take the ACK's: SIPp starts the call's RTP stream right after it.
        """
        sent = re.search(rf"-{{20,}} (\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+)\s+UDP message sent \(\d+ bytes\):\s+{method} ", self.messages)
        return datetime.fromisoformat(sent.group(1)).timestamp() if sent else None

    def statuses(self) -> list[str]:
        """Every distinct SIP status line SIPp saw (for a failure report)."""
        return sorted(set(_STATUS_LINE.findall(self.log)))

    def explain(self) -> str:
        """The tail of both, for a failure report."""
        return f"sipp exited {self.returncode}\n{self.output[-3000:]}\n--- messages ---\n{self.messages[-4000:]}"


def telephone_pcm(audio_file: str | Path) -> np.ndarray:
    """The file's first channel as 8 kHz int16, cut to whole 20 ms packets."""
    audio, _ = load_audio(audio_file)
    pcm = np.round(np.clip(resample(audio[0], 16_000, 8_000), -1, 1) * 32767).astype(np.int16)
    return pcm[: pcm.shape[0] // 160 * 160]


def write_call(
    pcm_8k: np.ndarray, workdir: Path, codec: str = "PCMU", hangup_after_s: float = 0.6, headers: Mapping[str, str] | None = None
) -> Path:
    """Write the G.711 file and the scenario that streams it; returns the scenario path.

    `hangup_after_s` is how long the caller stays on the line after the audio ends; `headers` go
    into the INVITE (e.g. {"X-ASR-Hotwords": "housing"}).
    """
    lines = [f"{name}: {value}" for name, value in (headers or {}).items()]
    if any(not line.isprintable() or "[" in line for line in lines):
        raise SippError(f"a header must be one printable line without SIPp's [keywords]: {lines}")
    payload_type, encode = CODECS[codec]
    workdir.mkdir(parents=True, exist_ok=True)
    audio_file = workdir / f"speech.{codec.lower()}"
    audio_file.write_bytes(encode(pcm_8k))
    pause_ms = round(1000 * pcm_8k.shape[0] / 8000 + 1000 * hangup_after_s)
    scenario = workdir / f"stream_{codec.lower()}.xml"
    extra_headers = "".join(f"      {line}\n" for line in lines)
    scenario.write_text(
        SCENARIO.format(
            payload_type=payload_type, codec=codec, audio_file=audio_file.resolve(), pause_ms=pause_ms, extra_headers=extra_headers
        )
    )
    return scenario


#: SIPp's exit status when it cannot bind a socket (-2): a port that was free when chosen was taken
#: before SIPp bound it, or the media port's neighbours (SIPp binds -mp and the ports after it) were
#: in use. Nothing was sent yet, so the run is started again on other ports.
EXIT_BIND_FAILED = 254
#: How many times a run that could not bind is started in all.
BIND_ATTEMPTS = 3


def _free_port(host: str) -> int:
    """A port free for both UDP and TCP right now (SIPp binds both with `-t t1`)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((host, 0))
            port = int(udp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((host, port))
                except OSError:
                    continue
                return port
    raise SippError(f"no port free for both UDP and TCP on {host}")


async def run_sipp(
    target: str,
    scenario_args: list[str],
    workdir: Path,
    *,
    calls: int = 1,
    rate: float | None = None,
    timeout_s: float = 60,
    local_ip: str = "127.0.0.1",
    transport: str = "u1",
) -> SippRun:
    """Run SIPp against `target` (host:port) with `calls` calls; bounded in time, always reaped.

    `scenario_args`: `-sn NAME` or `-sf FILE`, plus any other SIPp options. `rate` is calls per
    second (default: all at once); `transport` SIPp's `-t` (u1: UDP, t1: TCP).
    """
    sipp = shutil.which("sipp")
    if sipp is None:
        raise SippError("sipp not found: install Debian's sip-tester package")
    for _ in range(BIND_ATTEMPTS):
        trace = workdir / f"sipp-{time.monotonic_ns()}.msg"
        command = [
            sipp, target, *scenario_args, "-t", transport, "-i", local_ip, "-p", str(_free_port(local_ip)),
            "-mi", local_ip, "-mp", str(_free_port(local_ip)), "-m", str(calls), "-l", str(calls),
            "-r", str(rate or calls), "-nostdin", "-timeout", f"{int(timeout_s)}s", "-timeout_error",
            "-trace_msg", "-message_file", str(trace),
        ]  # fmt: skip
        process = await asyncio.create_subprocess_exec(
            *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=workdir
        )
        try:
            output, _ = await asyncio.wait_for(process.communicate(), timeout=timeout_s + 10)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        messages = trace.read_text(errors="replace") if trace.exists() else ""
        if process.returncode != EXIT_BIND_FAILED:
            break
        log.info("sipp could not bind its ports: starting it again on others")
        trace.unlink(missing_ok=True)
    return SippRun(process.returncode or 0, output.decode(errors="replace"), messages)


async def place_call(
    target: str,
    audio_file: str | Path,
    workdir: Path,
    *,
    codec: str = "PCMU",
    calls: int = 1,
    rate: float | None = None,
    hangup_after_s: float = 0.6,
    headers: Mapping[str, str] | None = None,
) -> SippRun:
    """Stream `audio_file` to `target` in `calls` calls (`headers` added to each INVITE); raise SippError unless all succeed."""
    pcm = telephone_pcm(audio_file)
    scenario = write_call(pcm, workdir, codec, hangup_after_s, headers)
    timeout_s = pcm.shape[0] / 8000 + hangup_after_s + 30 + (calls / rate if rate else 0)
    result = await run_sipp(target, ["-sf", str(scenario)], workdir, calls=calls, rate=rate, timeout_s=timeout_s)
    if result.returncode != 0:
        raise SippError(result.explain())
    return result
