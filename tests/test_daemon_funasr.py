"""The daemon and `transcribe` serve an imported SenseVoice or Paraformer exactly as they serve Whisper.

The models are the small random ones the FunASR tests export (no real weights in reach), so the
text is meaningless: events, their order and media timing, the model label, and the hotword
search switched on by a configured list are what is checked.
"""

from __future__ import annotations

import asyncio
import json
import subprocess

import pytest
from kafka_fixtures import kafka_broker, topic_name  # noqa: F401 (fixtures)
from test_daemon_e2e import assert_call_lifecycle, clip, consume_calls, running_daemon, target
from test_funasr_models import ASR_STREAM, HOTLINE_TERMS, exports, mandarin, texts  # noqa: F401 (fixtures)

from asr_stream.devtools.sipp import place_call
from asr_stream.inference.funasr.importer import add_funasr_model
from asr_stream.inference.funasr.manifest import PARAFORMER, SENSEVOICE
from asr_stream.inference.hotwords import HotwordLists
from asr_stream.inference.runners import Utterance, load_model

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


async def test_daemon_serves_a_call_with_an_imported_sensevoice(exports, tmp_path, kafka_broker, topic_name):
    engines = tmp_path / "engines"
    add_funasr_model(SENSEVOICE, "sensevoice-random", exports[SENSEVOICE], engines, language="zh")
    daemon = await running_daemon(
        tmp_path,
        kafka_broker.bootstrap_servers,
        topic_name,
        model="sensevoice-random",
        engines_dir=str(engines),
        hotwords=HOTLINE_TERMS,
    )
    wav, _ = clip("zh_aishell1_test_BAC009S0764W0121")  # 4.2 s
    try:
        await place_call(target(daemon), wav, tmp_path / "call")
    finally:
        await daemon.stop()
    events = await asyncio.to_thread(consume_calls, kafka_broker.bootstrap_servers, topic_name, 1, 30)
    finals = assert_call_lifecycle(events, events[0]["call_id"])
    assert finals, "no final for 4 s of speech"
    assert all(e["model"] == "sensevoice-random" and e["language"] == "zh" for e in events)
    for event in (e for e in events if e["event"].startswith("segment.")):
        assert 0 <= event["start_ms"] < event["end_ms"] <= events[-1]["duration_ms"]


@pytest.mark.parametrize("family", [SENSEVOICE, PARAFORMER])
def test_transcribe_cli_with_an_imported_model_and_hotwords(family, exports, mandarin, tmp_path, speech_clips):
    engines = tmp_path / "engines"
    add_funasr_model(family, family, exports[family], engines)
    hotwords = tmp_path / "hotwords.txt"
    hotwords.write_text("# hotline terms\n" + "\n".join(HOTLINE_TERMS) + "\n", encoding="utf-8")
    wav = next(row["wav"] for row in speech_clips if row["lang"] == "zh")
    command = [str(ASR_STREAM), "--engines-dir", str(engines), "transcribe", "--model", family, "--json"]
    plain = subprocess.run([*command, str(wav)], capture_output=True, text=True, timeout=120)
    boosted = subprocess.run([*command, "--hotwords-file", str(hotwords), str(wav)], capture_output=True, text=True, timeout=120)
    assert plain.returncode == boosted.returncode == 0, plain.stderr + boosted.stderr
    plain_record, boosted_record = json.loads(plain.stdout), json.loads(boosted.stdout)
    assert plain_record["model"] == family and plain_record["engine"] == "onnxruntime" and plain_record["text"]
    # A random model's scores are nearly flat, so the bonus visibly changes the search's answer.
    assert boosted_record["text"] != plain_record["text"]
    unwritable = tmp_path / "unwritable.txt"
    unwritable.write_text("ÄÖÜ\n", encoding="utf-8")
    refused = subprocess.run([*command, "--hotwords-file", str(unwritable), str(wav)], capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "cannot be written with" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1


def test_utterances_of_different_lists_are_decoded_with_their_own(exports, mandarin, tmp_path):
    """What the scheduler hands the model: a mixed batch is split by list, each decoded with its graph, order kept."""
    engines = tmp_path / "engines"
    add_funasr_model(SENSEVOICE, "sv", exports[SENSEVOICE], engines, language="zh")
    model = load_model("sv", engines, hotwords=HotwordLists(HOTLINE_TERMS[:2], {"other": HOTLINE_TERMS[2:]}))
    assert model.hotword_lists == {"other"}
    utterances = [Utterance(mandarin[0], "other"), Utterance(mandarin[1]), Utterance(mandarin[2], "other"), Utterance(mandarin[0])]
    mixed = [h.text for h in model.transcribe(utterances)]
    assert mixed[0] == model.transcribe_with([mandarin[0]], "other")[0].text
    assert mixed[3] == model.transcribe_batch([mandarin[0]])[0].text
    assert mixed[0] != mixed[3]  # the two lists' graphs lead the search to different texts on a random model
    assert model.utterance_bucket(utterances[0]) != model.utterance_bucket(utterances[1])
