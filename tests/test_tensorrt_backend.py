"""TensorRT backend without TensorRT: dtype mapping, shape checks against the profile, buffer sizes, load refusals."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from asr_stream.inference.engine import ShapeRange
from asr_stream.inference.tensorrt.buffers import buffer_bytes
from asr_stream.inference.tensorrt.cache import EngineCacheError
from asr_stream.inference.tensorrt.engine import TensorRTEngine, numpy_dtype, shape_problem

MEL = ShapeRange(min=(1, 80, 1500), opt=(64, 80, 3000), max=(128, 80, 3000))


def test_numpy_dtypes_of_tensorrt_types() -> None:
    assert numpy_dtype("FLOAT") == np.float32 and numpy_dtype("HALF") == np.float16 and numpy_dtype("INT64") == np.int64
    with pytest.raises(ValueError, match="BF16 has no numpy equivalent"):
        numpy_dtype("BF16")


def test_shapes_inside_the_profile_pass() -> None:
    assert shape_problem("mel", (1, 80, 1500), MEL) is None
    assert shape_problem("mel", (128, 80, 3000), MEL) is None


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((129, 80, 3000), "input mel axis 0 is 129, the engine's profile allows 1..128"),
        ((4, 80, 1000), "input mel axis 2 is 1000, the engine's profile allows 1500..3000"),
        ((80, 3000), "input mel has rank 2 \\[80, 3000\\], the engine expects rank 3"),
    ],
)
def test_shapes_outside_the_profile_are_named(shape: tuple[int, ...], message: str) -> None:
    problem = shape_problem("mel", shape, MEL)
    assert problem is not None
    assert re.search(message, problem)


def test_buffer_sizes_at_the_profile_maximum() -> None:
    assert buffer_bytes(MEL.max, np.dtype(np.float16)) == 128 * 80 * 3000 * 2
    assert buffer_bytes((6, 2, 128, 8, 448, 64), np.dtype(np.float32)) == 6 * 2 * 128 * 8 * 448 * 64 * 4


def test_load_without_a_build_says_how_to_make_one(tmp_path: Path) -> None:
    graph = tmp_path / "whisper-base" / "encoder.onnx"
    graph.parent.mkdir()
    graph.write_bytes(b"not used")
    with pytest.raises(EngineCacheError, match=r"no TensorRT build of whisper-base in .*: run `asr-stream engines build whisper-base`"):
        TensorRTEngine.load(graph)
