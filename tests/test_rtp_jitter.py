"""Timeline, jitter buffer, sequence statistics and DTMF as pure objects (no sockets, no clock)."""

import numpy as np
import pytest

from asr_stream.rtp.codecs import make_decoder
from asr_stream.rtp.dtmf import DtmfDetector
from asr_stream.rtp.g711 import ulaw_encode
from asr_stream.rtp.jitter import JitterBuffer, PcmFrame
from asr_stream.rtp.stats import SourceStats
from asr_stream.rtp.timeline import Timeline

PCMU = make_decoder("PCMU")
N = 160  # samples per 20 ms packet


def ramp_packets(count: int) -> list[bytes]:
    """Distinct, decodable payloads: packet i carries a constant level that identifies it."""
    return [ulaw_encode(np.full(N, 100 * (i + 1), np.int16)) for i in range(count)]


class Collect:
    def __init__(self):
        self.frames: list[PcmFrame] = []

    def __call__(self, frame: PcmFrame) -> None:
        self.frames.append(frame)

    def pcm(self) -> np.ndarray:
        starts = [frame.start_sample for frame in self.frames]
        assert starts == [0] + [frame.end_sample for frame in self.frames[:-1]], "output must be contiguous"
        return np.concatenate([frame.samples for frame in self.frames])


def feed(order: list[int], payloads: list[bytes], delay_s: float = 0.06, spacing_s: float = 0.02):
    out = Collect()
    jitter = JitterBuffer(8000, out, playout_delay_s=delay_s)
    for arrival_index, i in enumerate(order):
        jitter.push(i * N, N, payloads[i], PCMU, arrival=arrival_index * spacing_s)
    jitter.flush()
    return jitter, out


def expected_pcm(payloads: list[bytes], missing: set[int] = frozenset()) -> np.ndarray:
    return np.concatenate([np.zeros(N, np.int16) if i in missing else PCMU.decode(p) for i, p in enumerate(payloads)])


def test_in_order_audio_is_emitted_without_holding():
    out = Collect()
    jitter = JitterBuffer(8000, out)
    payloads = ramp_packets(3)
    jitter.push(0, N, payloads[0], PCMU, arrival=0.0)
    jitter.poll(0.06)  # the first packet waits the playout delay: an earlier one may still come
    jitter.push(N, N, payloads[1], PCMU, arrival=0.08)
    assert [frame.start_sample for frame in out.frames] == [0, N]
    assert jitter.deadline() is None


def test_reordering_within_the_playout_delay_is_undone():
    payloads = ramp_packets(10)
    jitter, out = feed([0, 2, 1, 3, 5, 4, 6, 7, 9, 8], payloads)
    np.testing.assert_array_equal(out.pcm(), expected_pcm(payloads))
    assert not any(frame.filled for frame in out.frames) and jitter.late == 0


def test_a_reordered_first_packet_still_starts_the_channel():
    payloads = ramp_packets(4)
    _, out = feed([1, 0, 2, 3], payloads)
    np.testing.assert_array_equal(out.pcm(), expected_pcm(payloads))


def test_lost_packets_become_silence_of_exactly_their_length():
    payloads = ramp_packets(12)
    jitter, out = feed([0, 1, 3, 4, 5, 6, 9, 10, 11], payloads)
    np.testing.assert_array_equal(out.pcm(), expected_pcm(payloads, missing={2, 7, 8}))
    assert jitter.filled_samples == 3 * N
    assert [frame.start_sample for frame in out.frames if frame.filled] == [2 * N, 7 * N]


def test_a_packet_behind_more_than_the_delay_is_late_and_its_hole_stays_silent():
    payloads = ramp_packets(10)
    jitter, out = feed([0, 1, 3, 4, 5, 6, 7, 2, 8, 9], payloads)
    np.testing.assert_array_equal(out.pcm(), expected_pcm(payloads, missing={2}))
    assert jitter.late == 1


def test_duplicates_are_dropped_once_held_and_late_once_played():
    payloads = ramp_packets(6)
    jitter, out = feed([0, 2, 2, 1, 3, 0, 4, 5], payloads)
    np.testing.assert_array_equal(out.pcm(), expected_pcm(payloads))
    assert (jitter.duplicate, jitter.late) == (1, 1)


def test_a_hole_is_crossed_by_wall_time_when_no_more_audio_comes():
    out = Collect()
    jitter = JitterBuffer(8000, out, playout_delay_s=0.06)
    payloads = ramp_packets(3)
    jitter.push(0, N, payloads[0], PCMU, arrival=0.0)
    jitter.push(2 * N, N, payloads[2], PCMU, arrival=0.04)  # 60 ms of timeline from 0: the channel starts
    assert [frame.start_sample for frame in out.frames] == [0]
    assert jitter.deadline() == pytest.approx(0.10)  # packet 2 waits at most the delay for packet 1
    jitter.poll(0.099)
    assert len(out.frames) == 1
    jitter.poll(0.10)
    assert [(frame.start_sample, frame.filled) for frame in out.frames] == [(0, False), (N, True), (2 * N, False)]


def test_timeline_unwraps_32_bit_timestamps():
    timeline = Timeline(8000)
    first = 2**32 - 2 * N
    positions = [timeline.locate(7, (first + i * N) % 2**32, N, arrival=i * 0.02) for i in range(5)]
    assert positions == [0, N, 2 * N, 3 * N, 4 * N]
    assert timeline.locate(7, (first + N) % 2**32, N, arrival=0.2) == N  # a late one before the wrap


def test_timeline_places_gaps_by_timestamp():
    timeline = Timeline(8000)
    assert timeline.locate(1, 1000, N, arrival=0.0) == 0
    assert timeline.locate(1, 1000 + 8000, N, arrival=1.0) == 8000  # one second of silence suppression


def test_new_ssrc_continues_the_timeline_and_a_returning_one_is_rebased_again():
    # Which SSRC is current is the arbiter's decision (rtp/ssrc.py); the timeline never retires
    # an SSRC for good, since that is what cut calls at the first stray packet (issue 11).
    timeline = Timeline(8000)
    for i in range(3):
        timeline.locate(1, 5000 + i * N, N, arrival=i * 0.02)
    assert timeline.locate(2, 123456789, N, arrival=0.06) == 3 * N
    assert timeline.locate(2, 123456789 + N, N, arrival=0.08) == 4 * N
    assert timeline.locate(1, 5000 + 3 * N, N, arrival=0.10) == 5 * N
    assert timeline.ssrc_changes == 2


def test_new_ssrc_after_a_long_pause_keeps_the_pause():
    timeline = Timeline(8000)
    timeline.locate(1, 0, N, arrival=0.0)
    assert timeline.locate(2, 99, N, arrival=3.0) == N + 3 * 8000


def test_a_timestamp_reset_is_rebased_rather_than_filled():
    timeline = Timeline(8000)
    timeline.locate(1, 800000, N, arrival=0.0)
    timeline.locate(1, 800000 + N, N, arrival=0.02)
    assert timeline.locate(1, 17, N, arrival=0.04) == 2 * N
    assert timeline.locate(1, 17 + N, N, arrival=0.06) == 3 * N
    assert timeline.timestamp_jumps == 1


def test_sequence_statistics_across_the_16_bit_wrap():
    stats = SourceStats.starting_at(65533)
    arrivals = [65533, 65535, 65534, 0, 0, 2, 3]  # 65534 reordered, 0 duplicated, 1 lost
    accepted = [stats.observe_sequence(seq) for seq in arrivals]
    assert accepted == [True, True, True, True, False, True, True]
    assert (stats.received, stats.duplicate, stats.reordered, stats.lost) == (6, 1, 1, 1)


def test_a_sequence_restart_keeps_earlier_loss():
    stats = SourceStats.starting_at(100)
    for seq in (100, 102):
        stats.observe_sequence(seq)
    for seq in (40000, 40001):
        stats.observe_sequence(seq)
    assert (stats.restarts, stats.lost, stats.received) == (1, 1, 4)


def test_interarrival_jitter_is_zero_on_a_perfect_clock_and_grows_with_delay_variation():
    steady, shaky = SourceStats.starting_at(0), SourceStats.starting_at(0)
    for i in range(50):
        steady.observe_transit(i * N, arrival_units=i * N)
        shaky.observe_transit(i * N, arrival_units=i * N + (80 if i % 2 else 0))
    assert steady.jitter == 0
    assert 40 < shaky.jitter <= 80


def dtmf(code: int, end: bool, duration: int) -> bytes:
    return bytes([code, (0x80 if end else 0) | 10]) + duration.to_bytes(2, "big")


def test_dtmf_press_is_reported_once_despite_three_end_packets():
    detector = DtmfDetector(8000)
    packets = [dtmf(5, False, 160), dtmf(5, False, 320), dtmf(5, True, 800), dtmf(5, True, 800), dtmf(5, True, 800)]
    events = [event for packet in packets for event in detector.observe(packet, start_sample=4000)]
    assert [(e.digit, e.start_sample, e.duration_samples, e.start_ms) for e in events] == [("5", 4000, 800, 500.0)]
    assert detector.finish() == []


def test_dtmf_press_without_end_packets_is_reported_when_the_next_starts_or_at_finish():
    detector = DtmfDetector(8000)
    assert detector.observe(dtmf(11, False, 400), start_sample=0) == []
    [hash_press] = detector.observe(dtmf(10, False, 160), start_sample=2000)
    [star_press] = detector.finish()
    assert (hash_press.digit, hash_press.duration_samples) == ("#", 400)
    assert (star_press.digit, star_press.start_sample) == ("*", 2000)
