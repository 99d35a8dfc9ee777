"""INT8 calibration: representative input batches, the calibration-table cache, TensorRT's calibrator.

Kept apart from TensorRT's calibrator class so that what it feeds (shapes, values, order, the cache
round trip) is testable without TensorRT or a GPU: `whisper_calibration` builds the batches from
real speech with the runner's own features and the CPU encoder, and only `entropy_calibrator`
touches TensorRT and CUDA.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from types import ModuleType

import numpy as np

from asr_stream.audio.wavfile import load_audio
from asr_stream.inference.models import load_prepared, sha256_of
from asr_stream.inference.onnxruntime_backend import OnnxRuntimeEngine
from asr_stream.inference.tensorrt.buffers import DeviceBuffer
from asr_stream.inference.tensorrt.cache import calibration_cache_path
from asr_stream.inference.whisper.engine_compute import HostEncoded
from asr_stream.inference.whisper.graphs import DECODER, ENCODER, GRAPH_FILES
from asr_stream.inference.whisper.runner import WhisperRunner


class CalibrationBatches:
    """Representative input batches for INT8 calibration, and the calibration cache file.

    `feeds` yields {input name: array} dicts of one batch.
    """

    def __init__(self, feeds: Iterator[Mapping[str, np.ndarray]], cache_file: Path) -> None:
        self._feeds = feeds
        self.cache_file = cache_file

    def next_batch(self) -> Mapping[str, np.ndarray] | None:
        return next(self._feeds, None)

    def read_cache(self) -> bytes | None:
        """A previous run's table: calibrating again over the same speech would give the same one."""
        return self.cache_file.read_bytes() if self.cache_file.is_file() else None

    def write_cache(self, table: bytes) -> None:
        self.cache_file.parent.mkdir(parents=True, exist_ok=True)
        self.cache_file.write_bytes(table)


def entropy_calibrator(trt: ModuleType, batches: CalibrationBatches) -> object:
    """A TensorRT IInt8EntropyCalibrator2 copying `batches` to the GPU with cuda-python.

    get_batch_size is 1: with explicit-batch networks TensorRT takes the batch from the shapes.
    """

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):  # type: ignore[name-defined]
        def __init__(self) -> None:
            super().__init__()
            self._buffers: dict[str, DeviceBuffer] = {}

        def get_batch_size(self) -> int:
            return 1

        def get_batch(self, names: list[str]) -> list[int] | None:
            feeds = batches.next_batch()
            if feeds is None:
                return None
            pointers = []
            for name in names:
                array = np.ascontiguousarray(feeds[name])
                buffer = self._buffers.get(name)
                if buffer is None or buffer.nbytes < array.nbytes:
                    buffer = self._buffers[name] = DeviceBuffer(array.nbytes)
                buffer.upload(array)
                pointers.append(buffer.pointer)
            return pointers

        def read_calibration_cache(self) -> bytes | None:
            return batches.read_cache()

        def write_calibration_cache(self, cache: bytes) -> None:
            batches.write_cache(bytes(cache))

    return EntropyCalibrator()


def whisper_calibration(engines_dir: str | Path, model: str, wavs: list[Path], batch: int) -> dict[str, CalibrationBatches]:
    """INT8 calibration data for both Whisper graphs from real speech files, keyed by graph file.

    Every channel of every file is one utterance, and its first 30 s window is what the encoder is
    calibrated on: the same log-mel features the runner serves (`WhisperRunner.features`). The
    decoder sees the first step of each batch (start token, a one-slot empty cache at offset 0) over
    the cross-attention K/V that the fp32 encoder computes on the CPU with ONNX Runtime.
    """
    prepared = load_prepared(model, engines_dir)
    runner = WhisperRunner.from_prepared(prepared, OnnxRuntimeEngine.load)
    audios = [channel for path in wavs for channel in load_audio(path)[0]]
    mel_batches = [runner.features(audios[first : first + batch]) for first in range(0, len(audios), batch)]
    start_token = runner.tokenizer.sot
    dims = prepared.dims

    def decoder_feeds() -> Iterator[Mapping[str, np.ndarray]]:
        for mel in mel_batches:  # encoded lazily: one batch's K/V at a time (base at batch 128 is > 1 GB)
            encoded: HostEncoded = runner.compute.encode(mel)
            empty_cache = np.zeros((dims.n_text_layer, 2, len(mel), dims.n_text_head, 1, dims.head_dim), np.float32)
            yield {
                "tokens": np.full((len(mel), 1), start_token, np.int64),
                "offset": np.zeros(len(mel), np.int64),
                "self_kv": empty_cache,
                **encoded.cross,
            }

    encoder_file, decoder_file = GRAPH_FILES[ENCODER], GRAPH_FILES[DECODER]
    digests = {graph: sha256_of([prepared.directory / graph]) for graph in (encoder_file, decoder_file)}
    return {
        encoder_file: CalibrationBatches(
            ({"mel": mel} for mel in mel_batches), calibration_cache_path(engines_dir, model, digests[encoder_file])
        ),
        decoder_file: CalibrationBatches(decoder_feeds(), calibration_cache_path(engines_dir, model, digests[decoder_file])),
    }
