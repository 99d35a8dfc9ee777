"""Reader for CTranslate2's `model.bin` (the format the PyPI Whisper weight packages ship).

Written by hand, in numpy only, because the format is small and stable, and the export path must
not depend on the `ctranslate2` runtime (which the tests use as an independent oracle instead).

Layout (little-endian): u32 version, str spec, u32 revision, u32 n_vars; per variable: str name,
u8 rank, u32 x rank shape, u8 dtype, u32 nbytes, raw data; then u32 n_aliases and (alias, target)
string pairs. A str is a u16 length that counts a trailing NUL, then the bytes and the NUL.
Scalars (e.g. `num_heads`) are rank-0 variables.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SUPPORTED_VERSION = 6

# CTranslate2's DataType enum, in file order. bfloat16 has no numpy dtype: it is widened by hand.
_DTYPES: dict[int, str] = {0: "float32", 1: "int8", 2: "int16", 3: "int32", 4: "float16", 5: "bfloat16"}


class ModelFormatError(ValueError):
    """The bytes are not a CTranslate2 model.bin this reader understands."""


@dataclass(frozen=True)
class CT2Model:
    """Variables of one model.bin: floats widened to float32, aliases resolved to the same array."""

    spec: str
    revision: int
    variables: dict[str, np.ndarray]

    def __getitem__(self, name: str) -> np.ndarray:
        return self.variables[name]

    def scalar(self, name: str) -> int:
        """A rank-0 integer variable such as `encoder/num_heads`."""
        return int(self.variables[name].reshape(()))


class _Cursor:
    """Sequential little-endian reads over one in-memory buffer, with bounds checks."""

    def __init__(self, data: bytes | memoryview) -> None:
        self.data = memoryview(data)
        self.offset = 0

    def take(self, n: int) -> memoryview:
        if self.offset + n > len(self.data):
            raise ModelFormatError(f"truncated model.bin: need {n} bytes at offset {self.offset}, file has {len(self.data)}")
        chunk = self.data[self.offset : self.offset + n]
        self.offset += n
        return chunk

    def unpack(self, fmt: str) -> tuple:
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt)))

    def string(self) -> str:
        (length,) = self.unpack("H")
        return bytes(self.take(length)).rstrip(b"\0").decode("utf-8")


def _to_array(raw: memoryview, dtype_code: int, shape: tuple[int, ...]) -> np.ndarray:
    dtype = _DTYPES.get(dtype_code)
    if dtype is None:
        raise ModelFormatError(f"unknown dtype code {dtype_code}")
    if dtype == "bfloat16":
        widened = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
        return widened.view(np.float32).reshape(shape)
    array = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).reshape(shape)
    if dtype == "float16":
        return array.astype(np.float32)
    return array.copy()  # own the memory, so the file buffer can be released


def parse_model_bin(data: bytes | memoryview) -> CT2Model:
    """Parse the bytes of a whole model.bin (see the module docstring for the layout)."""
    cursor = _Cursor(data)
    (version,) = cursor.unpack("I")
    if version != SUPPORTED_VERSION:
        raise ModelFormatError(f"model.bin version {version}; this reader supports {SUPPORTED_VERSION}")
    spec = cursor.string()
    (revision,) = cursor.unpack("I")
    (n_vars,) = cursor.unpack("I")
    variables: dict[str, np.ndarray] = {}
    for _ in range(n_vars):
        name = cursor.string()
        (rank,) = cursor.unpack("B")
        shape = cursor.unpack("I" * rank)
        (dtype_code,) = cursor.unpack("B")
        (nbytes,) = cursor.unpack("I")
        variables[name] = _to_array(cursor.take(nbytes), dtype_code, shape)
    (n_aliases,) = cursor.unpack("I")
    for _ in range(n_aliases):
        alias, target = cursor.string(), cursor.string()
        variables[alias] = variables[target]
    if cursor.offset != len(cursor.data):
        raise ModelFormatError(f"{len(cursor.data) - cursor.offset} trailing bytes after the aliases")
    return CT2Model(spec=spec, revision=revision, variables=variables)


def read_model_bin(parts: Iterable[Path]) -> CT2Model:
    """Read a model.bin stored whole or split into parts (concatenated in the given order)."""
    return parse_model_bin(b"".join(Path(part).read_bytes() for part in parts))
