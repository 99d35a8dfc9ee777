"""Turn one window's tokens into timed segments, and decide where the next window starts.

Follows openai-whisper's `transcribe()`: consecutive timestamp tokens close one segment and open
the next; when the window ends inside an unfinished segment, the next window starts at the last
closed timestamp so the cut-off words are decoded again with their full context.
"""

from __future__ import annotations

from dataclasses import dataclass

from asr_stream.inference.whisper.tokenizer import WhisperTokenizer


@dataclass(frozen=True)
class Segment:
    """A span of text with media times in seconds from the start of the utterance."""

    start: float
    end: float
    text: str
    tokens: tuple[int, ...]


def split_segments(
    tokens: list[int], tokenizer: WhisperTokenizer, window_start: float, window_seconds: float, full_window: bool
) -> tuple[list[Segment], float]:
    """Segments of one window, and the seconds of audio they consumed (where the next window starts)."""
    begin = tokenizer.timestamp_begin
    is_timestamp = [token >= begin for token in tokens]
    boundaries = [i + 1 for i in range(len(tokens) - 1) if is_timestamp[i] and is_timestamp[i + 1]]
    single_timestamp_ending = is_timestamp[-2:] == [False, True]
    if not boundaries:
        # No closed segment: one segment for the window, ending at its last timestamp if any.
        stamps = [token for token in tokens if token >= begin]
        end = tokenizer.timestamp_seconds(stamps[-1]) if stamps and stamps[-1] != begin else window_seconds
        return [Segment(window_start, window_start + end, tokenizer.decode(tokens), tuple(tokens))], window_seconds
    # The last piece is kept when it is closed by a lone timestamp, or when no audio follows it.
    keep_tail = single_timestamp_ending or not full_window
    if keep_tail and boundaries[-1] < len(tokens):
        boundaries.append(len(tokens))
    segments, previous = [], 0
    for boundary in boundaries:
        piece = tokens[previous:boundary]
        start = tokenizer.timestamp_seconds(piece[0])
        end = tokenizer.timestamp_seconds(piece[-1]) if piece[-1] >= begin else window_seconds
        segments.append(Segment(window_start + start, window_start + end, tokenizer.decode(piece), tuple(piece)))
        previous = boundary
    if keep_tail:
        return segments, window_seconds
    last_closed = tokenizer.timestamp_seconds(tokens[boundaries[-1] - 1])
    # A window that closed nothing past its start would never advance: take the whole window then.
    return segments, last_closed if last_closed > 0 else window_seconds
