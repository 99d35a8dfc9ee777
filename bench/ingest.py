"""CPU cost of the G.711 ingest path per channel-second, and how many channels one core sustains.

Run by hand:  .venv/bin/python bench/ingest.py --channels 100 300 600 --seconds 10

For each channel count, a separate sender process streams real-time 20 ms μ-law packets of a
speech clip on every channel to 127.0.0.1; this process runs one `RtpReceiver` per channel
plus a consumer of `asr_stream.ingest.media.audio_frames` (int16 -> float32, 8 -> 16 kHz
`StreamResampler`), exactly what the daemon reads per channel. Measured in this process only, over a steady-state window:
CPU seconds per channel-second (UDP receive + parse + jitter + decode + queue + resample) and
whether it kept up (every packet turned into audio, no drops). `channels/core` is the
reciprocal of the cost: the count at which this one-threaded process would use a whole core.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import socket
import struct
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from asr_stream.audio.wavfile import load_audio
from asr_stream.ingest.media import audio_frames
from asr_stream.ingest.resample import resample
from asr_stream.rtp.g711 import ulaw_encode
from asr_stream.rtp.ports import PortAllocator
from asr_stream.rtp.receiver import ReceiverConfig, RtpReceiver

CLIP = Path(__file__).resolve().parents[1].parent / "shared" / "speech" / "wav16k" / "en_pocketsphinx_goforward.wav"
PACKET_S = 0.02
PACKET_SAMPLES = 160
WARMUP_S = 2.0


def speech_payloads() -> list[bytes]:
    audio, _ = load_audio(CLIP)
    pcm = np.round(resample(audio[0], 16000, 8000) * 32767).astype(np.int16)
    encoded = ulaw_encode(pcm[: len(pcm) // PACKET_SAMPLES * PACKET_SAMPLES])
    return [encoded[i : i + PACKET_SAMPLES] for i in range(0, len(encoded), PACKET_SAMPLES)]


def send_streams(ports: list[int], seconds: float, start_at: float) -> None:
    """Sender process: every 20 ms, one packet per channel, paced on the wall clock (no drift)."""
    payloads = speech_payloads()
    header = struct.Struct("!BBHII")
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * 1024 * 1024)
    ticks = round(seconds / PACKET_S)
    for tick in range(ticks):
        delay = start_at + tick * PACKET_S - time.time()
        if delay > 0:
            time.sleep(delay)
        payload = payloads[tick % len(payloads)]
        for channel, port in enumerate(ports):
            packet = header.pack(0x80, 0, tick & 0xFFFF, tick * PACKET_SAMPLES, channel + 1) + payload
            sock.sendto(packet, ("127.0.0.1", port))
    sock.close()


@dataclass
class Result:
    channels: int
    wall_s: float
    cpu_s: float
    packets_expected: int
    packets_received: int
    dropped: int

    @property
    def cost_ms_per_channel_second(self) -> float:
        """CPU per packet times 50 packets: immune to the window being a little long or short."""
        return 1000 * self.cpu_s / self.packets_received / PACKET_S

    @property
    def core_share(self) -> float:
        return self.cpu_s / self.wall_s

    @property
    def channels_per_core(self) -> float:
        return 1000 / self.cost_ms_per_channel_second


async def consume(receiver: RtpReceiver) -> None:
    """The daemon's per-channel path: int16 -> float32 -> 16 kHz, as `TelephonyIngest` delivers it."""
    async for _ in audio_frames(receiver, answered_at=asyncio.get_running_loop().time()):
        pass


async def measure(channels: int, seconds: float) -> Result:
    allocator = PortAllocator("127.0.0.1", 20000, 20000 + 4 * channels + 1000)
    config = ReceiverConfig({0: "PCMU"}, inactivity_timeout_s=60)
    receivers = [await RtpReceiver.open(allocator, config) for _ in range(channels)]
    consumers = [asyncio.create_task(consume(receiver)) for receiver in receivers]
    total_s = WARMUP_S + seconds + 0.5
    start_at = time.time() + 0.5
    sender = multiprocessing.get_context("spawn").Process(
        target=send_streams, args=([r.port for r in receivers], total_s, start_at), daemon=True
    )
    sender.start()
    try:
        await asyncio.sleep(start_at - time.time() + WARMUP_S)
        cpu_before, wall_before = time.process_time(), time.monotonic()
        packets_before = sum(r.stats().packets for r in receivers)
        await asyncio.sleep(seconds)
        cpu_s = time.process_time() - cpu_before
        wall_s = time.monotonic() - wall_before
        packets_window = sum(r.stats().packets for r in receivers) - packets_before
        await asyncio.sleep(1.0)  # the rest of the stream lands
    finally:
        sender.join(timeout=total_s + 5)
        if sender.is_alive():
            sender.kill()
        for receiver in receivers:
            receiver.close()
        await asyncio.gather(*consumers)
    stats = [receiver.stats() for receiver in receivers]
    return Result(
        channels=channels,
        wall_s=wall_s,
        cpu_s=cpu_s,
        packets_expected=round(wall_s / PACKET_S) * channels,
        packets_received=packets_window,
        dropped=sum(sum(s.dropped.values()) + s.lost + s.late for s in stats),
    )


async def breakdown(packets: int = 20_000) -> None:
    """Split the per-packet cost without sockets: the datagram handler, then the 16 kHz conversion."""
    allocator = PortAllocator("127.0.0.1", 20000, 21000)
    receiver = await RtpReceiver.open(allocator, ReceiverConfig({0: "PCMU"}, max_queued_frames=packets))
    payloads = speech_payloads()
    datagrams = [struct.pack("!BBHII", 0x80, 0, i & 0xFFFF, i * PACKET_SAMPLES, 1) + payloads[i % len(payloads)] for i in range(packets)]
    started = time.process_time()
    for datagram in datagrams:
        receiver._on_rtp(datagram, ("127.0.0.1", 9))  # the transport's callback, minus the socket
    receive_us = (time.process_time() - started) / packets * 1e6
    receiver.close()
    started = time.process_time()
    async for _ in audio_frames(receiver, answered_at=0.0):
        pass
    convert_us = (time.process_time() - started) / packets * 1e6
    print(f"per packet: datagram handler {receive_us:.1f} us, audio_frames (float + 8->16 kHz) {convert_us:.1f} us")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, nargs="+", default=[100, 300, 600])
    parser.add_argument("--seconds", type=float, default=10.0, help="measured window per run")
    parser.add_argument("--breakdown", action="store_true", help="also split the per-packet cost (no sockets)")
    args = parser.parse_args()
    if args.breakdown:
        asyncio.run(breakdown())
    print("| channels | CPU ms per channel-second | channels/core | core used | packets in window (real time) | lost+late+dropped |")
    print("|---:|---:|---:|---:|---:|---:|")
    for channels in args.channels:
        result = asyncio.run(measure(channels, args.seconds))
        print(
            f"| {result.channels} | {result.cost_ms_per_channel_second:.3f} | {result.channels_per_core:.0f} "
            f"| {result.core_share:.0%} | {result.packets_received} ({result.packets_expected}) | {result.dropped} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
