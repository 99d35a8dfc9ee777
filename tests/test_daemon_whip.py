"""A WebRTC (WHIP) session is transcribed by the daemon exactly like a SIP call.

aiortc plays a real speech clip as a browser softphone would (Opus over DTLS-SRTP on 127.0.0.1),
posting its offer to the daemon's /v1/whip; the finals arrive on Kafka with the usual lifecycle.
"""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiortc import RTCSessionDescription
from kafka_fixtures import kafka_broker, topic_name  # noqa: F401 (fixtures)
from test_daemon_e2e import WORKERS, assert_call_lifecycle, clip, consume_calls, running_daemon
from test_whip import AUTH, TOKEN, TRAILING_SILENCE_S, ClipTrack, post_offer, sending_peer

from asr_stream.audio.wavfile import load_audio
from asr_stream.devtools.scoring import corpus_wer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


@WORKERS
async def test_a_whip_session_becomes_transcript_events(tmp_path, kafka_broker, topic_name, workers):
    """In one process, and with workers: 2, where the session is transcribed in the main process through the inference client."""
    wav, reference = clip("en_ljspeech_LJ001-0009")  # 7.6 s
    audio, _ = load_audio(wav)
    track = ClipTrack(audio[0], trailing_silence_s=TRAILING_SILENCE_S + 1.0)  # a pause before hanging up
    daemon = await running_daemon(tmp_path, kafka_broker.bootstrap_servers, topic_name, http={"auth_token": TOKEN}, workers=workers)
    base = f"http://{daemon.config.settings.http.listen}"
    try:
        async with aiohttp.ClientSession() as http, sending_peer(track) as pc:
            response = await post_offer(http, base, pc.localDescription.sdp)
            assert response.status == 201, await response.text()
            await pc.setRemoteDescription(RTCSessionDescription(await response.text(), "answer"))
            await asyncio.wait_for(track.finished.wait(), 20)
            await asyncio.sleep(0.5)
            async with http.delete(f"{base}{response.headers['Location']}", headers=AUTH) as deleted:
                assert deleted.status == 200
        events = await asyncio.to_thread(consume_calls, kafka_broker.bootstrap_servers, topic_name, 1, 40)
    finally:
        await daemon.stop()
    finals = assert_call_lifecycle(events, events[0]["call_id"])
    assert events[0]["channels"][0]["codec"] == "opus" and events[-1]["end_reason"] == "hangup"
    assert corpus_wer([reference], [" ".join(f["text"] for f in finals)]) <= 0.25
