"""Transcribe batches of utterances with an imported SenseVoice or Paraformer model (engines/<name>/).

One engine call per batch of true-length features: Kaldi fbank + LFR + CMVN per utterance,
zero-padded into [B, T, 560] with the valid lengths (the graphs mask padding), no 30 s window.
Written against the Engine protocol, like the Whisper and Conformer runners: the caller picks the
backend. Each input is fed in the dtype the graph declares (FunASR exports int32 lengths; a
re-export with int64 works the same).

SenseVoice (CTC): the encoder prepends four query frames (language, emotion, event, text norm)
to the speech, so its output starts with four tag frames; they become `language`, `emotion` and
`event` fields and never reach the text, which is decoded from the frames after them (greedy, or
the hotword prefix beam search). Paraformer: one output position per token; the first
`token_num - predictor_bias` positions hold the text (the last counted one predicts the end of
the sentence).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from asr_stream.audio.features_kaldi import Cmvn, funasr_features, pad_batch
from asr_stream.inference.ctc import TimedToken, greedy_ctc
from asr_stream.inference.engine import Engine
from asr_stream.inference.funasr.manifest import (
    CMVN_FILE,
    GRAPH_FILE,
    LANGUAGE,
    SENSEVOICE,
    SPEECH,
    SPEECH_LENGTHS,
    TEXTNORM,
    TOKENS_FILE,
    FunasrManifest,
)
from asr_stream.inference.funasr.tokens import TokenTable
from asr_stream.inference.hotwords import ContextGraph, biased_token_search, ctc_prefix_beam_search

# SenseVoice's query embedding rows (FunASR's SenseVoiceSmall.lid_dict and textnorm_dict): the
# `language` and `textnorm` inputs index this table, so they are constants of the model.
SENSEVOICE_LANGUAGE_IDS = {"auto": 0, "zh": 3, "en": 4, "yue": 7, "ja": 11, "ko": 12, "nospeech": 13}
SENSEVOICE_TEXTNORM_IDS = {"withitn": 14, "woitn": 15}
SENSEVOICE_QUERY_FRAMES = 4  # language, emotion, event, text norm: prepended by the graph itself
#: The longest audio one engine call takes (profiles/sensevoice.yaml and paraformer.yaml: 500 frames of 60 ms).
MAX_PIECE_S = 30
NO_SPEECH = "nospeech"
EMOTIONS = frozenset({"HAPPY", "SAD", "ANGRY", "NEUTRAL", "FEARFUL", "DISGUSTED", "SURPRISED", "EMO_UNKNOWN"})
EVENTS = frozenset({"Speech", "BGM", "Applause", "Laughter", "Cry", "Sneeze", "Breath", "Cough", "Sing", "Speech_Noise", "Event_UNK"})
_UNKNOWN_TAGS = frozenset({"EMO_UNKNOWN", "Event_UNK"})


@dataclass(frozen=True)
class TextSpan:
    """A span of an utterance's text; times in seconds from the utterance's start."""

    start: float
    end: float
    text: str


@dataclass(frozen=True)
class FunasrTranscript:
    """One utterance's result. `emotion` and `event` are SenseVoice's tags (lower case), None when absent or unknown."""

    text: str
    language: str | None
    tokens: tuple[int, ...]
    duration_s: float
    emotion: str | None = None
    event: str | None = None
    timed_tokens: tuple[TimedToken, ...] = field(default=(), repr=False)

    @property
    def segments(self) -> list[TextSpan]:
        """One span over the text: CTC token times for SenseVoice, the whole utterance for Paraformer (no timestamps)."""
        if not self.text:
            return []
        if self.timed_tokens:
            return [TextSpan(self.timed_tokens[0].start_ms / 1000, self.timed_tokens[-1].end_ms / 1000, self.text)]
        return [TextSpan(0.0, self.duration_s, self.text)]


@dataclass(frozen=True)
class SenseVoiceTags:
    """What SenseVoice says on its query frames: language (None if it heard no speech), emotion, audio event."""

    language: str | None
    emotion: str | None
    event: str | None
    no_speech: bool


def read_sensevoice_tags(tokens: TokenTable, query_logits: np.ndarray) -> SenseVoiceTags:
    """Each query frame's best token, sorted into fields by what it names (the order is the model's business)."""
    tags = [tokens.tag(int(token)) for token in query_logits.argmax(axis=-1)]
    language = next((tag for tag in tags if tag in SENSEVOICE_LANGUAGE_IDS), None)
    emotion = next((tag.lower() for tag in tags if tag in EMOTIONS and tag not in _UNKNOWN_TAGS), None)
    event = next((tag.lower() for tag in tags if tag in EVENTS and tag not in _UNKNOWN_TAGS), None)
    no_speech = language == NO_SPEECH
    return SenseVoiceTags(None if language in (None, "auto", NO_SPEECH) else language, emotion, event, no_speech)


class FunasrRunner:
    """A loaded SenseVoice or Paraformer model; `transcribe_batch` is safe to call from one thread at a time (like its engine)."""

    def __init__(self, manifest: FunasrManifest, tokens: TokenTable, cmvn: Cmvn, engine: Engine) -> None:
        self.manifest = manifest
        self.tokens = tokens
        self.cmvn = cmvn
        self.engine = engine
        self._input_dtypes = {spec.name: spec.dtype for spec in engine.inputs}
        self._outputs = [spec.name for spec in engine.outputs[:2]]  # (scores, lengths) by position, whatever a re-export named them
        self._blank = tokens.ids.get("<blank>", 0)  # SenseVoice's blank is <unk>, id 0
        self._special_ids = frozenset(i for i in range(len(tokens)) if tokens.is_special(i))

    @classmethod
    def load(cls, engine_dir: Path, load_engine: Callable[[Path], Engine]) -> FunasrRunner:
        """Read engines/<name>/ and load its graph with `load_engine` (e.g. `OnnxRuntimeEngine.load`)."""
        engine_dir = Path(engine_dir)
        manifest = FunasrManifest.read(engine_dir)
        tokens = TokenTable.read(engine_dir / TOKENS_FILE)
        return cls(manifest, tokens, Cmvn.read(engine_dir / CMVN_FILE), load_engine(engine_dir / GRAPH_FILE))

    @property
    def family(self) -> str:
        return self.manifest.family

    def transcribe_batch(self, audios: Sequence[np.ndarray], hotwords: ContextGraph | None = None) -> list[FunasrTranscript]:
        """Transcribe mono 16 kHz float32 waveforms, one result per waveform, in order, in engine
        calls of at most `engine.max_batch` utterances; `hotwords` switches on the biased search.

        Audio longer than `MAX_PIECE_S` (a file offline) is transcribed in pieces of that length,
        the shape profiles' maximum (attention cost grows with the square of the length), and the
        pieces' tokens joined.
        """
        piece = MAX_PIECE_S * self.manifest.features.sample_rate
        owners: list[int] = []
        pieces: list[np.ndarray] = []
        for index, audio in enumerate(audios):
            for start in range(0, max(len(audio), 1), piece):
                owners.append(index)
                pieces.append(audio[start : start + piece])
        step = self.engine.max_batch
        results = [result for start in range(0, len(pieces), step) for result in self._run(pieces[start : start + step], hotwords)]
        return [self._join([r for owner, r in zip(owners, results) if owner == i]) for i in range(len(audios))]

    def _join(self, pieces: list[FunasrTranscript]) -> FunasrTranscript:
        """One utterance's result from its consecutive pieces (usually just one)."""
        if len(pieces) == 1:
            return pieces[0]
        timed: list[TimedToken] = []
        for index, piece in enumerate(pieces):
            offset_ms = index * MAX_PIECE_S * 1000
            timed += [TimedToken(t.token_id, t.start_ms + offset_ms, t.end_ms + offset_ms) for t in piece.timed_tokens]
        tokens = tuple(token for piece in pieces for token in piece.tokens)
        return FunasrTranscript(
            self.tokens.decode(list(tokens)),
            next((p.language for p in pieces if p.language), None),
            tokens,
            sum(p.duration_s for p in pieces),
            next((p.emotion for p in pieces if p.emotion), None),
            next((p.event for p in pieces if p.event), None),
            tuple(timed),
        )

    def _run(self, audios: Sequence[np.ndarray], hotwords: ContextGraph | None) -> list[FunasrTranscript]:
        features = [funasr_features(audio, self.manifest.features, self.cmvn) for audio in audios]
        durations = [len(audio) / self.manifest.features.sample_rate for audio in audios]
        results: list[FunasrTranscript | None] = [
            None if len(item) else FunasrTranscript("", self.manifest.language, (), d) for item, d in zip(features, durations)
        ]
        rows = [i for i, result in enumerate(results) if result is None]  # under one 25 ms frame: nothing to run
        if rows:
            batch, lengths = pad_batch([features[i] for i in rows])
            feeds = {SPEECH: batch, SPEECH_LENGTHS: lengths}
            if self.family == SENSEVOICE:
                language = SENSEVOICE_LANGUAGE_IDS[self.manifest.language or "auto"]
                feeds[LANGUAGE] = np.full(len(rows), language)
                feeds[TEXTNORM] = np.full(len(rows), SENSEVOICE_TEXTNORM_IDS[self.manifest.text_norm])
            outputs = self.engine.run({name: value.astype(self._input_dtypes.get(name, value.dtype)) for name, value in feeds.items()})
            scores, counts = (outputs[name] for name in self._outputs)
            decode = self._sensevoice if self.family == SENSEVOICE else self._paraformer
            for row, i in enumerate(rows):
                results[i] = decode(scores[row], int(counts[row]), durations[i], hotwords)
        return results  # type: ignore[return-value]

    def _sensevoice(self, logits: np.ndarray, frames: int, duration_s: float, hotwords: ContextGraph | None) -> FunasrTranscript:
        """Tags from the four query frames, text from the CTC frames after them."""
        tags = read_sensevoice_tags(self.tokens, logits[:SENSEVOICE_QUERY_FRAMES])
        speech = logits[SENSEVOICE_QUERY_FRAMES:frames]
        frame_ms = self.manifest.features.frame_ms
        if tags.no_speech:
            timed = []
        elif hotwords is None:
            timed = greedy_ctc(speech[None], np.array([len(speech)]), self._blank, frame_ms)[0]
        else:
            timed = ctc_prefix_beam_search(speech, self._blank, hotwords, frame_ms)
        timed = [token for token in timed if not self.tokens.is_special(token.token_id)]
        text = self.tokens.decode([token.token_id for token in timed])
        language = self.manifest.language or tags.language
        return FunasrTranscript(text, language, tuple(t.token_id for t in timed), duration_s, tags.emotion, tags.event, tuple(timed))

    def _paraformer(self, log_probs: np.ndarray, token_num: int, duration_s: float, hotwords: ContextGraph | None) -> FunasrTranscript:
        positions = log_probs[: max(0, token_num - self.manifest.predictor_bias)]
        if hotwords is None:
            ids = [int(token) for token in positions.argmax(axis=-1)] if len(positions) else []
        else:
            ids = biased_token_search(positions, self._special_ids, hotwords)
        ids = [token for token in ids if not self.tokens.is_special(token)]
        return FunasrTranscript(self.tokens.decode(ids), self.manifest.language, tuple(ids), duration_s)
