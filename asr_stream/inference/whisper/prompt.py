"""Hotwords for Whisper: the terms become the decoder prompt ("previous text"), as faster-whisper's `hotwords`.

Whisper was trained to continue earlier text, so a prompt listing domain terms makes it both spell
them (三磷酸腺苷 rather than a homophone) and keep their script and style: a Simplified Chinese
prompt pulls base's Mandarin output towards Simplified. The prompt is the terms joined by a comma
(a Chinese one when any term is Chinese), tokenised once when the model is loaded.

Whisper takes at most n_text_ctx // 2 - 1 prompt tokens (223 for every released size), the limit
openai-whisper cuts earlier text to; a list that does not fit is refused with its size rather
than silently cut, since the terms cut would be exactly the ones the operator added last.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from asr_stream.inference.hotwords import HotwordError
from asr_stream.inference.whisper.tokenizer import WhisperTokenizer

_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


def max_prompt_tokens(n_text_ctx: int) -> int:
    return n_text_ctx // 2 - 1


def hotword_prompt(tokenizer: WhisperTokenizer, terms: Sequence[str], n_text_ctx: int, model: str) -> list[int]:
    """The prompt tokens of `terms` (none for no terms); a HotwordError when they exceed the model's prompt."""
    if not terms:
        return []
    separator = "，" if any(_CJK.search(term) for term in terms) else ", "
    tokens = tokenizer.encode(" " + separator.join(terms))
    limit = max_prompt_tokens(n_text_ctx)
    if len(tokens) > limit:
        raise HotwordError(f"{len(terms)} hotwords make {len(tokens)} prompt tokens; {model} takes at most {limit}: shorten the list")
    return tokens
