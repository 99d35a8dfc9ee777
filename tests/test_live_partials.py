"""The live model call (issue 13), on real tiny.en weights: partial windows, forced prefixes, mixed batches.

A forced prefix must be free of side effects on the text: forcing the first tokens a greedy pass
chose anyway must give the very same tokens, for fewer decoder calls. That is the property the
live path relies on when it forces what two partials agreed on.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
from conftest import load_mono

from asr_stream.inference.engine import Engine
from asr_stream.inference.live import Utterance
from asr_stream.inference.models import load_prepared
from asr_stream.inference.onnxruntime_backend import OnnxRuntimeEngine
from asr_stream.inference.whisper.decode import loop_head
from asr_stream.inference.whisper.engine_compute import EngineCompute
from asr_stream.inference.whisper.runner import WhisperRunner, live_partial_windows, live_windows

RATE = 16_000


class CallCounter:
    """Wraps an Engine; counts its runs and records the mel frames (for the encoder)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.backend = engine.backend
        self.max_batch = engine.max_batch
        self.calls = 0
        self.frames: list[int] = []

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.calls += 1
        if "mel" in feeds:
            self.frames.append(feeds["mel"].shape[-1])
        return self.engine.run(feeds)


@pytest.fixture(scope="module")
def live(engines_dir: Path) -> WhisperRunner:
    """tiny.en with the daemon's live windows, its encoder and decoder calls counted."""
    prepared = load_prepared("whisper-tiny.en", engines_dir)
    compute = EngineCompute(
        CallCounter(OnnxRuntimeEngine.load(prepared.graph_path("encoder"))),
        CallCounter(OnnxRuntimeEngine.load(prepared.graph_path("decoder"))),
        prepared.dims.n_text_ctx,
    )
    windows_s, margin_s = live_windows("whisper-tiny.en")
    return WhisperRunner.for_spec(prepared, compute, windows_s, margin_s, partial_windows_s=live_partial_windows("whisper-tiny.en"))


@pytest.fixture(scope="module")
def clips(english_clips: list[dict]) -> list[np.ndarray]:
    return [load_mono(row["wav"]) for row in english_clips[:6]]


def _counters(runner: WhisperRunner) -> tuple[CallCounter, CallCounter]:
    compute = runner.compute
    assert isinstance(compute, EngineCompute) and isinstance(compute.encoder, CallCounter) and isinstance(compute.decoder, CallCounter)
    return compute.encoder, compute.decoder


@pytest.mark.parametrize(("seconds", "partial", "final"), [(2.0, 5, 10), (3.9, 5, 10), (4.1, 10, 10), (8.9, 10, 10), (9.5, 20, 20)])
def test_partials_of_short_segments_get_a_shorter_window_than_their_final(live: WhisperRunner, seconds, partial, final) -> None:
    audio = np.zeros(round(seconds * RATE), np.float32)
    assert live.live_window_for(Utterance(audio, partial=True)) == partial
    assert live.live_window_for(Utterance(audio)) == final
    encoder, _ = _counters(live)
    live.transcribe_live([Utterance(audio, partial=True)], language="en")
    assert encoder.frames[-1] == partial * 100  # the window the scheduler bucketed it by is the one encoded


def test_forcing_the_start_of_the_greedy_output_gives_the_same_tokens_for_fewer_decoder_calls(live: WhisperRunner, clips) -> None:
    _, decoder = _counters(live)
    checked = 0
    for audio in clips:
        calls = decoder.calls
        free = live.transcribe_live([Utterance(audio, partial=True)], language="en")[0]
        free_calls = decoder.calls - calls
        if len(free.tokens) < 6 or free_calls != len(free.tokens) + 1:
            continue  # a preview too short to test, or a loop's first pass (`loop_head`): no end token, decoded to its budget
        checked += 1
        forced_prefix = free.tokens[: len(free.tokens) - 3]
        calls = decoder.calls
        forced = live.transcribe_live([Utterance(audio, partial=True, prefix=forced_prefix)], language="en")[0]
        assert forced.tokens == free.tokens and forced.text == free.text
        assert decoder.calls - calls == 4, "one call for prompt and prefix, then the three tail tokens and the end"
    assert checked >= 4


def test_a_batch_of_partials_and_finals_with_different_prefixes_answers_each_as_alone(live: WhisperRunner, clips) -> None:
    short = [audio[: 5 * RATE] for audio in clips if len(audio) >= 5 * RATE][
        :4
    ]  # partials and finals alike in the 10 s window: one scheduler bucket
    assert {live.live_window_for(Utterance(audio, partial=kind)) for audio in short for kind in (True, False)} == {10}
    alone = [live.transcribe_live([Utterance(audio, partial=True)], language="en")[0] for audio in short]
    requests = [
        Utterance(short[0], partial=True),
        Utterance(short[1], partial=True, prefix=alone[1].tokens[:2]),
        Utterance(short[2], partial=True, prefix=alone[2].tokens[:4]),
        Utterance(short[3], partial=False),
    ]
    together = live.transcribe_live(requests, language="en")
    assert [result.tokens for result in together[:3]] == [result.tokens for result in alone[:3]]
    final_alone = live.transcribe_live([Utterance(short[3])], language="en")[0]
    assert together[3].tokens == final_alone.tokens and together[3].language == "en"


def test_a_prefix_must_be_text_tokens(live: WhisperRunner, clips) -> None:
    with pytest.raises(ValueError, match="text tokens"):
        live.transcribe_live([Utterance(clips[0][: 2 * RATE], partial=True, prefix=(live.tokenizer.eot,))], language="en")


def test_the_torch_backend_forces_a_prefix_token_for_token_like_onnxruntime(live: WhisperRunner, clips) -> None:
    """The prefix rides in the prompt every backend prefills: the torch stepper (here on the CPU, fp32,
    no CUDA graphs, as tests/test_torch_backend.py runs it) must give ONNX Runtime's tokens, alone
    and with prefixes of different lengths in one batch (ragged: forced step by step past the shortest)."""
    torch = pytest.importorskip("torch", reason="the torch backend needs torch")
    from asr_stream.inference.torch_backend import TorchWhisperCompute

    spec, compute = TorchWhisperCompute.from_packages("whisper-tiny.en", (1, 4), device="cpu", dtype=torch.float32, cuda_graphs=False)
    on_torch = WhisperRunner.for_spec(spec, compute, live.windows_s, live.margin_s, partial_windows_s=live.partial_windows_s)
    requests = []
    for audio in clips:
        free = live.transcribe_live([Utterance(audio[: 4 * RATE], partial=True)], language="en")[0]
        if len(free.tokens) > 3:  # previews the loop guard kept
            requests.append(Utterance(audio[: 4 * RATE], partial=True, prefix=free.tokens[: len(free.tokens) - 2]))
    assert len(requests) >= 3
    requests.append(Utterance(clips[0][: 4 * RATE], partial=True))  # no prefix at all
    assert len({len(request.prefix) for request in requests}) >= 3
    expected = [live.transcribe_live([request], language="en")[0].tokens for request in requests]
    assert [on_torch.transcribe_live([request], language="en")[0].tokens for request in requests] == expected
    # Together, one pass per batch: the torch stepper forces each row's prefix beyond the shortest step by step.
    passes = []
    original = compute.stepper
    compute.stepper = lambda encoded, plan: passes.append(plan) or original(encoded, plan)  # type: ignore[method-assign]
    assert [result.tokens for result in on_torch.transcribe_live(requests, language="en")] == expected
    assert len(passes) == -(-len(requests) // compute.max_batch), "one pass per batch"
    assert any(plan.forced is not None for plan in passes)


@pytest.mark.parametrize(
    ("tokens", "head"),
    [
        ([7, 8, 9, 7, 8, 9, 7, 8], [7, 8, 9]),  # cut by the token budget inside the third pass
        ([1, 2, 5, 5, 5, 5], [1, 2, 5]),
        ([3, 4, 3, 4], [3, 4]),
        ([1, 2, 3, 4], None),  # no repeat
        ([1, 2, 3, 3], [1, 2, 3]),  # two passes of a one-token block (only ever applied to output the guard rejected)
        ([5, 6, 5, 6, 9], None),  # a repeat that does not reach the end
        ([], None),
    ],
)
def test_loop_head_keeps_the_first_pass_of_the_loop_an_output_ends_in(tokens: list[int], head: list[int] | None) -> None:
    assert loop_head(tokens) == head


def test_a_looping_preview_shows_its_first_pass_instead_of_nothing(live: WhisperRunner, english_clips: list[dict]) -> None:
    """The first second of "go forward ten meters" in a 5 s window: tiny.en writes "Go forward." until the budget ends."""
    [row] = [row for row in english_clips if row["id"] == "en_pocketsphinx_goforward"]
    opening = load_mono(row["wav"])[:RATE]
    encoded = live.encode([opening], 5)
    assert live.decoder.decode_greedy(encoded, ["en"], [1.0], False) == [None]  # the loop guard drops it
    [preview] = live.transcribe_live([Utterance(opening, partial=True)])
    assert preview.text == "Go forward."
    assert preview.tokens == ()  # shown, but not agreed on: nothing of it is forced into the next partial
