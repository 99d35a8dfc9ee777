"""Whisper's decoding rules and the one batched decoding loop every backend runs them through.

A backend supplies only per-step compute (`WhisperCompute`: encode a batch, pick rows of it, and a
`Stepper` that feeds tokens and chooses the next ones). Everything that decides *which* tokens come
out is here, once:

- the prompt (`<|startoftranscript|>`, language and task for multilingual models,
  `<|notimestamps|>` unless timestamps are wanted), after `<|startofprev|>` and earlier text when
  the decoder carries one (hotwords as Whisper's previous-text prompt, see whisper/prompt.py);
- with earlier text, a no-speech gate: a window in which `<|nocaptions|>` is likelier than every
  language token right after `<|startoftranscript|>` is decoded without the earlier text, because
  a prompted Whisper writes the prompt's words into silence and noise;
- `suppress_ids` on every step, `suppress_ids_begin` on the first sampled token, as additive masks
  the stepper adds to the logits (CTranslate2's rules: the tests hold us token-identical to it);
- timestamp mode's per-row rules (`timestamp_rules.py`), which need each row's history;
- greedy choice (argmax), or sampling at a temperature by inverse CDF with uniforms drawn here from
  one seeded generator, so that every backend samples the same tokens from the same logits;
- stop at the end token, at most `n_text_ctx` positions of prompt and output, and trimming;
- the loop guard: a window whose text compresses too well (gzip ratio > 2.4: "Thank you. Thank
  you. ...") or has implausibly many or few tokens for its audio is decoded again at rising
  temperatures (seeded, so runs repeat); the first attempt that passes is kept, else the greedy one.

Written here rather than taken from a library because it must drive any backend with our explicit
KV cache (host numpy for ONNX Runtime and TensorRT, device tensors and CUDA graphs for PyTorch) and
decode many calls' windows as one batch.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import numpy as np

from asr_stream.inference.whisper.dims import WhisperDims
from asr_stream.inference.whisper.timestamp_rules import TimestampRules
from asr_stream.inference.whisper.tokenizer import WhisperTokenizer

FALLBACK_TEMPERATURES = (0.2, 0.4, 0.6, 0.8, 1.0)
_Window = TypeVar("_Window", "DecodedWindow", "DecodedWindow | None")
COMPRESSION_RATIO_LIMIT = 2.4
# Measured on tiny.en (NOTES.md): looping output exceeds 6 tokens/s + 10; stalled output stays
# under 0.8 tokens/s.
MAX_TOKENS_PER_SECOND, TOKEN_SLACK = 6.0, 10
MIN_TOKENS_PER_SECOND = 0.8


def compression_ratio(text: str) -> float:
    """Bytes / gzip-compressed bytes: repetitive (looping) text compresses far better than speech."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def max_plausible_tokens(audio_seconds: float) -> int:
    """The most tokens `audio_seconds` of real speech yield; one more and the loop guard fires."""
    return int(MAX_TOKENS_PER_SECOND * audio_seconds + TOKEN_SLACK)


def looks_broken(text: str, n_tokens: int, audio_seconds: float) -> bool:
    """The loop guard's test: repetition, or a token rate no real speech has."""
    too_many = n_tokens > max_plausible_tokens(audio_seconds)
    too_few = n_tokens < MIN_TOKENS_PER_SECOND * audio_seconds
    return compression_ratio(text) > COMPRESSION_RATIO_LIMIT or too_many or too_few


def loop_head(tokens: Sequence[int]) -> list[int] | None:
    """`tokens` up to the end of the first pass of the loop they end in, or None if they end in none.

    A loop is a block repeated back to back at least twice up to the end ("Go forward. Go forward.
    Go forward."). Of all such readings the shortest head wins. What tiny.en writes for a second
    or two of speech in a 5 s window is often its transcript and then the same words again until
    the token budget runs out (the first second of the shared clip "go forward ten meters": "Go
    forward." five times); the first pass is a usable preview.
    """
    best: int | None = None
    for period in range(1, len(tokens) // 2 + 1):
        start = len(tokens) - period  # extend the periodic tail backwards as far as it goes
        while start > 0 and tokens[start - 1] == tokens[start - 1 + period]:
            start -= 1
        if len(tokens) - start >= 2 * period and (best is None or start + period < best):
            best = start + period
    return None if best is None else list(tokens[:best])


@dataclass(frozen=True)
class DecodedWindow:
    """One window's decoded tokens (text and timestamps, no prompt, no end token), and the
    temperature of the attempt that was kept (0.0: greedy). `looped`: the tokens are the first
    pass of a loop (`loop_head`), good to show but not to build on."""

    tokens: list[int]
    language: str
    temperature: float
    looped: bool = False


@dataclass(frozen=True)
class DecodingPass:
    """One batched pass as the rules define it; a backend's `Stepper` carries it out.

    Each row's first token is chosen from logits + `first_mask`, every later one from logits +
    `step_mask` (masks hold 0 or -inf per vocabulary id), then `timestamp_rules` per row where set.
    Greedy when `temperature` is 0; otherwise row r's token at position n is the inverse CDF of
    softmax(scores / temperature) at `uniforms[n, r]`.
    """

    prompts: np.ndarray  # [B, P] int64, one prompt per row
    first_mask: np.ndarray  # [V] float32
    step_mask: np.ndarray  # [V] float32
    limit: int  # at most this many tokens per row
    eot: int
    temperature: float = 0.0
    uniforms: np.ndarray | None = None  # [limit, B] float64 in [0, 1) when sampling
    timestamp_rules: TimestampRules | None = None
    # Ragged forced prefixes (only for a compute with `ragged_prefixes`): row r's first
    # forced_lengths[r] tokens are forced[r, :forced_lengths[r]], its first free token is chosen
    # with first_mask (or unforced_first_mask, below), every later one with step_mask. They count
    # towards `limit`.
    forced: np.ndarray | None = None  # [B, F] int64
    forced_lengths: np.ndarray | None = None  # [B] int64
    # A ragged pass whose shortest prefix is empty: rows with nothing forced choose their first token
    # with this mask (Whisper's begin rules, the end token barred); rows with a prefix use first_mask.
    unforced_first_mask: np.ndarray | None = None  # [V] float32

    @property
    def rows(self) -> int:
        return len(self.prompts)

    def forced_count(self, row: int) -> int:
        """How many of `row`'s output tokens are forced rather than chosen."""
        return 0 if self.forced_lengths is None else int(self.forced_lengths[row])


class Encoded(Protocol):
    """A batch of encoded windows (cross-attention K/V), opaque here: host arrays or device tensors.

    Only its backend looks inside; for PyTorch on a GPU it never leaves the device (whisper-base's
    K/V at batch 128 is over 2 GB).
    """

    @property
    def rows(self) -> int: ...


class Stepper(Protocol):
    """The per-step compute of one `DecodingPass` over one `Encoded` batch."""

    def prefill(self) -> None:
        """Feed every row's prompt and choose its first token."""
        ...

    def step(self) -> None:
        """Feed each row's last token and choose its next one."""
        ...

    def done(self) -> bool:
        """Whether every row has chosen the end token. May answer False when finding out would stall a device."""
        ...

    def tokens(self) -> np.ndarray:
        """[rows, n] every row's tokens so far, forced ones first (n: the most any row has, at most the
        pass's limit; a row with fewer reads as ended); what follows a row's end token is undefined."""
        ...


class WhisperCompute(Protocol):
    """What a backend provides for Whisper: encoding, row selection, and steppers."""

    backend: str  # "onnxruntime", "tensorrt", "torch"
    # True when the stepper honours a pass's ragged `forced` tokens: where a pass is dear next to a
    # decoder call (a GPU replaying CUDA graphs), rows with prefixes of different lengths share one
    # pass (the torch stepper prefills each row's whole prefix and steps rows at their own offsets).
    # False (a CPU): rows are grouped by prefix length, each prefix prefilled in one decoder call.
    ragged_prefixes: bool

    @property
    def max_batch(self) -> int:
        """The most windows `encode` takes at once."""
        ...

    def features(self, windows: Sequence[np.ndarray], n_samples: int, n_mels: int) -> Any:
        """Whisper's log-mel [B, n_mels, n_samples // 160] of pieces of 16 kHz audio, each fitted to
        `n_samples`, in the form `encode` takes (`audio.features.log_mel_spectrogram` is the recipe)."""
        ...

    def encode(self, mel: Any) -> Any:
        """Log-mel windows [B, n_mels, frames] (from `features`, or host arrays) -> an `Encoded` batch."""
        ...

    def select(self, encoded: Any, rows: Sequence[int]) -> Any:
        """The `Encoded` batch of the given rows of `encoded`, in that order."""
        ...

    def stepper(self, encoded: Any, plan: DecodingPass) -> Stepper: ...

    def exclusive(self) -> AbstractContextManager[object]:
        """Held by the runner around each batch: a compute whose calls share device state (PyTorch's
        CUDA-graph buffers) runs one batch at a time; one whose calls are independent holds nothing."""
        ...

    def describe(self) -> dict[str, object]: ...


def run_pass(compute: WhisperCompute, encoded: Encoded, plan: DecodingPass) -> list[list[int]]:
    """The decoding loop: each row's tokens up to (not including) its end token, at most `plan.limit`."""
    stepper = compute.stepper(encoded, plan)
    stepper.prefill()
    for _ in range(plan.limit - 1):
        if stepper.done():
            break
        stepper.step()
    return [_until(row.tolist(), plan.eot)[plan.forced_count(r) :] for r, row in enumerate(stepper.tokens())]


def _until(tokens: list[int], eot: int) -> list[int]:
    return tokens[: tokens.index(eot)] if eot in tokens else tokens


class WhisperDecoder:
    """Language detection and batched decoding of encoded windows, with the loop guard, on any backend."""

    def __init__(
        self,
        compute: WhisperCompute,
        tokenizer: WhisperTokenizer,
        suppress_ids: Sequence[int],
        suppress_ids_begin: Sequence[int],
        dims: WhisperDims,
        previous_text: Sequence[int] = (),
    ) -> None:
        """`previous_text`: prompt tokens placed before each window's prompt (none: Whisper as trained on a first window)."""
        self.compute = compute
        self.previous_text = tuple(previous_text)
        self.tokenizer = tokenizer
        self.suppress_ids = tuple(suppress_ids)
        self.suppress_ids_begin = tuple(suppress_ids_begin)
        self.dims = dims
        self.n_text_ctx = dims.n_text_ctx
        self._step_mask = np.zeros(dims.n_vocab, dtype=np.float32)
        self._step_mask[list(self.suppress_ids)] = -np.inf
        self._first_mask = self._step_mask.copy()
        self._first_mask[list(self.suppress_ids_begin)] = -np.inf
        # After a forced prefix the text may already be complete: the end token stays allowed, a blank does not.
        self._after_prefix_mask = self._first_mask.copy()
        self._after_prefix_mask[tokenizer.eot] = self._step_mask[tokenizer.eot]
        self._languages_only = np.full(dims.n_vocab, -np.inf, dtype=np.float32)
        self._languages_only[list(tokenizer.languages.values())] = 0.0
        self._speech_or_not = self._languages_only.copy()
        self._speech_or_not[tokenizer.no_speech] = 0.0
        self._timestamp_rules = TimestampRules(tokenizer)

    def on(self, compute: WhisperCompute) -> WhisperDecoder:
        """The same model's rules over another backend's compute."""
        return WhisperDecoder(compute, self.tokenizer, self.suppress_ids, self.suppress_ids_begin, self.dims, self.previous_text)

    def with_previous_text(self, previous_text: Sequence[int]) -> WhisperDecoder:
        """The same model on the same compute, each window prompted with `previous_text` (token ids)."""
        return WhisperDecoder(self.compute, self.tokenizer, self.suppress_ids, self.suppress_ids_begin, self.dims, previous_text)

    def hears_speech(self, encoded: Encoded) -> list[bool]:
        """Per row: whether some language token is likelier than `<|nocaptions|>` after `<|startoftranscript|>`.

        Whisper's own no-speech signal (openai-whisper reads P(<|nocaptions|>) at that position),
        as a comparison so that every backend's stepper can answer it with one greedy step.
        """
        prompts = np.full((encoded.rows, 1), self.tokenizer.sot, dtype=np.int64)
        plan = DecodingPass(prompts, self._speech_or_not, self._speech_or_not, limit=1, eot=self.tokenizer.eot)
        return [tokens[0] != self.tokenizer.no_speech for tokens in run_pass(self.compute, encoded, plan)]

    def detect_languages(self, encoded: Encoded) -> list[str]:
        """Most likely language token after <|startoftranscript|>, per row."""
        prompts = np.full((encoded.rows, 1), self.tokenizer.sot, dtype=np.int64)
        plan = DecodingPass(prompts, self._languages_only, self._languages_only, limit=1, eot=self.tokenizer.eot)
        return [self.tokenizer.language_of(tokens[0]) for tokens in run_pass(self.compute, encoded, plan)]

    def plan(
        self,
        languages: Sequence[str],
        timestamps: bool,
        temperature: float = 0.0,
        rng: np.random.Generator | None = None,
        max_tokens: int | None = None,
        prefix: Sequence[Sequence[int]] | None = None,
    ) -> DecodingPass:
        """The pass that decodes rows in `languages`: greedy at temperature 0, else sampled with draws from `rng`.

        `prefix`: per row, text tokens the output must start with: they join the prompt, so the
        whole prefix costs one decoder call, and only what follows is chosen. The live path forces
        the text earlier partials agreed on, so a partial decodes only its tail. Prefixes of one
        pass are all of one length, unless the compute takes `ragged_prefixes`: then the shortest
        one's length joins the prompt and each row's rest goes in `DecodingPass.forced`, for the stepper to feed.
        `max_tokens` counts the tokens chosen after the prefix.
        """
        prompts = self._prompts(languages, timestamps)
        first_mask = self._first_mask
        forced = forced_lengths = unforced_first_mask = None
        lengths = [len(row) for row in prefix] if prefix is not None else [0]
        ragged = len(set(lengths)) > 1
        if max(lengths):
            if timestamps:
                raise ValueError("a forced prefix is text only: timestamp decoding cannot take one")
            assert prefix is not None
            if len(prefix) != len(prompts) or any(token >= self.tokenizer.eot for row in prefix for token in row):
                raise ValueError("a forced prefix is one run of text tokens per row")
            if ragged and not self.compute.ragged_prefixes:
                raise ValueError(f"the {self.compute.backend} backend takes forced prefixes of one length per pass")
            common = min(lengths)
            prompts = np.concatenate(
                (prompts, np.array([row[:common] for row in prefix], dtype=np.int64).reshape(len(prompts), common)), axis=1
            )
            first_mask = self._after_prefix_mask
            if ragged:
                forced = np.zeros((len(prompts), max(lengths) - common), dtype=np.int64)
                for row, tokens in enumerate(prefix):
                    forced[row, : len(tokens) - common] = tokens[common:]
                forced_lengths = np.array(lengths, dtype=np.int64) - common
                if common == 0:
                    unforced_first_mask = self._first_mask
        limit = self.n_text_ctx - prompts.shape[1]
        if max_tokens is not None:
            limit = min(limit, max_tokens + (int(forced_lengths.max()) if forced_lengths is not None else 0))
        uniforms = None
        if temperature > 0.0:
            assert rng is not None, "sampling needs a seeded generator"
            uniforms = rng.random((limit, len(prompts)))
        timestamp_rules = self._timestamp_rules if timestamps else None
        return DecodingPass(
            prompts,
            first_mask,
            self._step_mask,
            limit,
            self.tokenizer.eot,
            temperature,
            uniforms,
            timestamp_rules,
            forced,
            forced_lengths,
            unforced_first_mask,
        )

    def sample(
        self,
        encoded: Encoded,
        languages: Sequence[str],
        timestamps: bool,
        temperature: float = 0.0,
        rng: np.random.Generator | None = None,
        max_tokens: int | None = None,
        prefix: Sequence[Sequence[int]] | None = None,
    ) -> list[list[int]]:
        """One pass over every row of `encoded` (see `plan`); a row's tokens start after its forced prefix."""
        return run_pass(self.compute, encoded, self.plan(languages, timestamps, temperature, rng, max_tokens, prefix))

    def decode_greedy(
        self,
        encoded: Encoded,
        languages: Sequence[str],
        audio_seconds: Sequence[float],
        timestamps: bool,
        prefix: Sequence[Sequence[int]] | None = None,
        *,
        trim_loops: bool = False,
    ) -> list[DecodedWindow | None]:
        """One greedy pass without the loop guard's sampling retries; None for a row that looks broken.

        For a caller with a better remedy than sampling (the runner re-decodes a short window
        from the full one; a partial is simply not shown). Since a broken row is thrown away,
        decoding stops once every unfinished row has more tokens than its audio can hold: a
        looping window then costs a few dozen decoder steps, not the whole text context.
        `prefix`: forced tokens per row (see `plan`); a row's tokens are those after it.
        `trim_loops` (previews): a row that ends in a loop keeps its first pass (`loop_head`) if
        that passes the guard; a partial shown is better than a second without one.
        """

        def greedy(
            decoder: WhisperDecoder,
            encoded: Encoded,
            languages: Sequence[str],
            audio_seconds: Sequence[float],
            prefix: Sequence[Sequence[int]] | None,
        ) -> list[DecodedWindow | None]:
            forced = _prefixes(prefix, len(languages))
            limit = max(max_plausible_tokens(seconds) + 1 - len(row) for seconds, row in zip(audio_seconds, forced))
            samples = decoder.sample(encoded, languages, timestamps, max_tokens=max(limit, 1), prefix=prefix)
            windows = [DecodedWindow(tokens, language, 0.0) for tokens, language in zip(samples, languages)]
            return [
                decoder._kept(window, seconds, row_prefix, trim_loops)
                for window, seconds, row_prefix in zip(windows, audio_seconds, forced)
            ]

        return self._gated(encoded, languages, audio_seconds, prefix, greedy)

    def decode(
        self,
        encoded: Encoded,
        languages: Sequence[str],
        audio_seconds: Sequence[float],
        timestamps: bool,
        seed: int = 0,
        prefix: Sequence[Sequence[int]] | None = None,
    ) -> list[DecodedWindow]:
        """Decode the rows of `encoded` in the given languages, with the loop guard (and a forced `prefix`, see `plan`)."""

        def guarded(
            decoder: WhisperDecoder,
            encoded: Encoded,
            languages: Sequence[str],
            audio_seconds: Sequence[float],
            prefix: Sequence[Sequence[int]] | None,
        ) -> list[DecodedWindow]:
            rng = np.random.default_rng(seed)
            forced = _prefixes(prefix, len(languages))
            samples = decoder.sample(encoded, languages, timestamps, prefix=prefix)
            results = [DecodedWindow(tokens, language, 0.0) for tokens, language in zip(samples, languages)]
            retry = [row for row, window in enumerate(results) if decoder._broken(window, audio_seconds[row], forced[row])]
            for temperature in FALLBACK_TEMPERATURES:
                if not retry:
                    break
                retry_languages = [languages[row] for row in retry]
                retry_prefix = [forced[row] for row in retry] if prefix is not None else None
                selected = decoder.compute.select(encoded, retry)
                attempts = decoder.sample(selected, retry_languages, timestamps, temperature, rng, prefix=retry_prefix)
                still_broken = []
                for row, tokens in zip(retry, attempts):
                    window = DecodedWindow(tokens, languages[row], temperature)
                    if decoder._broken(window, audio_seconds[row], forced[row]):
                        still_broken.append(row)
                    else:
                        results[row] = window
                retry = still_broken
            return results

        return self._gated(encoded, languages, audio_seconds, prefix, guarded)

    def _gated(
        self,
        encoded: Encoded,
        languages: Sequence[str],
        audio_seconds: Sequence[float],
        prefix: Sequence[Sequence[int]] | None,
        decode: Callable[[WhisperDecoder, Encoded, Sequence[str], Sequence[float], Sequence[Sequence[int]] | None], list[_Window]],
    ) -> list[_Window]:
        """`decode` with this decoder's earlier text on the rows that hear speech, without it on the others.

        A prompted Whisper writes the prompt's terms into silence and noise; unprompted, such a
        window gets what it would get with no hotwords at all. Dropping it instead was not an
        option: the gate also closes on a few real, noisy utterances (1 of the 42 shared clips).
        """
        if not self.previous_text:
            return decode(self, encoded, languages, audio_seconds, prefix)
        heard = self.hears_speech(encoded)
        if all(heard):
            return decode(self, encoded, languages, audio_seconds, prefix)
        results: dict[int, _Window] = {}
        for decoder, rows in (
            (self, [r for r, h in enumerate(heard) if h]),
            (self.with_previous_text(()), [r for r, h in enumerate(heard) if not h]),
        ):
            if rows:
                selected = self.compute.select(encoded, rows)
                row_prefix = [prefix[r] for r in rows] if prefix is not None else None
                results |= zip(rows, decode(decoder, selected, [languages[r] for r in rows], [audio_seconds[r] for r in rows], row_prefix))
        return [results[row] for row in range(len(languages))]

    def _prompts(self, languages: Sequence[str], timestamps: bool) -> np.ndarray:
        language_of_prompt = [language if self.tokenizer.multilingual else None for language in languages]
        earlier = [self.tokenizer.previous_text, *self.previous_text] if self.previous_text else []
        return np.array([earlier + self.tokenizer.prompt(language, timestamps) for language in language_of_prompt], dtype=np.int64)

    def _broken(self, window: DecodedWindow, audio_seconds: float, prefix: Sequence[int] = ()) -> bool:
        text = [*prefix, *window.tokens]
        return looks_broken(self.tokenizer.decode(text), len(text), audio_seconds)

    def _kept(self, window: DecodedWindow, audio_seconds: float, prefix: Sequence[int], trim_loops: bool) -> DecodedWindow | None:
        """`window` if it passes the loop guard, else (with `trim_loops`) its loop's first pass if that does, else None."""
        if not self._broken(window, audio_seconds, prefix):
            return window
        head = loop_head(window.tokens) if trim_loops else None
        trimmed = DecodedWindow(head, window.language, window.temperature, looped=True) if head else None
        return trimmed if trimmed is not None and not self._broken(trimmed, audio_seconds, prefix) else None


def _prefixes(prefix: Sequence[Sequence[int]] | None, rows: int) -> list[Sequence[int]]:
    """Each row's forced prefix ([] without one)."""
    return list(prefix) if prefix is not None else [[] for _ in range(rows)]
