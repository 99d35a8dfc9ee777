"""The live daemon's window-bucket policy (runner.live_windows): which window a segment gets, and
when a bucket's output is thrown away for the full 30 s window. docs/whisper-windows.md has the
measurements behind the policy; the slow test re-checks its accuracy claim on the shared clips."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
from conftest import load_mono

from asr_stream.devtools.scoring import corpus_wer
from asr_stream.inference.engine import Engine
from asr_stream.inference.models import load_prepared
from asr_stream.inference.onnxruntime_backend import OnnxRuntimeEngine
from asr_stream.inference.whisper.decode import looks_broken, max_plausible_tokens
from asr_stream.inference.whisper.engine_compute import EngineCompute
from asr_stream.inference.whisper.runner import FULL_WINDOW_S, WhisperRunner, live_windows


class FrameRecorder:
    """Wraps the encoder Engine and records the mel frame count of every run."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.backend = engine.backend
        self.max_batch = engine.max_batch
        self.frames: list[int] = []

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.frames.append(feeds["mel"].shape[-1])
        return self.engine.run(feeds)


@pytest.fixture(scope="module")
def full(engines_dir: Path) -> WhisperRunner:
    return WhisperRunner.from_prepared(load_prepared("whisper-tiny.en", engines_dir), OnnxRuntimeEngine.load)


def recording(full: WhisperRunner, windows_s: tuple[int, ...] = (FULL_WINDOW_S,), margin_s: float = 0.0) -> WhisperRunner:
    """`full`'s model and engines with the encoder's frame counts recorded (`runner.compute.encoder.frames`)."""
    compute = full.compute
    assert isinstance(compute, EngineCompute)
    recorded = EngineCompute(FrameRecorder(compute.encoder), compute.decoder, compute.n_text_ctx)
    return WhisperRunner(full.decoder.on(recorded), windows_s, margin_s)


@pytest.fixture
def live(full: WhisperRunner) -> WhisperRunner:
    return recording(full, *live_windows("whisper-tiny.en"))


@pytest.fixture(scope="module")
def clip_by_id(english_clips: list[dict]) -> dict[str, np.ndarray]:
    return {row["id"]: load_mono(row["wav"]) for row in english_clips}


@pytest.mark.parametrize(("seconds", "window"), [(1.0, 10), (9.0, 10), (9.01, 20), (19.0, 20), (19.5, 30), (30.0, 30), (45.0, 30)])
def test_smallest_window_that_keeps_a_one_second_margin(live, seconds, window):
    assert live.window_for(seconds) == window


def test_only_tiny_en_was_measured_to_keep_accuracy_in_buckets():
    assert live_windows("whisper-tiny.en") == ((10, 20, 30), 1.0)
    assert live_windows("whisper-base") == ((FULL_WINDOW_S,), 0.0)  # base lost 0.024 WER in buckets


@pytest.mark.parametrize("windows_s", [(10, 20), (20, 10, 30), (10, 10, 30), (0, 30), ()])
def test_windows_must_rise_and_end_with_the_full_window(full, windows_s):
    with pytest.raises(ValueError):
        WhisperRunner(full.decoder, windows_s)


def test_default_runner_always_encodes_the_full_window(full, clip_by_id):
    runner = recording(full)
    runner.transcribe_batch([clip_by_id["en_librivox_sense_and_sensibility_01_austen_64kb-0880"]])
    assert runner.compute.encoder.frames == [3000]


def test_short_speech_is_encoded_in_the_ten_second_window_with_the_same_text(live, full, clip_by_id):
    audio = clip_by_id["en_librivox_sense_and_sensibility_01_austen_64kb-0930"]  # 3.3 s
    assert live.transcribe_batch([audio])[0].tokens == full.transcribe_batch([audio])[0].tokens
    assert live.compute.encoder.frames == [1000]


def test_a_batch_shares_the_window_of_its_longest_segment(live, clip_by_id):
    short, long = (
        clip_by_id["en_librivox_sense_and_sensibility_01_austen_64kb-0930"],
        clip_by_id["en_librivox_sense_and_sensibility_01_austen_64kb-0870"],
    )
    live.transcribe_batch([short, np.concatenate([long, long])])  # 3.3 s and 14.2 s
    assert live.compute.encoder.frames == [2000, 2000]  # ONNX Runtime encodes one window per call (engine_compute.py)


def test_broken_bucket_output_is_decoded_again_from_the_full_window(live):
    # Silence decodes to (almost) no tokens: fewer than 0.8 per second trips the loop guard.
    silence = np.zeros(6 * 16_000, dtype=np.float32)
    live.transcribe_batch([silence])
    assert live.compute.encoder.frames == [1000, 3000]


def test_first_pass_limit_is_the_loop_guards_own_threshold():
    # decode_greedy stops one token past max_plausible_tokens: that output is already "broken".
    rng = np.random.default_rng(0)
    words = "".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz "), 300))  # incompressible: only the count can trip the guard
    assert not looks_broken(words, max_plausible_tokens(5.0), 5.0)
    assert looks_broken(words, max_plausible_tokens(5.0) + 1, 5.0)


@pytest.mark.slow
def test_live_windows_keep_the_full_windows_accuracy(live, full, english_clips, clip_by_id):
    references = [row["text"] for row in english_clips]
    audios = [clip_by_id[row["id"]] for row in english_clips]
    full_wer = corpus_wer(references, [full.transcribe_batch([audio])[0].text for audio in audios])
    live_wer = corpus_wer(references, [live.transcribe_batch([audio])[0].text for audio in audios])
    print(f"\nwhisper-tiny.en corpus WER on {len(audios)} English clips: full window {full_wer:.4f}, live windows {live_wer:.4f}")
    assert live_wer <= full_wer + 0.005
    assert sum(frames < 3000 for frames in live.compute.encoder.frames) >= len(audios) * 0.9  # the buckets are actually used
