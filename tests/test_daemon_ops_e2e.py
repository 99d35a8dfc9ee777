"""Operations surface during a real call: metrics, the authenticated live feed, the agent page.

One SIPp call streams real speech into the daemon; while it runs, /metrics is scraped and
parsed with prometheus-client's own parser, a WebSocket without the token is refused and one
with it receives the call's events, and headless Chromium shows the final text on the page.
"""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from kafka_fixtures import kafka_broker, topic_name  # noqa: F401 (fixtures)
from prometheus_client.parser import text_string_to_metric_families
from test_daemon_e2e import WORKERS, clip, running_daemon, target
from test_http_api_browser import CHROMIUM, chromium_page

from asr_stream.devtools.scoring import corpus_wer
from asr_stream.devtools.sipp import place_call

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]
TOKEN = "agent-desk-token"


def samples(text: str) -> dict[str, float]:
    return {sample.name: sample.value for family in text_string_to_metric_families(text) for sample in family.samples}


@pytest.mark.skipif(CHROMIUM is None, reason="needs headless Chromium: apt-get install chromium")
@WORKERS
async def test_metrics_live_feed_and_page_during_a_real_call(tmp_path, kafka_broker, topic_name, workers):
    """The same metric names, live feed and page whether the call runs in the daemon's process or in an ingest worker."""
    wav, reference = clip("en_ljspeech_LJ001-0007")  # 8.4 s
    daemon = await running_daemon(
        tmp_path, kafka_broker.bootstrap_servers, topic_name, http={"auth_token": TOKEN, "require_auth": True}, workers=workers
    )
    base = f"http://{daemon.config.settings.http.listen}"
    try:
        async with aiohttp.ClientSession() as http:
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect(f"{base}/v1/transcripts")
            assert refused.value.status == 401
        async with (
            aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as http,
            chromium_page(f"{base}/?token={TOKEN}", tmp_path / "profile") as page,
        ):
            async with http.ws_connect(f"{base}/v1/transcripts") as feed:
                call = asyncio.create_task(place_call(target(daemon), wav, tmp_path / "call"))
                first = await feed.receive_json(timeout=20)
                assert first["event"] == "call.started"
                await asyncio.sleep(3)  # mid-call
                for _ in range(20):  # a worker's series reach the main process about once a second
                    async with http.get(f"{base}/metrics") as response:
                        during = samples(await response.text())
                    if during.get("asr_rtp_packets_total", 0) > 50:
                        break
                    await asyncio.sleep(0.5)
                assert during["asr_calls_active"] == 1 and during["asr_channels_active"] == 1
                assert during["asr_rtp_packets_total"] > 50
                finals = []
                while True:
                    event = await feed.receive_json(timeout=60)
                    if event["event"] == "segment.final":
                        finals.append(event["text"])
                    if event["event"] == "call.ended":
                        break
                await call
            assert corpus_wer([reference], [" ".join(finals)]) <= 0.25
            await page.wait_for("document.body.innerText.includes(" + repr(finals[-1]) + ")", True, timeout_s=15)
        async with aiohttp.ClientSession() as http:
            for _ in range(50):  # a worker's series reach the main process once a second: bounded wait for the last
                async with http.get(f"{base}/metrics") as response:
                    after = samples(await response.text())
                if after.get("asr_final_endpoint_seconds_count") == len(finals):
                    break
                await asyncio.sleep(0.1)
            async with http.get(f"{base}/readyz") as response:
                assert response.status == 200, await response.text()
        assert after["asr_calls_active"] == 0 and after["asr_final_latency_seconds_count"] == len(finals)
        # The endpoint latency leaves out the wait for the segment's end (closing silence, or the hang-up)
        # that the final latency includes.
        assert after["asr_final_endpoint_seconds_count"] == len(finals)
        assert 0 < after["asr_final_endpoint_seconds_sum"] < after["asr_final_latency_seconds_sum"] - 0.1 * len(finals)
    finally:
        await daemon.stop()
