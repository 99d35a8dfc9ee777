"""G.711 tables against ITU-T reference values and, where Python still ships it, CPython's audioop."""

import warnings
from pathlib import Path

import numpy as np
import pytest

from asr_stream.audio.wavfile import load_audio
from asr_stream.ingest.resample import resample
from asr_stream.rtp.g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode

SPEECH = Path(__file__).resolve().parents[1].parent / "shared" / "speech"
EVERY_CODE = bytes(range(256))
EVERY_SAMPLE = np.arange(-32768, 32768, dtype=np.int16)


def test_reference_points_of_both_laws():
    # μ-law 0xFF/0x7F are +0/-0, 0x00/0x80 the extremes; A-law 0xD5/0x55 are +8/-8 (sign bit set = positive).
    assert ulaw_decode(bytes([0xFF, 0x7F, 0x00, 0x80])).tolist() == [0, 0, -32124, 32124]
    assert alaw_decode(bytes([0xD5, 0x55, 0xAA, 0x2A])).tolist() == [8, -8, 32256, -32256]
    assert ulaw_encode(np.array([0, 32767, -32768])) == bytes([0xFF, 0x80, 0x00])
    assert alaw_encode(np.array([0, 32767, -32768])) == bytes([0xD5, 0xAA, 0x2A])


def test_tables_match_audioop_on_every_input():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        audioop = pytest.importorskip("audioop")  # removed in Python 3.13
    assert ulaw_decode(EVERY_CODE).tobytes() == audioop.ulaw2lin(EVERY_CODE, 2)
    assert alaw_decode(EVERY_CODE).tobytes() == audioop.alaw2lin(EVERY_CODE, 2)
    assert ulaw_encode(EVERY_SAMPLE) == audioop.lin2ulaw(EVERY_SAMPLE.tobytes(), 2)
    assert alaw_encode(EVERY_SAMPLE) == audioop.lin2alaw(EVERY_SAMPLE.tobytes(), 2)


@pytest.mark.parametrize(("encode", "decode"), [(ulaw_encode, ulaw_decode), (alaw_encode, alaw_decode)])
def test_speech_survives_a_round_trip_at_toll_quality(encode, decode):
    wav = next(iter(sorted((SPEECH / "wav16k").glob("*.wav"))))
    speech = np.round(resample(load_audio(wav)[0][0], 16000, 8000) * 32767).astype(np.int16)
    decoded = decode(encode(speech)).astype(np.float64)
    snr_db = 10 * np.log10(np.sum(speech.astype(np.float64) ** 2) / np.sum((speech - decoded) ** 2))
    assert snr_db > 30  # G.711 gives about 38 dB on speech at normal levels
