"""Whisper's model dimensions: read from the weights at export, from manifest.json when serving.

Kept apart from `model.py` so that serving code can know the shapes without importing torch.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from asr_stream.inference.whisper.ct2 import CT2Model


@dataclass(frozen=True)
class WhisperDims:
    """Sizes of one Whisper checkpoint (names follow openai-whisper's ModelDimensions)."""

    n_mels: int
    n_audio_ctx: int
    n_audio_state: int
    n_audio_head: int
    n_audio_layer: int
    n_vocab: int
    n_text_ctx: int
    n_text_state: int
    n_text_head: int
    n_text_layer: int

    @property
    def n_frames(self) -> int:
        """Mel frames in one full window: the encoder's conv2 halves the time axis."""
        return 2 * self.n_audio_ctx

    @property
    def head_dim(self) -> int:
        return self.n_text_state // self.n_text_head

    @property
    def is_multilingual(self) -> bool:
        """English-only checkpoints have 51864 tokens; multilingual ones 51865 (or more)."""
        return self.n_vocab >= 51865

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, int]) -> WhisperDims:
        return cls(**{name: int(data[name]) for name in cls.__dataclass_fields__})

    @classmethod
    def from_ct2(cls, model: CT2Model) -> WhisperDims:
        """Infer the dimensions from variable shapes and the stored head counts."""

        def count_layers(stack: str) -> int:
            pattern = re.compile(rf"{stack}/layer_(\d+)/")
            return len({match.group(1) for name in model.variables if (match := pattern.match(name))})

        audio_ctx, audio_state = model["encoder/position_encodings/encodings"].shape
        text_ctx, text_state = model["decoder/position_encodings/encodings"].shape
        return cls(
            n_mels=model["encoder/conv1/weight"].shape[1],
            n_audio_ctx=audio_ctx,
            n_audio_state=audio_state,
            n_audio_head=model.scalar("encoder/num_heads"),
            n_audio_layer=count_layers("encoder"),
            n_vocab=model["decoder/embeddings/weight"].shape[0],
            n_text_ctx=text_ctx,
            n_text_state=text_state,
            n_text_head=model.scalar("decoder/num_heads"),
            n_text_layer=count_layers("decoder"),
        )
