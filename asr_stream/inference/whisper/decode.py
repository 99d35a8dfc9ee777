"""Batched greedy decoding of Whisper windows through a decoder Engine, with Whisper's logit rules.

Written here rather than taken from a library because it must drive any Engine (ONNX Runtime
today, TensorRT later) with our explicit KV cache, and decode many calls' windows as one batch.

Rules, as CTranslate2 applies them (the tests hold us token-identical to it): `suppress_ids`
every step, `suppress_ids_begin` on the first sampled step, prompt + output <= n_text_ctx.
Timestamp mode adds openai-whisper's timestamp rules (pairs, monotonic, first token a timestamp
<= 1 s, timestamps win when their total probability beats any text token).

Loop guard: a window whose text compresses too well (gzip ratio > 2.4: "Thank you. Thank you. ...")
or has implausibly many or few tokens for its audio is decoded again with temperature sampling
(seeded, so runs repeat); the first attempt that passes is kept, else the greedy one.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from asr_stream.inference.engine import Engine
from asr_stream.inference.whisper.graphs import KV_BATCH_AXIS, KV_POSITION_AXIS
from asr_stream.inference.whisper.tokenizer import WhisperTokenizer

MAX_INITIAL_TIMESTAMP_S = 1.0
FALLBACK_TEMPERATURES = (0.2, 0.4, 0.6, 0.8, 1.0)
COMPRESSION_RATIO_LIMIT = 2.4
# Measured on tiny.en (NOTES.md): looping output exceeds 6 tokens/s + 10; stalled output stays
# under 0.8 tokens/s.
MAX_TOKENS_PER_SECOND, TOKEN_SLACK = 6.0, 10
MIN_TOKENS_PER_SECOND = 0.8
_FIRST_CACHE_CAPACITY = 64


@dataclass(frozen=True)
class Hypothesis:
    """One window's decoded tokens (text and timestamps, no prompt, no end token)."""

    tokens: list[int]
    language: str
    avg_logprob: float
    temperature: float


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


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


class LogitRules:
    """Masks forbidden tokens in a [B, V] logits array in place (-inf), given each row's output so far."""

    def __init__(
        self, tokenizer: WhisperTokenizer, suppress_ids: Sequence[int], suppress_ids_begin: Sequence[int], timestamps: bool
    ) -> None:
        self.tokenizer = tokenizer
        self.suppress_ids = np.asarray(suppress_ids, dtype=np.int64)
        self.suppress_ids_begin = np.asarray(suppress_ids_begin, dtype=np.int64)
        self.timestamps = timestamps
        self.max_initial_timestamp = tokenizer.timestamp_begin + round(MAX_INITIAL_TIMESTAMP_S / 0.02)

    def apply(self, logits: np.ndarray, outputs: Sequence[list[int]]) -> None:
        logits[:, self.suppress_ids] = -np.inf
        if not outputs[0]:  # every row in a call has produced the same number of tokens
            logits[:, self.suppress_ids_begin] = -np.inf
        if self.timestamps:
            for row, output in zip(logits, outputs):
                self._timestamp_rules(row, output)

    def _timestamp_rules(self, row: np.ndarray, output: list[int]) -> None:
        """openai-whisper's ApplyTimestampRules for one row."""
        begin, eot = self.tokenizer.timestamp_begin, self.tokenizer.eot
        row[self.tokenizer.no_timestamps] = -np.inf
        if not output:
            row[:begin] = -np.inf  # the first token is a timestamp ...
            row[self.max_initial_timestamp + 1 :] = -np.inf  # ... no later than 1 s
            return
        last_was_timestamp = output[-1] >= begin
        penultimate_was_timestamp = len(output) < 2 or output[-2] >= begin
        if last_was_timestamp:
            if penultimate_was_timestamp:
                row[begin:] = -np.inf  # a closed pair: text must follow
            else:
                row[:eot] = -np.inf  # an open segment: close it or end
        timestamps = [token for token in output if token >= begin]
        if timestamps:
            # Never go back in time; a new segment must not start where the last one ended.
            floor = timestamps[-1] if last_was_timestamp and not penultimate_was_timestamp else timestamps[-1] + 1
            row[begin:floor] = -np.inf
        logprobs = _log_softmax(row[None])[0]
        timestamp_mass = np.logaddexp.reduce(logprobs[begin:])
        if timestamp_mass > logprobs[:begin].max():
            row[:begin] = -np.inf


class WhisperDecoder:
    """Runs the decoder graph: language detection and batched decoding of encoded windows."""

    def __init__(
        self, engine: Engine, tokenizer: WhisperTokenizer, suppress_ids: Sequence[int], suppress_ids_begin: Sequence[int], n_text_ctx: int
    ) -> None:
        self.engine = engine
        self.tokenizer = tokenizer
        self.suppress_ids = tuple(suppress_ids)
        self.suppress_ids_begin = tuple(suppress_ids_begin)
        self.n_text_ctx = n_text_ctx

    def _empty_cache(self, cross_kv: np.ndarray, capacity: int) -> np.ndarray:
        shape = list(cross_kv.shape)
        shape[KV_POSITION_AXIS] = capacity
        return np.zeros(shape, dtype=np.float32)

    def _step(self, tokens: np.ndarray, offset: int, cache: np.ndarray, cross_kv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Feed `tokens` at `offset`, grow the cache if needed and store their K/V; returns logits and the cache."""
        needed = offset + tokens.shape[1]
        if needed > cache.shape[KV_POSITION_AXIS]:
            # Doubling keeps the few distinct cache shapes an engine sees (and attention cost) small.
            capacity = min(self.n_text_ctx, max(needed, 2 * cache.shape[KV_POSITION_AXIS]))
            grown = self._empty_cache(cross_kv, capacity)
            grown[..., :offset, :] = cache[..., :offset, :]
            cache = grown
        feeds = {"tokens": tokens, "offset": np.full(tokens.shape[0], offset, dtype=np.int64), "self_kv": cache, "cross_kv": cross_kv}
        out = self.engine.run(feeds)
        cache[..., offset:needed, :] = out["new_kv"]
        return out["logits"], cache

    def detect_languages(self, cross_kv: np.ndarray) -> list[str]:
        """Most likely language token after <|startoftranscript|>, per row."""
        batch = cross_kv.shape[KV_BATCH_AXIS]
        start = np.full((batch, 1), self.tokenizer.sot, dtype=np.int64)
        logits, _ = self._step(start, 0, self._empty_cache(cross_kv, 1), cross_kv)
        language_ids = np.fromiter(self.tokenizer.languages.values(), dtype=np.int64)
        best = language_ids[logits[:, language_ids].argmax(axis=1)]
        return [self.tokenizer.language_of(int(token)) for token in best]

    def _sample(
        self,
        prompts: np.ndarray,
        cross_kv: np.ndarray,
        rules: LogitRules,
        temperature: float,
        rng: np.random.Generator,
        max_tokens: int | None = None,
    ) -> list[tuple[list[int], float]]:
        """Decode every row to its end token, `max_tokens` or the context limit; returns (tokens, avg logprob) per row."""
        batch, prompt_length = prompts.shape
        outputs: list[list[int]] = [[] for _ in range(batch)]
        logprob_sums = np.zeros(batch)
        active = np.arange(batch)
        cache = self._empty_cache(cross_kv, min(self.n_text_ctx, max(_FIRST_CACHE_CAPACITY, prompt_length)))
        tokens, offset = prompts, 0
        steps = self.n_text_ctx - prompt_length if max_tokens is None else min(self.n_text_ctx - prompt_length, max_tokens)
        for _ in range(steps):
            logits, cache = self._step(tokens, offset, cache, cross_kv)
            offset += tokens.shape[1]
            rules.apply(logits, [outputs[row] for row in active])
            logprobs = _log_softmax(logits.astype(np.float64))
            if temperature == 0.0:
                chosen = logits.argmax(axis=1)
            else:
                probabilities = np.exp(_log_softmax(logits.astype(np.float64) / temperature))
                chosen = np.array([rng.choice(len(p), p=p / p.sum()) for p in probabilities])
            logprob_sums[active] += logprobs[np.arange(len(active)), chosen]
            finished = chosen == self.tokenizer.eot
            for row, token in zip(active[~finished], chosen[~finished]):
                outputs[row].append(int(token))
            if finished.all():
                break
            if finished.any():
                keep = np.flatnonzero(~finished)
                cache = np.take(cache, keep, axis=KV_BATCH_AXIS)
                cross_kv = np.take(cross_kv, keep, axis=KV_BATCH_AXIS)
                active, chosen = active[keep], chosen[keep]
            tokens = chosen.astype(np.int64)[:, None]
        return [(output, float(total) / (len(output) + 1)) for output, total in zip(outputs, logprob_sums)]

    def _prompts(self, languages: Sequence[str], timestamps: bool) -> np.ndarray:
        language_of_prompt = [language if self.tokenizer.multilingual else None for language in languages]
        return np.array([self.tokenizer.prompt(language, timestamps) for language in language_of_prompt], dtype=np.int64)

    def decode_greedy(
        self, cross_kv: np.ndarray, languages: Sequence[str], audio_seconds: Sequence[float], timestamps: bool
    ) -> list[Hypothesis | None]:
        """One greedy pass without the loop guard's sampling retries; None for a row that looks broken.

        For a caller with a better remedy than sampling (the runner re-decodes a short window
        from the full one). Since a broken row is thrown away, decoding stops once every
        unfinished row has more tokens than its audio can hold: a looping window then costs a
        few dozen decoder steps, not the whole text context.
        """
        rules = LogitRules(self.tokenizer, self.suppress_ids, self.suppress_ids_begin, timestamps)
        limit = max(max_plausible_tokens(seconds) for seconds in audio_seconds) + 1
        samples = self._sample(self._prompts(languages, timestamps), cross_kv, rules, 0.0, np.random.default_rng(0), limit)
        hypotheses = [Hypothesis(tokens, language, logprob, 0.0) for (tokens, logprob), language in zip(samples, languages)]
        return [None if self._broken(hypothesis, seconds) else hypothesis for hypothesis, seconds in zip(hypotheses, audio_seconds)]

    def decode(
        self, cross_kv: np.ndarray, languages: Sequence[str], audio_seconds: Sequence[float], timestamps: bool, seed: int = 0
    ) -> list[Hypothesis]:
        """Decode B encoded windows (cross_kv's batch axis) in the given languages, with the loop guard."""
        rules = LogitRules(self.tokenizer, self.suppress_ids, self.suppress_ids_begin, timestamps)
        prompts = self._prompts(languages, timestamps)
        rng = np.random.default_rng(seed)
        results = [
            Hypothesis(tokens, language, logprob, 0.0)
            for (tokens, logprob), language in zip(self._sample(prompts, cross_kv, rules, 0.0, rng), languages)
        ]
        retry = [row for row, hypothesis in enumerate(results) if self._broken(hypothesis, audio_seconds[row])]
        for temperature in FALLBACK_TEMPERATURES:
            if not retry:
                break
            rows = np.array(retry)
            attempts = self._sample(prompts[rows], np.take(cross_kv, rows, axis=KV_BATCH_AXIS), rules, temperature, rng)
            still_broken = []
            for row, (tokens, logprob) in zip(retry, attempts):
                hypothesis = Hypothesis(tokens, languages[row], logprob, temperature)
                if self._broken(hypothesis, audio_seconds[row]):
                    still_broken.append(row)
                else:
                    results[row] = hypothesis
            retry = still_broken
        return results

    def _broken(self, hypothesis: Hypothesis, audio_seconds: float) -> bool:
        return looks_broken(self.tokenizer.decode(hypothesis.tokens), len(hypothesis.tokens), audio_seconds)
