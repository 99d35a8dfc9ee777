"""The model and its batch scheduler as the daemon serves them, in whichever process holds the model.

With `workers: 1` that is the daemon's own process; with more, the inference process
(`app.workers.inference`). Both build them here, so the two modes serve identically.
"""

from __future__ import annotations

from asr_stream.app.config import Config, Settings
from asr_stream.app.metrics import DaemonMetrics
from asr_stream.inference.runners import LoadedModel, load_model
from asr_stream.inference.scheduler import BatchScheduler


def load_live_model(config: Config) -> LoadedModel:
    """The configured model on the configured backend (onnxruntime, tensorrt or torch; one that cannot
    serve here is an OperatorError), with the live daemon's windows and the configured hotword lists.
    Blocking: seconds."""
    settings = config.settings
    return load_model(
        settings.model,
        settings.engines_dir,
        settings.language,
        backend=settings.backend,
        live=True,
        profiles_dir=settings.profiles_dir,
        partial_threads=settings.scheduler.partial_engine_threads,
        finals_pause_partials=settings.scheduler.finals_pause_partials,
        hotwords=config.components.hotwords,
    )


def live_scheduler(model: LoadedModel, settings: Settings, metrics: DaemonMetrics) -> BatchScheduler:
    """The scheduler over `model`, its batches and queue waits measured into `metrics`; start() it in the serving loop."""
    return BatchScheduler(
        metrics.timed_batch(model.live, lambda batch: any(not utterance.partial for utterance in batch)),
        settings.scheduler.build(model.max_batch, model.backend),
        bucket=model.utterance_bucket,
        on_wait=metrics.observe_queue_wait,
    )
