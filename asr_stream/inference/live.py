"""What a live channel asks the model for, and what it gets back (issue 13: partials that scale).

A live channel sends two kinds of request: the *final* of a closed segment, decoded as accurately
as the model's measured live policy allows, and *partials* of the open segment, previews whose
cost must follow what is new rather than the segment's length. A partial may therefore be decoded
in a shorter window than a final (`WhisperRunner.partial_window_for`) and is never retried in a
larger one (a broken preview is simply not shown), and it may carry a forced `prefix`: the tokens
two earlier partials agreed on, which the decoder takes as given so that only the tail costs
decoder steps (LocalAgreement-2, as whisper_streaming commits text).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from asr_stream.audio.features import SAMPLE_RATE


@dataclass(frozen=True)
class Utterance:
    """One piece of audio to transcribe (16 kHz mono float32), the hotword list it uses (None: the
    default list), and for the live path whether it is a partial and which tokens it must start with."""

    audio: np.ndarray
    hotwords: str | None = None
    partial: bool = False
    prefix: tuple[int, ...] = ()  # text tokens the output must start with; () for none

    @property
    def seconds(self) -> float:
        return len(self.audio) / SAMPLE_RATE


@dataclass(frozen=True)
class LiveResult:
    """The model's text for a request. `tokens` is the whole output (prefix included) for models that
    take a forced prefix (Whisper), () for those that do not (Conformer-CTC ignores `prefix`) and
    for a partial whose text should not be built on (a loop's first pass, whisper/decode.py)."""

    text: str
    language: str | None
    tokens: tuple[int, ...] = field(default=())
