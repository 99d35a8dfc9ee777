"""WHIP ingest end to end: aiortc as the sending peer, the real HTTP routes on 127.0.0.1, real speech.

The app is `http_api.create_app` with `http_whip.whip_routes` added, exactly as the daemon wires
it, so these tests also show that the feed's bearer token guards the WHIP routes.
"""

from __future__ import annotations

import asyncio
import fractions
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import av
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from conftest import SPEECH, load_mono
from prometheus_client import CollectorRegistry
from scipy.signal import butter, correlate, sosfiltfilt

from asr_stream.app.http_api import HttpSettings, create_app, start_server
from asr_stream.app.whip_routes import SDP, whip_routes
from asr_stream.audio.features import SAMPLE_RATE
from asr_stream.ingest.types import AudioFrame, CallEnded, CallInfo, CallStarted, EndReason
from asr_stream.ingest.webrtc.session import WhipConfig, WhipEvent, WhipIngest
from asr_stream.sinks.livefeed import LiveFeedHub

TOKEN = "s3cret-whip-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CLIP = SPEECH / "wav16k" / "en_pocketsphinx_goforward.wav"  # 2.79 s, "go forward ten meters"
FRAME_S = 0.02
# aiortc's audio jitter buffer releases a frame only once 4 later ones have arrived, so a stream
# that just stops keeps its last 80 ms. A live microphone keeps sending until the hang-up; the
# sender models that with this much silence after the clip (6 frames: 4 held + rounding).
TRAILING_SILENCE_S = 0.12
EVENT_TIMEOUT_S = 5.0
SPEECH_HIGHPASS = butter(4, 100, "highpass", fs=SAMPLE_RATE, output="sos")


class ClipTrack(MediaStreamTrack):
    """A microphone playing `samples` (16 kHz float32) in real time, 20 ms per frame, then ending."""

    kind = "audio"

    def __init__(self, samples: np.ndarray, trailing_silence_s: float = 0.0) -> None:
        super().__init__()
        padded = np.concatenate((samples, np.zeros(round(trailing_silence_s * SAMPLE_RATE), np.float32)))
        self._pcm = np.clip(padded * 32768.0, -32768, 32767).astype(np.int16)
        self._sent = 0
        self._started_at: float | None = None
        self.finished = asyncio.Event()

    async def recv(self) -> av.AudioFrame:
        loop = asyncio.get_running_loop()
        if self._sent >= self._pcm.shape[0]:
            self.finished.set()
            self.stop()
            raise MediaStreamError
        if self._started_at is None:
            self._started_at = loop.time()
        await asyncio.sleep(self._started_at + self._sent / SAMPLE_RATE - loop.time())
        chunk = self._pcm[self._sent : self._sent + round(FRAME_S * SAMPLE_RATE)]
        frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        frame.pts = self._sent
        frame.time_base = fractions.Fraction(1, SAMPLE_RATE)
        self._sent += chunk.shape[0]
        return frame


@asynccontextmanager
async def serving(ingest: WhipIngest) -> AsyncIterator[str]:
    """The daemon's HTTP app plus the WHIP routes on a free 127.0.0.1 port; yields the base URL."""
    app = create_app(LiveFeedHub(), CollectorRegistry(), {}, HttpSettings(auth_token=TOKEN))
    app.router.add_routes(whip_routes(ingest))
    runner = await start_server(app, "127.0.0.1", 0)
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()
        await ingest.stop()


@asynccontextmanager
async def sending_peer(track: MediaStreamTrack | None = None) -> AsyncIterator[RTCPeerConnection]:
    """A WHIP client's peer connection with its offer set (every candidate gathered); always closed."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver(track or ClipTrack(np.zeros(0, np.float32)), direction="sendonly")
    try:
        await pc.setLocalDescription(await pc.createOffer())
        yield pc
    finally:
        await pc.close()


async def post_offer(http: aiohttp.ClientSession, base: str, offer: str) -> aiohttp.ClientResponse:
    async with http.post(f"{base}/v1/whip", data=offer.encode(), headers={**AUTH, "Content-Type": SDP}) as response:
        await response.read()
        return response


async def next_event(events: AsyncIterator[WhipEvent]) -> WhipEvent:
    return await asyncio.wait_for(anext(events), EVENT_TIMEOUT_S)


async def collect_into(captured: list[AudioFrame], frames: AsyncIterator[AudioFrame]) -> None:
    async for frame in frames:
        captured.append(frame)


async def received_at_least(captured: list[AudioFrame], n_samples: int) -> None:
    while not captured or captured[-1].end_sample < n_samples:
        await asyncio.sleep(0.02)


def speech_band(x: np.ndarray) -> np.ndarray:
    """Above 100 Hz. Opus in VoIP mode (aiortc's encoder setting, as in browsers) high-passes the
    low end, and this clip has 17 % of its energy in rumble below 100 Hz: measured, that alone
    drops the raw correlation to 0.85 while the speech above it survives at 0.957."""
    return sosfiltfilt(SPEECH_HIGHPASS, x).astype(np.float32)


def aligned_similarity(received: np.ndarray, source: np.ndarray) -> tuple[int, float]:
    """(lag of `received` behind `source` in samples, normalised cross-correlation at that lag)."""
    full = correlate(received, source, mode="full", method="fft")
    lag = int(np.argmax(full)) - (source.shape[0] - 1)
    overlap = min(received.shape[0] - lag, source.shape[0])
    a, b = received[lag : lag + overlap], source[:overlap]
    return lag, float(np.dot(a, b) / np.sqrt(np.dot(a, a) * np.dot(b, b)))


async def test_streamed_speech_arrives_on_the_call_timeline_and_delete_ends_the_call() -> None:
    source = load_mono(CLIP)
    ingest = WhipIngest(WhipConfig())
    events = ingest.events()
    track = ClipTrack(source, TRAILING_SILENCE_S)
    async with serving(ingest) as base, aiohttp.ClientSession() as http, sending_peer(track) as pc:
        response = await post_offer(http, base, pc.localDescription.sdp)
        assert response.status == 201, await response.text()
        assert response.headers["Content-Type"] == SDP
        location = response.headers["Location"]
        await pc.setRemoteDescription(RTCSessionDescription(await response.text(), "answer"))

        started = await next_event(events)
        assert isinstance(started, CallStarted)
        assert location == f"/v1/whip/{started.call.call_id}"
        assert started.call.caller.uri == f"whip:{started.call.call_id}"
        (channel,) = started.channels
        assert (channel.info.label, channel.info.codec, channel.info.clock_rate) == ("caller", "opus", 48000)
        captured: list[AudioFrame] = []
        collector = asyncio.create_task(collect_into(captured, channel.frames()))

        await asyncio.wait_for(track.finished.wait(), source.shape[0] / SAMPLE_RATE + EVENT_TIMEOUT_S)
        await asyncio.wait_for(received_at_least(captured, source.shape[0]), EVENT_TIMEOUT_S)
        async with http.delete(f"{base}{location}", headers=AUTH) as deleted:
            assert deleted.status == 200
        ended = await next_event(events)
        assert isinstance(ended, CallEnded)
        assert (ended.call.call_id, ended.reason) == (started.call.call_id, EndReason.HANGUP)
        await asyncio.wait_for(collector, EVENT_TIMEOUT_S)  # frames() ends with the call

        async with http.delete(f"{base}{location}", headers=AUTH) as again:
            assert again.status == 404

    assert captured[0].start_sample == 0
    assert all(a.end_sample == b.start_sample for a, b in itertools.pairwise(captured))
    received = np.concatenate([frame.samples for frame in captured])
    # The clip, then what the trailing silence pushed out of aiortc's jitter buffer (up to 40 ms).
    assert abs(received.shape[0] - source.shape[0]) / SAMPLE_RATE <= 0.1
    lag, similarity = aligned_similarity(speech_band(received), speech_band(source))
    # Sample 0 is the first sample sent; what remains is Opus's 6.5 ms look-ahead (104 samples).
    assert 0 <= lag <= round(0.01 * SAMPLE_RATE), lag
    # Measured 0.957 (deterministic: same encoder, same clip). A timeline slip of 5 or 20 ms
    # halfway through scores 0.80 on the same audio; a correctly filled 20 ms gap, 0.948.
    assert similarity >= 0.9, similarity


async def test_the_sender_closing_its_peer_connection_ends_the_call() -> None:
    ingest = WhipIngest(WhipConfig())
    events = ingest.events()
    track = ClipTrack(load_mono(CLIP)[: SAMPLE_RATE // 2])
    async with serving(ingest) as base, aiohttp.ClientSession() as http, sending_peer(track) as pc:
        response = await post_offer(http, base, pc.localDescription.sdp)
        await pc.setRemoteDescription(RTCSessionDescription(await response.text(), "answer"))
        started = await next_event(events)
        assert isinstance(started, CallStarted)
        await asyncio.wait_for(track.finished.wait(), EVENT_TIMEOUT_S)
        await pc.close()  # sends RTCP BYE
        ended = await next_event(events)
        assert isinstance(ended, CallEnded)
        assert (ended.call, ended.reason) == (started.call, EndReason.HANGUP)
        assert ingest.active_sessions == 0


async def test_a_session_without_audio_times_out_and_its_frames_end_empty() -> None:
    ingest = WhipIngest(WhipConfig(inactivity_timeout_s=0.3))
    events = ingest.events()
    async with serving(ingest) as base, aiohttp.ClientSession() as http, sending_peer() as pc:
        response = await post_offer(http, base, pc.localDescription.sdp)
        assert response.status == 201  # the client never applies the answer: ICE never connects
        started = await next_event(events)
        assert isinstance(started, CallStarted)
        ended = await next_event(events)
        assert isinstance(ended, CallEnded)
        assert (ended.call, ended.reason) == (started.call, EndReason.MEDIA_TIMEOUT)
        assert [frame async for frame in started.channels[0].frames()] == []


async def test_g711_is_accepted_when_the_offer_has_no_opus() -> None:
    ingest = WhipIngest(WhipConfig())
    events = ingest.events()
    async with serving(ingest) as base, aiohttp.ClientSession() as http, sending_peer() as pc:
        offer = without_codecs(pc.localDescription.sdp, {"opus", "G722"})
        response = await post_offer(http, base, offer)
        assert response.status == 201, await response.text()
        started = await next_event(events)
        assert isinstance(started, CallStarted)
        assert (started.channels[0].info.codec, started.channels[0].info.clock_rate) == ("PCMU", 8000)
        answered = [line for line in (await response.text()).splitlines() if line.startswith("a=rtpmap:")]
        assert answered == ["a=rtpmap:0 PCMU/8000"]  # exactly the codec the call reports


def without_codecs(sdp: str, names: set[str]) -> str:
    """`sdp` with the payload types of `names` removed from its m-line and rtpmaps."""
    dropped = {
        line.split()[0].removeprefix("a=rtpmap:")
        for line in sdp.splitlines()
        if line.startswith("a=rtpmap:") and line.split()[1].split("/")[0] in names
    }
    kept = []
    for line in sdp.splitlines():
        if line.startswith("m=audio"):
            line = " ".join(word for i, word in enumerate(line.split()) if i < 3 or word not in dropped)
        elif line.startswith(("a=rtpmap:", "a=fmtp:")) and line.split()[0].split(":")[1] in dropped:
            continue
        kept.append(line)
    return "\r\n".join(kept) + "\r\n"


async def test_bad_requests_are_refused_with_the_matching_status() -> None:
    ingest = WhipIngest(WhipConfig(max_offer_bytes=8 * 1024))
    async with serving(ingest) as base, aiohttp.ClientSession() as http, sending_peer() as pc:
        offer = pc.localDescription.sdp
        video = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        video.addTransceiver("video", direction="recvonly")
        await video.setLocalDescription(await video.createOffer())
        await video.close()
        no_ice = "\r\n".join(line for line in offer.splitlines() if not line.startswith("a=ice-"))
        cases = [  # (body, status, what the response must say)
            ("hello", 400, "v=0"),
            (video.localDescription.sdp, 400, "exactly one audio m-line, got ['video']"),
            (without_codecs(offer, {"opus", "PCMU", "PCMA"}), 400, "no decodable codec"),
            (no_ice, 400, "ICE username fragment or password is missing"),
            (offer + "a=x-padding:" + "x" * 8 * 1024 + "\r\n", 413, "8192"),
        ]
        for body, status, reason in cases:
            response = await post_offer(http, base, body)
            assert (response.status, reason in await response.text()) == (status, True), await response.text()
        async with http.post(f"{base}/v1/whip", data=offer, headers={**AUTH, "Content-Type": "text/plain"}) as response:
            assert response.status == 415
        async with http.post(f"{base}/v1/whip", data=offer, headers={"Content-Type": SDP}) as response:
            assert response.status == 401  # the feed's bearer token guards WHIP too
        async with http.delete(f"{base}/v1/whip/no-such-session", headers=AUTH) as response:
            assert response.status == 404
        async with http.patch(f"{base}/v1/whip/no-such-session", data="a=candidate", headers=AUTH) as response:
            assert response.status == 405  # no trickle ICE, no ICE restart
        assert ingest.active_sessions == 0


async def test_refused_admission_and_full_capacity_answer_503_with_retry_after() -> None:
    offered: list[CallInfo] = []

    def admit(call: CallInfo) -> int | None:
        offered.append(call)
        return 7 if len(offered) == 1 else None

    ingest = WhipIngest(WhipConfig(max_sessions=1, retry_after_s=3), admit=admit)
    events = ingest.events()
    async with serving(ingest) as base, aiohttp.ClientSession() as http, sending_peer() as pc:
        offer = pc.localDescription.sdp
        refused = await post_offer(http, base, offer)
        assert (refused.status, refused.headers["Retry-After"]) == (503, "7")
        assert offered[0].channels[0].codec == "opus"  # the hook sees the call it refuses
        assert ingest.active_sessions == 0

        admitted = await post_offer(http, base, offer)
        assert admitted.status == 201
        full = await post_offer(http, base, offer)
        assert (full.status, full.headers["Retry-After"]) == (503, "3")
        async with http.delete(f"{base}{admitted.headers['Location']}", headers=AUTH) as response:
            assert response.status == 200
        assert (await post_offer(http, base, offer)).status == 201  # the slot is free again

        kinds = [type(await next_event(events)) for _ in range(3)]
        assert kinds == [CallStarted, CallEnded, CallStarted]  # refusals emit nothing
        await ingest.stop()
        shutdown = await next_event(events)
        assert isinstance(shutdown, CallEnded) and shutdown.reason == EndReason.SHUTDOWN
