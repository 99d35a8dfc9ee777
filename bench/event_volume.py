"""Bytes of transcript events per second of call: the figure that sizes the Kafka spool.

Run by hand:  .venv/bin/python bench/event_volume.py [--clips ID ...]

One real call (SIPp, G.711) streams the shared speech clips back to back into the daemon (this
process, Whisper tiny.en on ONNX Runtime, an embedded Tansu broker); a publish hook counts every
event and the bytes of its Kafka record (key + value, plus the spool's 12-byte frame header, as it
would sit in the spool). Reported per second of call audio, by event type, with partials and
without (the spool stops taking partials at 80 % full, docs/operations.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import soundfile
import yaml

from asr_stream.app.config import load_config
from asr_stream.app.daemon import Daemon
from asr_stream.devtools.local_broker import LocalBroker, free_tcp_port
from asr_stream.devtools.sipp import place_call
from asr_stream.transcript.events import TranscriptEvent

REPO = Path(__file__).resolve().parents[1]
SPEECH = REPO.parent / "shared" / "speech"
CLIPS = ("en8k_asterisk_demo-moreinfo", "en8k_asterisk_conf-usermenu", "en8k_asterisk_vm-opts-full", "en_ljspeech_LJ001-0003")
FRAME_HEADER = 12


async def measure(clips: list[str], workdir: Path) -> None:
    rows = {row["id"]: row for row in map(json.loads, (SPEECH / "manifest.jsonl").read_text().splitlines())}
    parts = []
    for clip_id in clips:
        samples, rate = soundfile.read(SPEECH / rows[clip_id]["path_wav16k"], dtype="float32")
        assert rate == 16000, clip_id
        parts += [samples, np.zeros(16000, dtype=np.float32)]  # a second of silence between clips
    audio = np.concatenate(parts)
    wav = workdir / "call.wav"
    soundfile.write(wav, audio, 16000)

    counts: Counter[str] = Counter()
    volume: Counter[str] = Counter()

    def count(event: TranscriptEvent) -> None:
        counts[event.event] += 1
        volume[event.event] += FRAME_HEADER + len(event.call_id.encode()) + len(event.to_json())

    with LocalBroker() as broker:
        port = free_tcp_port()
        config = {
            "sip": {"listen": "127.0.0.1:0"},
            "rtp": {"port_range": [port - port % 2, port - port % 2 + 20], "bind": "127.0.0.1"},
            "http": {"listen": f"127.0.0.1:{free_tcp_port()}"},
            "kafka": {"bootstrap_servers": broker.bootstrap_servers, "topic": "volume", "spool_dir": str(workdir / "spool")},
            "engines_dir": str(REPO / "engines"),
        }
        (workdir / "config.yaml").write_text(yaml.safe_dump(config))
        daemon = Daemon(load_config(workdir / "config.yaml", environ={}), publish_hooks=(count,))
        await daemon.start()
        try:
            assert daemon.ingest is not None
            await place_call(f"127.0.0.1:{daemon.ingest.sip.port}", wav, workdir / "sipp")
        finally:
            await daemon.stop()
    seconds = audio.shape[0] / 16000
    print(f"one channel, {seconds:.1f} s of audio ({len(clips)} clips, 1 s pauses), Whisper tiny.en, partials every 1 s")
    for kind in ("call.started", "segment.partial", "segment.final", "call.ended"):
        print(f"  {kind:16} {counts[kind]:4d} events  {volume[kind]:7d} B  (mean {volume[kind] / max(counts[kind], 1):.0f} B)")
    total = sum(volume.values())
    finals_only = total - volume["segment.partial"]
    print(f"  all events:   {total / seconds:6.0f} B per channel-second of call")
    print(f"  no partials:  {finals_only / seconds:6.0f} B per channel-second of call")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", nargs="+", default=list(CLIPS))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        asyncio.run(measure(args.clips, Path(workdir)))


if __name__ == "__main__":
    main()
