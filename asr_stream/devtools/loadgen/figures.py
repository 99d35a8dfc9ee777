"""From calls placed and events observed to the figures a load step reports.

Finals are matched to calls by `call_id` and to utterances by media time: a final covers an
utterance when its speech end (`end_ms` less the segmenter's post-speech pad) lies within
`MATCH_TOLERANCE_S` of the utterance's speech end in the daemon's media clock (our media time plus
the delay from the answer to our first packet: the daemon's clock starts at the answer).

Latency is measured two ways: the events' own `latency_ms` (daemon clock: end of speech leaving the
jitter buffer -> publish), and from outside: the final's arrival at our consumer minus the wall
time the packet carrying the utterance's last speech sample was sent. The outside view adds the
network, the jitter buffer's playout delay, Kafka delivery and the consumer's fetch wait. Delivery
(the arrival at our consumer minus the event's own `emitted_at`, both on this machine's clock when
the generator runs beside the daemon) splits that difference: what happened after the daemon
emitted the event (its path to Kafka, the broker, our consumer) versus before (ingest lag).
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime

import numpy as np

from asr_stream.audio.segmenter import SegmenterConfig
from asr_stream.devtools.loadgen.recorder import Arrival, Event, check_order
from asr_stream.devtools.loadgen.worker import CallRecord, WorkerReport
from asr_stream.devtools.scoring import corpus_cer, corpus_wer

POST_PAD_S = SegmenterConfig().post_speech_pad_ms / 1000
MATCH_TOLERANCE_S = 0.6


def pct(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if len(values) else None


def spread(values: Sequence[float]) -> dict[str, float | None]:
    return {"p50": pct(values, 50), "p95": pct(values, 95), "p99": pct(values, 99), "n": len(values)}


@dataclass
class StepFigures:
    """One row of the report; `None` where nothing was measured (e.g. no final arrived)."""

    generator: str  # "callgen" or "sipp"
    calls: int
    answered: int
    failed: dict[str, int]  # reason -> calls
    hangup_problems: dict[str | None, int]  # calls not ended by our answered BYE, by what happened (None: not recorded)
    finals_expected: int  # utterances the answered calls spoke to the end
    finals_received: int
    utterances_matched: int
    lost_calls: int  # answered, call.started seen, no call.ended
    never_started: int  # answered, no call.started on the topic
    latency_ms: dict  # the events' own latency_ms, every final
    outside_ms: dict  # arrival - last speech packet sent, matched utterances
    outside_minus_own_ms: float | None  # median over matched finals: where the two views disagree
    setup_ms: dict  # INVITE -> 200 OK
    partials_per_segment: float | None
    partial_gap_s: dict  # between consecutive partials of a segment (emitted_at)
    partial_latency_ms: dict  # the partials' own latency_ms: arrival of the newest audio they cover -> emission
    final_delivery_ms: dict  # a final's arrival at our consumer - its emitted_at
    partial_delivery_ms: dict  # the same for partials
    error_rate: float | None  # corpus WER (CER for languages written without spaces)
    error_rate_per_call: dict
    error_metric: str
    generator_lateness_ms: dict
    generator_cpu_s: float | None
    generator_cores: float | None
    packets: int
    packets_dropped: int
    packets_refused: int
    wall_s: float
    consumer_cpu_s: float | None = None  # the topic recorder's thread, in the parent
    daemon_cpu_s: float | None = None  # over the step, where the daemon's process is known
    daemon_counters: dict[str, float] = field(default_factory=dict)  # its metrics' changes over the step
    machine_busy_cores: float | None = None  # every process's CPU over the step / its wall time (host.machine_busy_s)
    sip_responses: dict[str, int] = field(default_factory=dict)  # e.g. {"INVITE 200": 500, "BYE 200": 500}
    problems: list[str] = field(default_factory=list)
    per_call: list[dict] = field(default_factory=list)

    def as_json(self) -> dict:
        return asdict(self)


def partial_stamps(events: Iterable[Event]) -> dict[str, list[float]]:
    """Per segment, the emission times (epoch s) of its partials, in order."""
    stamps: dict[str, list[float]] = {}
    for e in events:
        if e["event"] == "segment.partial":
            stamps.setdefault(e["segment_id"], []).append(datetime.fromisoformat(e["emitted_at"]).timestamp())
    return stamps


def gaps_between(stamps: dict[str, list[float]]) -> list[float]:
    """The gaps (s) between consecutive partials of each segment: what an agent waits for new text."""
    return [b - a for times in stamps.values() for a, b in itertools.pairwise(times)]


def _failure(call: CallRecord) -> str:
    return call.failure + (f" (Retry-After {call.retry_after_s})" if call.retry_after_s is not None else "")  # type: ignore[operator]


def _spoken(call: CallRecord) -> list[dict]:
    """The call's utterances that were sent to the end (a call cut short did not say the rest)."""
    return [u for u in call.utterances if u["speech_end_sent_at"] is not None]


def _match(call: CallRecord, finals: list[Arrival]) -> list[tuple[dict, Arrival]]:
    """(utterance, its final) for every spoken utterance a final covers."""
    pairs = []
    for utterance in _spoken(call):
        speech_end = call.media_offset_s + utterance["speech_end_s"]
        candidates = [
            (abs(e["end_ms"] / 1000 - POST_PAD_S - speech_end), arrival)
            for arrival in finals
            if (e := arrival[1])["start_ms"] / 1000 < speech_end
        ]
        distance, arrival = min(candidates, key=lambda c: c[0], default=(float("inf"), None))
        if arrival is not None and distance <= MATCH_TOLERANCE_S:
            pairs.append((utterance, arrival))
    return pairs


def step_figures(
    generator: str,
    calls: list[CallRecord],
    events: list[Arrival],
    workers: list[WorkerReport],
    wall_s: float,
    language: str = "en",
) -> StepFigures:
    """Everything one step reports; `events` are the topic's events of these calls, in arrival order."""
    by_call: dict[str, list[Arrival]] = {}
    for arrival in events:
        by_call.setdefault(arrival[1]["call_id"], []).append(arrival)
    answered = [c for c in calls if c.call_id is not None]
    latencies, outside, differences, gaps, per_call, problems = [], [], [], [], [], []
    partial_latencies: list[float] = []
    delivery: dict[str, list[float]] = {"segment.final": [], "segment.partial": []}
    references, hypotheses, call_error_rates = [], [], []
    finals_received = matched = lost = never_started = partials = segments = 0
    metric = corpus_wer if language == "en" else corpus_cer
    first_answer = min((c.answered_at for c in answered if c.answered_at is not None), default=0.0)
    for call in answered:
        mine = by_call.get(call.call_id or "", [])
        names = [e["event"] for _, e in mine]
        never_started += "call.started" not in names
        lost += "call.started" in names and "call.ended" not in names
        problems += [f"{call.call_id}: {p}" for p in check_order([e for _, e in mine])]
        finals = [a for a in mine if a[1]["event"] == "segment.final"]
        finals_received += len(finals)
        latencies += [e["latency_ms"] for _, e in finals]
        for arrived, e in mine:
            if e["event"] in delivery:
                delivery[e["event"]].append(1000 * (arrived - datetime.fromisoformat(e["emitted_at"]).timestamp()))
            if e["event"] == "segment.partial":
                partials += 1
                partial_latencies.append(e["latency_ms"])
        segments += len(finals)
        gaps += gaps_between(partial_stamps(e for _, e in mine))
        pairs = _match(call, finals)
        matched += len(pairs)
        for utterance, (arrived, final) in pairs:
            outside.append(1000 * (arrived - utterance["speech_end_sent_at"]))
            differences.append(outside[-1] - final["latency_ms"])
        reference = " ".join(u["text"] for u in _spoken(call))
        hypothesis = " ".join(e["text"] for _, e in finals)
        references.append(reference)
        hypotheses.append(hypothesis)
        call_error_rates.append(metric([reference], [hypothesis], language))
        per_call.append(
            {
                "call_id": call.call_id,
                "index": call.index,
                "answered_s": None if call.answered_at is None else call.answered_at - first_answer,
                "utterances": len(_spoken(call)),
                "finals": len(finals),
                "error_rate": call_error_rates[-1],
            }
        )
    setup = [1000 * (c.answered_at - c.invite_at) for c in answered if c.answered_at is not None and c.invite_at is not None]
    lateness = [1000 * s for w in workers for s in w.lateness_s]
    cpu = sum(w.cpu_s for w in workers) if workers else None
    return StepFigures(
        generator=generator,
        calls=len(calls),
        answered=len(answered),
        failed=dict(Counter(_failure(c) for c in calls if c.failure is not None)),
        hangup_problems=dict(Counter(c.ended_by for c in answered if c.ended_by != "us")),
        finals_expected=sum(len(_spoken(c)) for c in answered),
        finals_received=finals_received,
        utterances_matched=matched,
        lost_calls=lost,
        never_started=never_started,
        latency_ms=spread(latencies),
        outside_ms=spread(outside),
        outside_minus_own_ms=pct(differences, 50),
        setup_ms=spread(setup),
        partials_per_segment=partials / segments if segments else None,
        partial_gap_s=spread(gaps),
        partial_latency_ms=spread(partial_latencies),
        final_delivery_ms=spread(delivery["segment.final"]),
        partial_delivery_ms=spread(delivery["segment.partial"]),
        error_rate=metric(references, hypotheses, language) if references else None,
        error_rate_per_call=spread(call_error_rates) | {"max": max(call_error_rates, default=None)},
        error_metric="WER" if language == "en" else "CER",
        generator_lateness_ms=spread(lateness) | {"max": max(lateness, default=None)},
        generator_cpu_s=cpu,
        generator_cores=cpu / wall_s if cpu is not None and wall_s > 0 else None,
        packets=sum(c.packets for c in calls),
        packets_dropped=sum(c.dropped for c in calls),
        packets_refused=sum(c.refused for c in calls),
        wall_s=wall_s,
        problems=problems,
        per_call=per_call,
        sip_responses=dict(sum((Counter(w.sip_responses) for w in workers), Counter())),
    )
