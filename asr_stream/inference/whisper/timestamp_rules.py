"""openai-whisper's timestamp rules: which tokens may follow a row's output so far, in timestamp mode.

They depend on each row's history and on the logits themselves (timestamps win when their total
probability beats every text token), so they run on the host, row by row, in `host_stepper`: a
backend that chooses tokens on its device serves timestamp decoding through a host stepper.
"""

from __future__ import annotations

import numpy as np

from asr_stream.inference.whisper.tokenizer import WhisperTokenizer

MAX_INITIAL_TIMESTAMP_S = 1.0


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


class TimestampRules:
    """Masks (-inf) the tokens one row of scores [V] may not take next, given the row's output so far."""

    def __init__(self, tokenizer: WhisperTokenizer) -> None:
        self.timestamp_begin = tokenizer.timestamp_begin
        self.eot = tokenizer.eot
        self.no_timestamps = tokenizer.no_timestamps
        self.max_initial_timestamp = tokenizer.timestamp_begin + round(MAX_INITIAL_TIMESTAMP_S / 0.02)

    def apply(self, row: np.ndarray, output: list[int]) -> None:
        """openai-whisper's ApplyTimestampRules for one row, in place."""
        begin, eot = self.timestamp_begin, self.eot
        row[self.no_timestamps] = -np.inf
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
        logprobs = log_softmax(row[None])[0]
        timestamp_mass = np.logaddexp.reduce(logprobs[begin:])
        if timestamp_mass > logprobs[:begin].max():
            row[:begin] = -np.inf
