"""G.711 μ-law (PCMU) and A-law (PCMA) through numpy lookup tables.

Why hand-written: aiortp's G.711 (the light option; aiortc pulls PyAV and a dozen packages)
works on `bytes` and, as of 0.8.0, decodes A-law with inverted polarity (0xD5 -> -8; ITU-T
G.711 and the reference `g711.c` give +8), which would flip every A-law call. The tables below
follow the Sun reference implementation (the one CPython's `audioop` used), built once with
vectorised numpy over every possible input: 256 codes to decode, 65,536 samples to encode.
Per packet, decoding is then one `take` producing an int16 ndarray (about 1 µs for 20 ms).
"""

from __future__ import annotations

import numpy as np

_ALL_CODES = np.arange(256, dtype=np.int32)
_ALL_SAMPLES = np.arange(65536, dtype=np.int32) - 32768  # the table is indexed by uint16 bit pattern
_ULAW_BIAS = 0x84


def _frozen(table: np.ndarray) -> np.ndarray:
    table.flags.writeable = False
    return table


def _ulaw_decode_table() -> np.ndarray:
    code = ~_ALL_CODES & 0xFF
    magnitude = ((((code & 0x0F) << 3) + _ULAW_BIAS) << ((code >> 4) & 0x07)) - _ULAW_BIAS
    return _frozen(np.where(code & 0x80, -magnitude, magnitude).astype(np.int16))


def _alaw_decode_table() -> np.ndarray:
    code = _ALL_CODES ^ 0x55
    segment = (code >> 4) & 0x07
    mantissa = (code & 0x0F) << 4
    magnitude = np.where(segment == 0, mantissa + 8, (mantissa + 0x108) << np.maximum(segment - 1, 0))
    return _frozen(np.where(code & 0x80, magnitude, -magnitude).astype(np.int16))


def _ulaw_encode_table() -> np.ndarray:
    pcm = _ALL_SAMPLES >> 2  # μ-law quantises 14-bit magnitudes
    mask = np.where(pcm < 0, 0x7F, 0xFF)
    biased = np.minimum(np.abs(pcm), 8159) + (_ULAW_BIAS >> 2)
    segment = np.searchsorted(np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF]), biased)
    code = np.where(segment >= 8, 0x7F, (segment << 4) | ((biased >> (np.minimum(segment, 7) + 1)) & 0x0F))
    return _frozen(_reindex_by_bit_pattern((code ^ mask).astype(np.uint8)))


def _alaw_encode_table() -> np.ndarray:
    pcm = _ALL_SAMPLES >> 3  # A-law quantises 13-bit magnitudes
    mask = np.where(pcm >= 0, 0xD5, 0x55)
    magnitude = np.where(pcm >= 0, pcm, -pcm - 1)
    segment = np.searchsorted(np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF]), magnitude)
    shift = np.where(segment < 2, 1, np.minimum(segment, 7))
    code = np.where(segment >= 8, 0x7F, (segment << 4) | ((magnitude >> shift) & 0x0F))
    return _frozen(_reindex_by_bit_pattern((code ^ mask).astype(np.uint8)))


def _reindex_by_bit_pattern(by_value: np.ndarray) -> np.ndarray:
    """Reorder a table built for values -32768..32767 so that index = the int16's uint16 bits."""
    return np.roll(by_value, -32768)


_ULAW_DECODE = _ulaw_decode_table()
_ALAW_DECODE = _alaw_decode_table()
_ULAW_ENCODE = _ulaw_encode_table()
_ALAW_ENCODE = _alaw_encode_table()


def ulaw_decode(payload: bytes) -> np.ndarray:
    """μ-law octets -> int16 samples."""
    return _ULAW_DECODE.take(np.frombuffer(payload, dtype=np.uint8))


def alaw_decode(payload: bytes) -> np.ndarray:
    """A-law octets -> int16 samples."""
    return _ALAW_DECODE.take(np.frombuffer(payload, dtype=np.uint8))


def ulaw_encode(samples: np.ndarray) -> bytes:
    """int16 samples -> μ-law octets."""
    return _ULAW_ENCODE.take(np.asarray(samples, dtype=np.int16).view(np.uint16)).tobytes()


def alaw_encode(samples: np.ndarray) -> bytes:
    """int16 samples -> A-law octets."""
    return _ALAW_ENCODE.take(np.asarray(samples, dtype=np.int16).view(np.uint16)).tobytes()
