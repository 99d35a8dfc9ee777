"""`asr-stream run`: the embedded default in one command (what `make run` calls).

Prepares the configured model if needed, starts the bundled Kafka-protocol broker when the
config says `kafka.embedded: true`, runs the daemon, and prints what to paste into another
terminal to place a call with real speech and to watch the transcripts arrive.
"""

from __future__ import annotations

import asyncio
import shlex
import sys
from pathlib import Path

from asr_stream.app.config import Config, load_config, split_hostport
from asr_stream.app.daemon import Daemon, serve
from asr_stream.app.logs import LogSettings
from asr_stream.devtools.local_broker import LocalBroker
from asr_stream.inference.models import prepare_model

DEMO_AUDIO = Path("deploy/demo/speech.wav")


def _banner(config: Config, daemon: Daemon) -> str:
    assert daemon.ingest is not None
    sip_host, _ = split_hostport(config.settings.sip.listen)
    target = f"{sip_host}:{daemon.ingest.sip.port}"
    exe = shlex.quote(sys.argv[0]) if sys.argv and sys.argv[0].endswith("asr-stream") else "asr-stream"
    kafka = config.settings.kafka
    return "\n".join(
        [
            "",
            "asr-stream is running",
            f"  SIP (UDP+TCP): {target}      model: {config.settings.model} on {config.settings.backend}",
            f"  Kafka topic:   {kafka.topic} at {kafka.bootstrap_servers}" + ("  (embedded Tansu broker)" if kafka.embedded else ""),
            f"  HTTP:          http://{config.settings.http.listen}/healthz",
            "",
            "Place a call that streams real speech (SIPp, G.711 mu-law):",
            f"  {exe} call {target} {DEMO_AUDIO}",
            "Watch the transcript events:",
            f"  {exe} tail --bootstrap {kafka.bootstrap_servers} --topic {kafka.topic}",
            "Stop with Ctrl-C (open calls are finalised and flushed first).",
            "",
        ]
    )


def run_local(config_path: str | Path, json_logs: bool = False) -> int:
    config = load_config(config_path)
    prepare_model(config.settings.model, engines_dir=config.settings.engines_dir)
    logs = LogSettings(json_lines=json_logs, known_secrets=tuple(config.secrets()))
    logs.apply(process="main" if config.workers > 1 else None)
    broker: LocalBroker | None = None
    if config.settings.kafka.embedded:
        _, port = split_hostport(config.settings.kafka.bootstrap_servers)  # on loopback: the config checks it
        broker = LocalBroker(port=port)
        broker.start()
    try:
        return asyncio.run(serve(config, on_ready=lambda daemon: print(_banner(config, daemon), flush=True), logs=logs))
    finally:
        if broker is not None:
            broker.stop()
