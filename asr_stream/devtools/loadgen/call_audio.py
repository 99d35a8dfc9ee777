"""Call audio for load tests: real speech clips joined into multi-utterance calls, as G.711 packets.

A call is a `CallProgram`: lead-in silence, then its utterances (clips chosen per call) separated
by pauses, cycled until the call has lasted its duration, then tail silence so the last segment
closes on silence before the BYE. Every part is a whole number of 20 ms packets, so packet `i` of
any call is one slice of the call's pre-encoded cycle (or silence): the sender does no audio work.

Each utterance keeps its reference text and where its speech ends, in media time (seconds from the
call's first packet) and as the index of the packet that carries its last speech sample: the
sender stamps that packet's send time, the reference for the outside end-of-speech -> final latency.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from asr_stream.devtools.sipp import telephone_pcm
from asr_stream.rtp.g711 import alaw_encode, ulaw_encode

RATE = 8000
PACKET = 160  # samples in 20 ms
LEAD_IN_S = 0.5  # silence before the first utterance
TAIL_S = 1.5  # silence after the last one, so its segment closes on silence, not on the BYE
ENCODERS: dict[str, Callable[[np.ndarray], bytes]] = {"PCMU": ulaw_encode, "PCMA": alaw_encode}


def trim_silence(audio: np.ndarray, rate: int, floor_db: float = -35.0) -> np.ndarray:
    """The clip from its first to its last 10 ms frame within `floor_db` of its loudest frame.

    The clips carry their own leading/trailing silence; an utterance's speech end (the latency
    reference) must be where the voice stops, not where the file does.
    """
    frame = rate // 100
    frames = np.asarray(audio[: audio.size // frame * frame], dtype=np.float64).reshape(-1, frame)
    rms = np.sqrt((frames**2).mean(axis=1) + 1e-12)
    loud = np.flatnonzero(rms >= rms.max() * 10 ** (floor_db / 20))
    return audio[loud[0] * frame : (loud[-1] + 1) * frame]


@dataclass(frozen=True)
class Clip:
    clip_id: str
    text: str
    pcm: np.ndarray  # int16 at 8 kHz: the speech, then zeros to a whole number of packets
    speech_samples: int  # where the speech ends in `pcm`


def load_clips(speech_dir: Path, lang: str, min_s: float = 2.5, max_s: float = 12.0) -> list[Clip]:
    """The manifest's clips in `lang` of a usable length, trimmed, as 8 kHz int16, in id order."""
    rows = [json.loads(line) for line in (speech_dir / "manifest.jsonl").read_text().splitlines() if line.strip()]
    chosen = sorted((r for r in rows if r["lang"] == lang and min_s <= r["duration_s"] <= max_s), key=lambda r: r["id"])
    clips = []
    for row in chosen:
        speech = trim_silence(telephone_pcm(speech_dir / row["path_wav16k"]), RATE)
        padded = np.concatenate([speech, np.zeros(-speech.size % PACKET, np.int16)])
        clips.append(Clip(row["id"], row["text"], padded, speech.size))
    return clips


@dataclass(frozen=True)
class Utterance:
    clip_id: str
    text: str
    start_s: float  # media time of its first speech sample (seconds from the call's first packet)
    speech_end_s: float  # media time just after its last speech sample
    last_packet: int  # index of the packet carrying its last speech sample


@dataclass(frozen=True)
class CallProgram:
    """Everything a sender needs to stream one call; `payload(i)` is packet i's G.711 bytes."""

    codec: str
    cycle: bytes  # the utterances and their pauses, encoded, repeated as needed
    silence: bytes  # one packet of encoded silence
    lead_packets: int
    speech_packets: int  # packets taken from the cycle (wrapping) after the lead-in
    total_packets: int  # lead-in + speech + tail
    utterances: tuple[Utterance, ...]

    @property
    def duration_s(self) -> float:
        return self.total_packets * PACKET / RATE

    def payload(self, index: int) -> bytes:
        position = index - self.lead_packets
        if 0 <= position < self.speech_packets:
            offset = position % (len(self.cycle) // PACKET) * PACKET
            return self.cycle[offset : offset + PACKET]
        return self.silence

    def encoded(self) -> bytes:
        """The whole call as one G.711 stream (what a SIPp `rtp_stream` file holds)."""
        return b"".join(self.payload(i) for i in range(self.total_packets))


def build_program(
    clips: list[Clip],
    rng: np.random.Generator,
    *,
    codec: str = "PCMU",
    utterances: int = 4,
    pause_s: tuple[float, float] = (0.8, 2.0),
    duration_s: float | None = None,
    lead_in_s: float = LEAD_IN_S,
    tail_s: float = TAIL_S,
    encoded_clips: dict[str, bytes] | None = None,
) -> CallProgram:
    """A call of `utterances` clips drawn by `rng`, each followed by a pause drawn from `pause_s`.

    Without `duration_s` the utterances play once; with it they repeat until the next one would end
    after `duration_s` less the tail (at least one plays). `encoded_clips` caches each clip's G.711
    bytes across calls (by clip id).
    """
    encode = ENCODERS[codec]
    cache = encoded_clips if encoded_clips is not None else {}
    picked = [clips[i] for i in rng.choice(len(clips), size=min(utterances, len(clips)), replace=False)]
    silence = encode(np.zeros(PACKET, np.int16))
    lead = round(lead_in_s * RATE / PACKET)
    parts, spans, position = [], [], 0  # spans: (clip, first speech packet, packets) within the cycle
    for clip in picked:
        if clip.clip_id not in cache:
            cache[clip.clip_id] = encode(clip.pcm)
        pause = round(rng.uniform(*pause_s) * RATE / PACKET)
        parts += [cache[clip.clip_id], silence * pause]
        spans.append((clip, position, clip.pcm.size // PACKET))
        position += clip.pcm.size // PACKET + pause
    cycle_packets = position
    limit = None if duration_s is None else round((duration_s - tail_s) * RATE / PACKET) - lead
    played, speech_packets, k = [], 0, 0
    while True:
        clip, first, packets = spans[k % len(spans)]
        start = k // len(spans) * cycle_packets + first
        played_once = limit is None and k == len(spans)
        past_duration = limit is not None and k > 0 and start + packets > limit
        if played_once or past_duration:
            break
        last = lead + start + packets - 1
        begins_s = (lead + start) * PACKET / RATE
        played.append(Utterance(clip.clip_id, clip.text, begins_s, begins_s + clip.speech_samples / RATE, last))
        speech_packets, k = start + packets, k + 1
    tail = round(tail_s * RATE / PACKET)
    return CallProgram(codec, b"".join(parts), silence, lead, speech_packets, lead + speech_packets + tail, tuple(played))
