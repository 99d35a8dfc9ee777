"""A live `RtpReceiver` on 127.0.0.1 fed real speech over real UDP, clean and impaired."""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import Awaitable, Iterator
from pathlib import Path

import numpy as np
import pytest

from asr_stream.audio.wavfile import load_audio
from asr_stream.ingest.resample import resample
from asr_stream.rtp.g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode
from asr_stream.rtp.jitter import PcmFrame
from asr_stream.rtp.packet import RtpPacket
from asr_stream.rtp.ports import PortAllocator, PortsExhausted
from asr_stream.rtp.receiver import Latching, ReceiverConfig, RtpReceiver, RtpTimeout
from asr_stream.rtp.sender import PACKET_SAMPLES as N
from asr_stream.rtp.sender import g711_packets

SPEECH = Path(__file__).resolve().parents[1].parent / "shared" / "speech"
CORPUS = sorted((Path(__file__).parent / "malformed" / "rtp").glob("*.bin"))
PCMU_ONLY = {0: "PCMU"}
PACE_S = 0.005  # 4x faster than real time: the jitter buffer also judges holes on the sender's clock


def speech_8k(clip: str = "en_librivox_sense_and_sensibility_01_austen_64kb-0880") -> np.ndarray:
    audio, _ = load_audio(SPEECH / "wav16k" / f"{clip}.wav")
    return np.round(resample(audio[0], 16000, 8000) * 32767).astype(np.int16)


@pytest.fixture
def allocator() -> PortAllocator:
    return PortAllocator("127.0.0.1", 41000, 41999)


@pytest.fixture
def sender() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    try:
        yield sock
    finally:
        sock.close()


async def send(sock: socket.socket, port: int, datagrams: list[bytes], pace_s: float = PACE_S) -> None:
    for datagram in datagrams:
        sock.sendto(datagram, ("127.0.0.1", port))
        await asyncio.sleep(pace_s)


async def collect_after(receiver: RtpReceiver, sending: Awaitable[object]) -> list[PcmFrame]:
    """Read frames while `sending` runs, let the last packets land, close; every frame, in order."""
    frames: list[PcmFrame] = []

    async def read() -> None:
        async for frame in receiver.frames():
            frames.append(frame)

    reading = asyncio.create_task(read())
    await sending
    await asyncio.sleep(0.2)
    receiver.close()
    await reading
    return frames


def concatenated(frames: list[PcmFrame]) -> np.ndarray:
    assert [frame.start_sample for frame in frames] == [0] + [frame.end_sample for frame in frames[:-1]]
    return np.concatenate([frame.samples for frame in frames])


@pytest.mark.parametrize(
    ("payload_type", "encoding", "encode", "decode"),
    [(0, "PCMU", ulaw_encode, ulaw_decode), (8, "PCMA", alaw_encode, alaw_decode)],
)
async def test_clean_stream_decodes_exactly(allocator, sender, payload_type, encoding, encode, decode):
    speech = speech_8k()
    encoded = encode(speech)
    receiver = await RtpReceiver.open(allocator, ReceiverConfig({payload_type: encoding}))
    packets = g711_packets(encoded, payload_type, ssrc=0x1234, first_sequence=900, first_timestamp=77)
    frames = await asyncio.wait_for(collect_after(receiver, send(sender, receiver.port, [p.to_bytes() for p in packets])), 10)
    np.testing.assert_array_equal(concatenated(frames), decode(encoded))
    stats = receiver.stats()
    assert (stats.packets, stats.lost, stats.late, stats.filled_ms) == (len(packets), 0, 0, 0.0)


def impaired_schedule(packets: list[RtpPacket], lost: set[int], duplicated: set[int], seed: int) -> list[bytes]:
    """Send order with loss, duplicates, swaps and up to 8 ms of jitter on a 5 ms pace (reorders by 1-2)."""
    rng = random.Random(seed)
    timed = []
    for index, packet in enumerate(packets):
        if index in lost:
            continue
        copies = 2 if index in duplicated else 1
        timed += [(index * PACE_S + rng.uniform(0, 0.008) + copy * 0.004, packet.to_bytes()) for copy in range(copies)]
    timed.sort(key=lambda item: item[0])
    return [datagram for _, datagram in timed]


async def test_impaired_stream_keeps_the_senders_timeline(allocator, sender):
    encoded = ulaw_encode(speech_8k())
    half = len(encoded) // 2 // N * N
    # The first stream wraps both counters a few packets in; then the SSRC changes, as after a transfer.
    first = g711_packets(encoded[:half], 0, ssrc=111, first_sequence=65530, first_timestamp=2**32 - 10 * N)
    second = g711_packets(encoded[half:], 0, ssrc=222, first_sequence=4000, first_timestamp=123_456)
    packets = first + second
    lost = {3, 20, 21, 95}
    duplicated = {5, 40, 80}
    assert not lost & {0, len(first) - 1, len(first), len(packets) - 1}  # the edges define the length
    # A playout delay of 1 s: holes are then resolved by the stream's own later packets, never by a
    # wall-clock deadline that a stalled runner could let pass before a reordered packet is read.
    receiver = await RtpReceiver.open(allocator, ReceiverConfig(PCMU_ONLY, playout_delay_s=1.0))
    frames = await asyncio.wait_for(
        collect_after(receiver, send(sender, receiver.port, impaired_schedule(packets, lost, duplicated, seed=7))), 15
    )
    pcm = concatenated(frames)
    assert pcm.shape[0] == len(encoded)
    expected = ulaw_decode(encoded)
    for index in range(len(packets)):
        span = slice(index * N, min((index + 1) * N, len(encoded)))
        np.testing.assert_array_equal(pcm[span], 0 if index in lost else expected[span], err_msg=f"packet {index}")
    stats = receiver.stats()
    assert stats.lost == len(lost)
    assert stats.duplicate == len(duplicated)
    assert stats.reordered > 0
    assert stats.late == 0
    assert stats.filled_ms == pytest.approx(len(lost) * 20)
    assert stats.ssrc_changes == 1
    assert stats.packets == len(packets) - len(lost)


async def test_malformed_corpus_is_counted_and_good_packets_still_decode(allocator, sender):
    encoded = ulaw_encode(speech_8k()[: 20 * N])
    receiver = await RtpReceiver.open(allocator, ReceiverConfig(PCMU_ONLY))
    garbage = [path.read_bytes() for path in CORPUS]
    good = [packet.to_bytes() for packet in g711_packets(encoded, 0, ssrc=5)]
    frames = await asyncio.wait_for(collect_after(receiver, send(sender, receiver.port, garbage + good)), 10)
    np.testing.assert_array_equal(concatenated(frames), ulaw_decode(encoded))
    expected: dict[str, int] = {}
    for path in CORPUS:
        reason = f"malformed_{path.stem.split('--')[0]}"
        expected[reason] = expected.get(reason, 0) + 1
    assert receiver.stats().dropped == expected


async def test_first_source_latching_ignores_a_second_sender(allocator, sender):
    intruder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        intruder.bind(("127.0.0.1", 0))
        encoded = ulaw_encode(speech_8k()[: 10 * N])
        receiver = await RtpReceiver.open(allocator, ReceiverConfig(PCMU_ONLY, latching=Latching.FIRST))
        packets = [p.to_bytes() for p in g711_packets(encoded, 0, ssrc=1)]
        noise = [p.to_bytes() for p in g711_packets(bytes(10 * N), 0, ssrc=2)]
        frames = await asyncio.wait_for(
            collect_after(receiver, asyncio.gather(send(sender, receiver.port, packets), send(intruder, receiver.port, noise, 0.0071))),
            10,
        )
    finally:
        intruder.close()
    np.testing.assert_array_equal(concatenated(frames), ulaw_decode(encoded))
    assert receiver.stats().dropped == {"unexpected_source": 10}


async def test_sdp_latching_accepts_only_the_announced_address(allocator, sender):
    stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        stranger.bind(("127.0.0.1", 0))
        config = ReceiverConfig(PCMU_ONLY, remote=sender.getsockname(), latching=Latching.SDP)
        receiver = await RtpReceiver.open(allocator, config)
        early = [p.to_bytes() for p in g711_packets(bytes(5 * N), 0, ssrc=9)]
        encoded = ulaw_encode(speech_8k()[: 10 * N])
        frames = await asyncio.wait_for(collect_after(receiver, send(stranger, receiver.port, early)), 10)
        assert frames == [] and receiver.stats().dropped == {"unexpected_source": 5}
        receiver = await RtpReceiver.open(allocator, config)
        packets = [p.to_bytes() for p in g711_packets(encoded, 0, ssrc=1)]
        frames = await asyncio.wait_for(collect_after(receiver, send(sender, receiver.port, packets)), 10)
    finally:
        stranger.close()
    np.testing.assert_array_equal(concatenated(frames), ulaw_decode(encoded))


def telephone_event(sequence: int, timestamp: int, digit_code: int, end: bool, duration: int) -> bytes:
    payload = bytes([digit_code, (0x80 if end else 0) | 10]) + duration.to_bytes(2, "big")
    return RtpPacket(101, sequence, timestamp, ssrc=3, payload=payload).to_bytes()


async def test_dtmf_press_is_one_event_at_its_media_time(allocator, sender):
    audio = g711_packets(ulaw_encode(np.zeros(30 * N, np.int16)), 0, ssrc=3, first_sequence=0, first_timestamp=1000)
    datagrams = [packet.to_bytes() for packet in audio[:10]]
    # Key "7" pressed at packet 10 for 5 packets (audio pauses meanwhile), then three end packets.
    start = 1000 + 10 * N
    datagrams += [telephone_event(10 + i, start, 7, False, (i + 1) * N) for i in range(4)]
    datagrams += [telephone_event(14 + i, start, 7, True, 5 * N) for i in range(3)]
    datagrams += [RtpPacket(0, 17 + i, start + (5 + i) * N, 3, packet.payload).to_bytes() for i, packet in enumerate(audio[15:])]
    receiver = await RtpReceiver.open(allocator, ReceiverConfig({0: "PCMU", 101: "telephone-event"}))
    frames = await asyncio.wait_for(collect_after(receiver, send(sender, receiver.port, datagrams)), 10)
    events = [event async for event in receiver.events()]
    assert [(e.digit, e.start_sample, e.duration_samples) for e in events] == [("7", 10 * N, 5 * N)]
    assert concatenated(frames).shape[0] == 30 * N  # the DTMF pause is silence on the timeline
    assert receiver.stats().lost == 0


async def test_inactivity_is_reported_once_as_an_event(allocator, sender):
    receiver = await RtpReceiver.open(allocator, ReceiverConfig(PCMU_ONLY, inactivity_timeout_s=0.2))
    try:
        await send(sender, receiver.port, [p.to_bytes() for p in g711_packets(bytes(3 * N), 0, ssrc=4)])
        event = await asyncio.wait_for(anext(receiver.events()), 2)
        assert isinstance(event, RtpTimeout) and event.idle_s >= 0.2
        await asyncio.sleep(0.3)
    finally:
        receiver.close()
    assert [event async for event in receiver.events()] == []


async def test_rtcp_on_the_odd_port_is_counted(allocator, sender):
    receiver = await RtpReceiver.open(allocator, ReceiverConfig(PCMU_ONLY))
    try:
        receiver_report = bytes.fromhex("81c90007") + bytes(28)
        bye = bytes.fromhex("81cb0001") + bytes(4)
        await send(sender, receiver.port + 1, [receiver_report + bye, b"\x00"])
        await asyncio.sleep(0.05)
        assert receiver.stats().rtcp == {"rr": 1, "bye": 1, "malformed_truncated_header": 1}
    finally:
        receiver.close()


def test_ports_are_even_pairs_skip_busy_ones_and_run_out():
    busy = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        busy.bind(("127.0.0.1", 0))
        taken = busy.getsockname()[1]
        low = taken - (taken % 2) - 2
        allocator = PortAllocator("127.0.0.1", low, low + 5)  # pairs (low, low+1) and (low+2, low+3)
        pairs = []
        try:
            while True:
                pairs.append(allocator.allocate())
        except PortsExhausted:
            pass
        ports = [pair.port for pair in pairs]
        assert all(port % 2 == 0 for port in ports)
        assert taken not in ports and taken - 1 not in ports and taken not in [port + 1 for port in ports]
        assert allocator.in_use == len(pairs)
        # The busy pair counted as free until tried; now nothing is, which readiness reports.
        assert (allocator.capacity, allocator.free_pairs, allocator.exhausted) == (len(pairs) + 1, 0, True)
        allocator.release(pairs[0])
        assert (allocator.free_pairs, allocator.exhausted) == (len(pairs), False)  # the busy one counts again
        for pair in pairs[1:]:
            allocator.release(pair)
        assert allocator.in_use == 0
    finally:
        busy.close()


# -- stray SSRCs (issue 11): one packet of another SSRC must not cut the call --------------------


def stray(sequence: int, ssrc: int = 0xBAD) -> bytes:
    """A loud packet of another SSRC, as a comfort-noise or DTMF generator's stray would be."""
    return RtpPacket(0, sequence, 999_000 + sequence * N, ssrc, ulaw_encode(np.full(N, 20000, np.int16))).to_bytes()


async def test_a_stray_packet_of_another_ssrc_does_not_cut_the_call(allocator, sender, caplog):
    encoded = ulaw_encode(speech_8k()[: 60 * N])
    packets = [p.to_bytes() for p in g711_packets(encoded, 0, ssrc=0xA11CE, first_sequence=100)]
    # One stray at packet 10; a burst of four (less than the probation) at packet 30.
    datagrams = packets[:10] + [stray(7)] + packets[10:30] + [stray(500 + i) for i in range(4)] + packets[30:]
    receiver = await RtpReceiver.open(allocator, ReceiverConfig(PCMU_ONLY))
    with caplog.at_level("WARNING", logger="asr_stream.rtp.receiver"):
        frames = await asyncio.wait_for(collect_after(receiver, send(sender, receiver.port, datagrams)), 10)
    np.testing.assert_array_equal(concatenated(frames), ulaw_decode(encoded))  # the whole call, no blip
    stats = receiver.stats()
    assert stats.dropped == {"stray_ssrc": 5} and stats.ssrc_changes == 0 and stats.lost == 0
    warnings = [r.getMessage() for r in caplog.records if r.name == "asr_stream.rtp.receiver"]
    assert len(warnings) == 1 and "SSRC 0x00000bad ignored as stray" in warnings[0], warnings  # throttled


async def test_a_genuine_ssrc_switch_passes_probation_without_losing_audio(allocator, sender):
    encoded = ulaw_encode(speech_8k()[: 40 * N])
    first = g711_packets(encoded[: 20 * N], 0, ssrc=1, first_sequence=10, first_timestamp=0)
    second = g711_packets(encoded[20 * N :], 0, ssrc=2, first_sequence=60000, first_timestamp=5_000_000)
    receiver = await RtpReceiver.open(allocator, ReceiverConfig(PCMU_ONLY))
    frames = await asyncio.wait_for(collect_after(receiver, send(sender, receiver.port, [p.to_bytes() for p in first + second])), 10)
    np.testing.assert_array_equal(concatenated(frames), ulaw_decode(encoded))
    stats = receiver.stats()
    assert stats.ssrc_changes == 1 and stats.dropped == {} and stats.packets == 40


async def test_a_reinvite_to_a_new_address_hands_over_at_the_first_packet(allocator, sender):
    """First-source latching: after `set_remote` with a new address, the new source is taken at once."""
    moved = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        moved.bind(("127.0.0.1", 0))
        encoded = ulaw_encode(speech_8k()[: 20 * N])
        before = [p.to_bytes() for p in g711_packets(encoded[: 10 * N], 0, ssrc=1, first_timestamp=0)]
        after = [p.to_bytes() for p in g711_packets(encoded[10 * N :], 0, ssrc=2, first_sequence=7000, first_timestamp=10 * N)]
        receiver = await RtpReceiver.open(allocator, ReceiverConfig(PCMU_ONLY, remote=sender.getsockname()))

        async def call() -> None:
            await send(sender, receiver.port, before)
            receiver.set_remote(moved.getsockname())
            await send(moved, receiver.port, after[:1])
            await send(sender, receiver.port, [stray(3, ssrc=1)])  # the old source, late: no longer ours
            await send(moved, receiver.port, after[1:])

        frames = await asyncio.wait_for(collect_after(receiver, call()), 10)
    finally:
        moved.close()
    np.testing.assert_array_equal(concatenated(frames), ulaw_decode(encoded))
    assert receiver.stats().ssrc_changes == 1 and receiver.stats().dropped == {"unexpected_source": 1}
