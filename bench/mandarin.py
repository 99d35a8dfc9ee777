"""Mandarin CER of Whisper base, offline and live (8 kHz G.711 over RTP), without and with hotwords.

Run by hand:  .venv/bin/python bench/mandarin.py [--model whisper-base] [--out result.json]

The clips are the shared set's Mandarin rows (AISHELL-1, references in Simplified). Each clip has a
domain term (CLIP_TERMS); hotword lists add seven terms a 12345 hotline would list. Conditions:

- original script: the model's own output (what `--chinese-script original` prints);
- Simplified: OpenCC t2s, the default;
- term in the list: a list with every clip's term and the hotline terms;
- term not in the list: the same list without the clip's own term (does a list harm other speech?).

Also the no-speech gate that keeps a prompt out of silence: how many of all shared clips (speech,
every language) and of six synthetic non-speech signals Whisper hears as speech (first 30 s).

Offline runs `load_model` as `asr-stream transcribe` does. Live starts an embedded broker and the
daemon in this process; SIPp calls stream each clip as PCMU at 8 kHz, naming the list in
X-ASR-Hotwords (or no header), three calls at a time; the text of a call is its finals joined.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import tempfile
from datetime import datetime
from pathlib import Path

import yaml

from asr_stream.app.config import load_config
from asr_stream.app.daemon import Daemon
from asr_stream.audio.wavfile import load_audio
from asr_stream.devtools.local_broker import LocalBroker, free_tcp_port
from asr_stream.devtools.scoring import corpus_cer
from asr_stream.devtools.signals import non_speech
from asr_stream.devtools.sipp import place_call
from asr_stream.inference.hotwords import HotwordLists
from asr_stream.inference.models import load_prepared
from asr_stream.inference.onnxruntime_backend import OnnxRuntimeEngine
from asr_stream.inference.runners import load_model
from asr_stream.inference.whisper.runner import WhisperRunner
from asr_stream.sip.offer import HOTWORD_LIST_HEADER
from asr_stream.transcript.events import CallEnded, CallStarted, SegmentFinal, TranscriptEvent
from asr_stream.transcript.script import ScriptConverter

REPO = Path(__file__).resolve().parents[1]
SPEECH = REPO.parent / "shared" / "speech"
CLIP_TERMS = {
    "zh_aishell1_test_BAC009S0764W0121": "停滞",
    "zh_aishell1_test_BAC009S0764W0122": "一二线城市",
    "zh_aishell1_dev_BAC009S0724W0121": "广州市房地产中介协会",
}
HOTLINE_TERMS = ("住房公积金", "社保卡", "不动产登记", "12345热线", "医保报销", "居住证", "交通违章")
IN_LIST = "all"


def clips() -> list[dict]:
    rows = [json.loads(line) for line in (SPEECH / "manifest.jsonl").read_text().splitlines() if line.strip()]
    return [row for row in rows if row["lang"] == "zh"]


def without(clip_id: str) -> str:
    return f"without-{clip_id[-4:]}"


def lists(rows: list[dict]) -> dict[str, tuple[str, ...]]:
    every = (*CLIP_TERMS.values(), *HOTLINE_TERMS)
    return {IN_LIST: every} | {without(row["id"]): tuple(t for t in every if t != CLIP_TERMS[row["id"]]) for row in rows}


def gate(model_name: str, engines_dir: str) -> dict[str, object]:
    """`WhisperDecoder.hears_speech` on every shared clip and on six non-speech signals."""
    runner = WhisperRunner.from_prepared(load_prepared(model_name, engines_dir), OnnxRuntimeEngine.load)
    rows = [json.loads(line) for line in (SPEECH / "manifest.jsonl").read_text().splitlines() if line.strip()]
    heard: list[bool] = []
    for start in range(0, len(rows), 8):
        batch = [load_audio(SPEECH / row["path_wav16k"])[0][0][: 30 * 16000] for row in rows[start : start + 8]]
        heard += runner.decoder.hears_speech(runner.encode(batch))
    signals = non_speech()
    noise_heard = runner.decoder.hears_speech(runner.encode(list(signals.values())))
    return {
        "speech clips heard as speech": f"{sum(heard)} of {len(heard)}",
        "speech clips not heard": [row["id"] for row, h in zip(rows, heard) if not h],
        "non-speech heard as speech": dict(zip(signals, noise_heard)),
    }


def offline(model_name: str, engines_dir: str, rows: list[dict]) -> dict[str, list[str]]:
    model = load_model(model_name, engines_dir, "zh", hotwords=HotwordLists((), lists(rows)))
    script = ScriptConverter()
    audio = [load_audio(SPEECH / row["path_wav16k"])[0][0] for row in rows]
    plain = model.transcribe_batch(audio)
    listed = model.transcribe_with(audio, IN_LIST)
    unlisted = [model.transcribe_with([a], without(row["id"]))[0] for a, row in zip(audio, rows)]
    return {
        "original script": [h.text for h in plain],
        "Simplified": [script.convert(h.text, h.language) for h in plain],
        "term in the list": [script.convert(h.text, h.language) for h in listed],
        "term not in the list": [script.convert(h.text, h.language) for h in unlisted],
    }


def daemon_config(model_name: str, engines_dir: str, rows: list[dict], workdir: Path, bootstrap: str) -> Path:
    port = free_tcp_port()
    config = {
        "model": model_name,
        "language": "zh",
        "engines_dir": engines_dir,
        "sip": {"listen": "127.0.0.1:0"},
        "rtp": {"port_range": [port - port % 2, port - port % 2 + 200], "bind": "127.0.0.1"},
        "http": {"listen": f"127.0.0.1:{free_tcp_port()}"},
        "kafka": {"bootstrap_servers": bootstrap, "spool_dir": str(workdir / "spool")},
        "hotword_lists": {name: list(terms) for name, terms in lists(rows).items()},
    }
    (workdir / "config.yaml").write_text(yaml.safe_dump(config, allow_unicode=True))
    return workdir / "config.yaml"


async def live(config_path: Path, rows: list[dict], workdir: Path) -> dict[str, list[str]]:
    finals: dict[str, list[SegmentFinal]] = {}
    started: set[str] = set()
    ended: set[str] = set()

    def collect(event: TranscriptEvent) -> None:
        if isinstance(event, SegmentFinal):
            finals.setdefault(event.call_id, []).append(event)
        elif isinstance(event, CallEnded):
            ended.add(event.call_id)
        elif isinstance(event, CallStarted):
            started.add(event.call_id)

    daemon = Daemon(load_config(config_path, environ={}), publish_hooks=(collect,))
    await daemon.start()
    target = f"127.0.0.1:{daemon.ingest.sip.port}"  # type: ignore[union-attr]
    conditions = {"Simplified": None, "term in the list": IN_LIST, "term not in the list": "without"}
    results: dict[str, list[str]] = {condition: [] for condition in conditions}
    try:
        for row in rows:
            wav = SPEECH / row["path_wav16k"]
            calls = []
            for condition, header in conditions.items():
                name = without(row["id"]) if header == "without" else header
                headers = {HOTWORD_LIST_HEADER: name} if name else None
                calls.append(place_call(target, wav, workdir / f"{row['id']}-{condition}", hangup_after_s=1.5, headers=headers))
            placed = await asyncio.gather(*calls)
            call_ids = [next(call for call in started if call in run.messages) for run in placed]  # SIPp's trace holds its Call-ID
            for _ in range(600):  # call.ended follows the last final: at most 60 s
                if ended >= set(call_ids):
                    break
                await asyncio.sleep(0.1)
            for condition, call_id in zip(conditions, call_ids):
                results[condition].append("".join(f.text for f in sorted(finals.get(call_id, []), key=lambda f: f.start_ms)))
    finally:
        await daemon.stop()
    return results


def score(rows: list[dict], hypotheses: dict[str, list[str]]) -> dict[str, float]:
    return {condition: round(corpus_cer([row["text"] for row in rows], texts, "zh"), 3) for condition, texts in hypotheses.items()}


def main(args: argparse.Namespace) -> None:
    rows = clips()
    offline_texts = offline(args.model, args.engines_dir, rows)
    with tempfile.TemporaryDirectory(prefix="asr-mandarin-") as tmp, LocalBroker() as broker:
        config = daemon_config(args.model, args.engines_dir, rows, Path(tmp), broker.bootstrap_servers)
        live_texts = asyncio.run(live(config, rows, Path(tmp)))
    result = {
        "date": datetime.now().isoformat(timespec="minutes"),
        "machine": f"{platform.node()} {platform.machine()}",
        "model": args.model,
        "clips": [row["id"] for row in rows],
        "references": [row["text"] for row in rows],
        "offline": {"cer": score(rows, offline_texts), "texts": offline_texts},
        "live_g711_8k": {"cer": score(rows, live_texts), "texts": live_texts},
        "no_speech_gate": gate(args.model, args.engines_dir),
    }
    print(json.dumps(result, ensure_ascii=False, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, ensure_ascii=False, indent=2))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="whisper-base")
    parser.add_argument("--engines-dir", default=str(REPO / "engines"))
    parser.add_argument("--out", default=None)
    main(parser.parse_args())
