"""When an open segment gets a partial, what the model may reuse for it, and when a final may start (issue 13).

A partial used to re-transcribe the whole open segment every second whatever had happened; on a
loaded CPU that cost as much as the finals and most partials were shed. The policy here makes a
partial's cost follow what is new:

- a partial is due only once `interval_s` has passed since the segment's last one *and* the
  segment's speech has moved on by at least `min_new_speech_s` since (its newest voiced window is
  that much later): a pause inside a segment asks nothing;
- a channel never has more than one partial in flight (the channel enforces it), so under load
  each open segment gets its next partial as soon as the partial lane reaches it: the rate
  adapts to the machine instead of partials being dropped;
- `reuse_prefix`: the tokens two consecutive partials agreed on (`SegmentTranscript.committed`)
  are forced as the decoder's prefix, so only the tail costs decoder steps;
- `final_prefix`: the final forces them too, so it decodes only what no two partials agreed on.
  Off: a fifth less CPU per final and the same WER on the 39 single-utterance clips, but +0.015
  WER on whole calls (a forced digit run looped), docs/benchmarks.md.
- `early_final`: a closing segment's final is requested once its audio is settled (the post-speech
  pad arrived silent), i.e. during the rest of the closing silence instead of after it, and called
  off if the caller speaks on (transcript/channel.py). Same audio, same text; measured in
  docs/benchmarks.md.

Defaults and the rejected alternatives are measured in docs/benchmarks.md ("Partials that scale").
"""

from __future__ import annotations

from dataclasses import dataclass

#: How often an open segment is re-transcribed for a partial at most (the agent sees text move about once a second).
PARTIAL_INTERVAL_S = 1.0
#: How far the segment's speech must have moved on since its previous partial.
MIN_NEW_SPEECH_S = 0.5


@dataclass(frozen=True)
class PartialPolicy:
    interval_s: float = PARTIAL_INTERVAL_S
    min_new_speech_s: float = MIN_NEW_SPEECH_S
    reuse_prefix: bool = True
    final_prefix: bool = False
    early_final: bool = True

    def __post_init__(self) -> None:
        if self.interval_s <= 0 or self.min_new_speech_s < 0:
            raise ValueError("need interval_s > 0 and min_new_speech_s >= 0")

    def due(self, now: float, last_partial_at: float, speech_end_s: float, last_partial_speech_end_s: float) -> bool:
        """Whether a segment whose last partial (or opening) was at `last_partial_at` needs one now.

        `speech_end_s`: media time of the segment's newest voiced audio; `last_partial_speech_end_s`:
        what it was at the last partial (at the opening: the segment's start).
        """
        return now - last_partial_at >= self.interval_s and speech_end_s - last_partial_speech_end_s >= self.min_new_speech_s
