"""The daemon serves a Conformer-CTC model exactly as it serves Whisper (`model:` in the config).

The model is the small random one the Conformer tests export (no public weights in reach), so the
text is meaningless: the events, their order and their media timing are what is checked.
"""

from __future__ import annotations

import asyncio

import pytest
from kafka_fixtures import kafka_broker, topic_name  # noqa: F401 (fixtures)
from test_conformer_export import exported  # noqa: F401 (fixture: a NeMo-style export + tokenizer)
from test_daemon_e2e import assert_call_lifecycle, clip, consume_calls, running_daemon, target

from asr_stream.devtools.sipp import place_call
from asr_stream.inference.conformer.importer import add_conformer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


async def test_daemon_serves_a_call_with_an_imported_conformer(exported, tmp_path, kafka_broker, topic_name):
    _, graph, tokenizer, preprocessor = exported
    engines = tmp_path / "engines"
    add_conformer("conformer-random", graph, tokenizer, preprocessor, engines, language="en")
    daemon = await running_daemon(tmp_path, kafka_broker.bootstrap_servers, topic_name, model="conformer-random", engines_dir=str(engines))
    wav, _ = clip("en_ljspeech_LJ001-0005")  # 8.1 s
    try:
        await place_call(target(daemon), wav, tmp_path / "call")
    finally:
        await daemon.stop()
    events = await asyncio.to_thread(consume_calls, kafka_broker.bootstrap_servers, topic_name, 1, 30)
    finals = assert_call_lifecycle(events, events[0]["call_id"])
    segment_events = [e for e in events if e["event"].startswith("segment.")]
    assert segment_events, "no segment event for 8 s of speech"
    assert all(e["model"] == "conformer-random" and e["language"] == "en" for e in events)
    duration_ms = events[-1]["duration_ms"]
    for event in segment_events:
        assert 0 <= event["start_ms"] < event["end_ms"] <= duration_ms
        assert event["latency_ms"] >= 0
    assert finals and finals[-1]["end_ms"] >= 7000, "the segment does not reach the end of the speech"
