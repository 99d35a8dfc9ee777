"""The agent-assist page in real headless Chromium, driven over the DevTools protocol.

The page is served by the real app; events go into the hub as the daemon would publish them,
and the test reads the page's DOM: replayed finals, a provisional partial replaced by its final,
the call shown as ended. Needs Debian's `chromium` package.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from test_http_api import TOKEN, serving
from test_livefeed import ended, final, partial, started

from asr_stream.sinks.livefeed import LiveFeedHub

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs headless Chromium: apt-get install chromium (Debian package `chromium`)")

# Flags for a closed network and a throwaway profile: nothing may reach out or persist.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-port=0",
)


class Page:
    """Just enough of the DevTools protocol to evaluate JavaScript in one page."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._ids = itertools.count(1)

    async def evaluate(self, expression: str) -> Any:
        request_id = next(self._ids)
        await self._ws.send_json(
            {"id": request_id, "method": "Runtime.evaluate", "params": {"expression": expression, "returnByValue": True}}
        )
        while True:
            reply = json.loads(await self._ws.receive_str(timeout=10))
            if reply.get("id") == request_id:
                return reply["result"]["result"].get("value")

    async def wait_for(self, expression: str, expected: Any, timeout_s: float = 10.0) -> None:
        value = None
        for _ in range(int(timeout_s / 0.05)):
            value = await self.evaluate(expression)
            if value == expected:
                return
            await asyncio.sleep(0.05)
        pytest.fail(f"{expression} stayed {value!r}, expected {expected!r}")


@asynccontextmanager
async def chromium_page(url: str, profile: Path) -> AsyncIterator[Page]:
    """Headless Chromium showing `url`; always terminated, killed if it will not stop."""
    assert CHROMIUM is not None
    process = await asyncio.create_subprocess_exec(
        CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", url, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    try:
        port_file = profile / "DevToolsActivePort"
        for _ in range(300):
            if port_file.exists() and port_file.read_text().strip():
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("Chromium did not open its DevTools port within 15 s")
        port = int(port_file.read_text().split()[0])
        async with aiohttp.ClientSession() as http:
            # The DevTools server can be up before the first tab exists (seen under load): ask again.
            for _ in range(300):
                async with http.get(f"http://127.0.0.1:{port}/json/list") as response:
                    pages = [target for target in await response.json() if target["type"] == "page"]
                if pages:
                    break
                await asyncio.sleep(0.05)
            else:
                pytest.fail("Chromium opened no page within 15 s")
            page_target = pages[0]
            async with http.ws_connect(page_target["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                yield Page(ws)
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()


async def wait_for_subscribers(hub: LiveFeedHub, count: int) -> None:
    for _ in range(300):
        if hub.subscriber_count == count:
            return
        await asyncio.sleep(0.05)
    pytest.fail(f"the page did not open its WebSocket ({hub.subscriber_count} subscribers)")


def segment_state(segment_id: str) -> str:
    """JavaScript: "<class> | <text>" of the segment's line, or null."""
    selector = json.dumps(f'[data-segment-id="{segment_id}"]')
    return f"(e => e && e.className + ' | ' + e.textContent)(document.querySelector({selector}))"


async def test_the_page_shows_replayed_finals_then_replaces_a_partial_and_marks_the_call_ended(tmp_path: Path) -> None:
    hub = LiveFeedHub()
    hub.publish(started("c1"))
    hub.publish(final("c1", 0, "My street light is broken."))
    async with serving(hub) as base, chromium_page(f"{base}/?token={TOKEN}", tmp_path / "profile") as page:
        await wait_for_subscribers(hub, 1)
        await page.wait_for(segment_state("c1/caller/0"), "segment final | My street light is broken.")
        assert await page.evaluate("document.querySelector('[data-call-id=\"c1\"] .parties').textContent") == (
            "sip:+4930123@gw.example → sip:hotline@pbx.example"
        )
        assert await page.evaluate("location.search") == ""  # the token left the address bar

        hub.publish(partial("c1", 1, 0, "it has been out"))
        await page.wait_for(segment_state("c1/caller/1"), "segment partial | it has been out")
        hub.publish(partial("c1", 1, 1, "it has been out since", stable_text="it has been"))
        await page.wait_for(segment_state("c1/caller/1"), "segment partial | it has been out since")
        parts = "[...document.querySelector('[data-segment-id=\"c1/caller/1\"]').children].map(e => e.className + ':' + e.textContent)"
        assert await page.evaluate(parts) == ["stable:it has been", "provisional: out since"]  # settled, then provisional
        style = "getComputedStyle(document.querySelector('[data-segment-id=\"c1/caller/1\"] .{}')).fontStyle"
        assert (await page.evaluate(style.format("stable")), await page.evaluate(style.format("provisional"))) == ("normal", "italic")
        hub.publish(final("c1", 1, "It has been out since Monday.", revision=2))
        await page.wait_for(segment_state("c1/caller/1"), "segment final | It has been out since Monday.")
        assert await page.evaluate("document.querySelectorAll('.segment.partial').length") == 0

        hub.publish(ended("c1", 2))
        await page.wait_for("document.querySelector('[data-call-id=\"c1\"]').className", "call ended")
        assert await page.evaluate("document.querySelector('[data-call-id=\"c1\"] .state').textContent") == "ended · hangup"


async def test_the_page_without_a_token_gets_no_transcripts(tmp_path: Path) -> None:
    hub = LiveFeedHub()
    hub.publish(started("c1"))
    hub.publish(final("c1", 0, "Private words."))
    async with serving(hub) as base, chromium_page(f"{base}/", tmp_path / "profile") as page:
        await page.wait_for("document.body !== null && document.body.innerText.startsWith('401')", True)
        body = await page.evaluate("document.body.innerText")
    assert "Private words." not in body
    assert hub.subscriber_count == 0
