"""Live load on CPU: how many concurrent calls the daemon transcribes with p95 end-of-speech -> final <= 1.5 s.

Run by hand:  .venv/bin/python bench/load.py --calls 1 2 4 6 8
       without partials:  ... --partial-interval-s 1000
       issue 13's figure:  ... --calls 8 --utterances 3 --stagger-s 1
       one lever off:  ... --set scheduler.final_lane=false  (any config key, YAML value)
       with ingest worker processes:  ... --set workers=2
       the same step several times, then pooled:  ... --calls 8 --utterances 3 --stagger-s 1 --rounds 4

What it does: starts an embedded Tansu broker and the daemon (Whisper tiny.en on ONNX Runtime,
the CPU default) in this process, then climbs a ladder of N. At each step N real SIPp processes
call the daemon at once, each streaming G.711 RTP in real time of its own multi-utterance call
(several English shared clips joined by 0.8-1.5 s pauses, so every call has several segments).
A Kafka consumer thread records every event and the wall time it arrived. The ladder stops at
the first step whose p95 exceeds the limit, or whose calls failed.

Each step gets a fresh daemon (see `warm_up`): the scheduler's `saturated` flag can stay on after
a step ends and would refuse the next step's calls (docs/benchmarks.md), and one step's
allocations would hide the next one's RSS growth.

Why in-process rather than a daemon subprocess: the only non-daemon work in this process is the
consumer thread, whose CPU is measured with `time.thread_time()` and subtracted, and the daemon's
own objects are at hand. With `--workers N` (N > 1) the daemon's child processes (the inference
process and N ingest workers) are counted too: CPU time and RSS of the whole process tree come from
/proc. Batch sizes, batch wall time, shed partials and saturation are read from the daemon's
/metrics registry, which merges every process's series, so both modes are measured the same way.
SIPp and Tansu are separate processes and are not counted.

`--stagger-s` starts the calls that far apart instead of at once (sustained load rather than a
burst). Partials are reported as the agent sees them: the gap between consecutive partials of a
segment, the time from a segment's speech onset to its first partial, how many segments longer
than 3 s got no partial at all, and churn (the share of words shown in a partial that a later
partial or the final changed, `scoring.churn`; "stable churn" is the same for `stable_text`). The
WER of the finals is printed next to the offline WER of the same utterances (`transcribe`'s full
window, computed once before the ladder).

`--rounds R` runs each step R times (a fresh daemon each) and adds a pooled row: the percentiles
and the WER over every round's finals and partials together. Why: one 8-call step has 24
utterances (~400 words: one word is 0.0025 WER) and ~110 partial gaps (p95 is the sixth largest),
so single runs of identical code differ by more than the margins the targets leave.

Latency is reported twice: the events' own `latency_ms` (daemon clock, from the moment the end of
speech left the jitter buffer to publish) and an outside view on the bench's clock: the time the
final reached the consumer minus the time its utterance's last speech was sent, i.e. SIPp's ACK
timestamp (its RTP stream starts right after) plus the speech end's offset in the call audio. The
outside view adds the playout delay (60 ms), Kafka delivery and the consumer's fetch wait.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import resource
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import soundfile
import yaml

from asr_stream.app.config import load_config
from asr_stream.app.daemon import Daemon
from asr_stream.audio.segmenter import SegmenterConfig
from asr_stream.audio.vad import Vad
from asr_stream.audio.wavfile import load_audio
from asr_stream.devtools.loadgen.call_audio import trim_silence
from asr_stream.devtools.loadgen.figures import gaps_between, partial_stamps
from asr_stream.devtools.loadgen.host import load_average, machine
from asr_stream.devtools.loadgen.recorder import TopicRecorder, check_order
from asr_stream.devtools.local_broker import LocalBroker, free_tcp_port
from asr_stream.devtools.scoring import churn, corpus_wer
from asr_stream.devtools.sipp import SippError, place_call
from asr_stream.inference import live
from asr_stream.inference.runners import load_model
from asr_stream.inference.scheduler import Priority
from asr_stream.ingest.resample import resample
from asr_stream.rtp.g711 import ulaw_decode, ulaw_encode

REPO = Path(__file__).resolve().parents[1]
SPEECH = REPO.parent / "shared" / "speech"
RATE = 16_000
TOPIC = "asr.load"
LEAD_IN_S = 0.5  # silence before the first utterance
TAIL_S = 1.5  # silence after the last one, so its segment closes on silence, not on BYE
HANGUP_AFTER_S = 0.5
POST_PAD_S = SegmenterConfig().post_speech_pad_ms / 1000  # a final's end_ms is the speech end plus this
PRE_PAD_MS = SegmenterConfig().pre_speech_pad_ms  # a segment's start_ms is its speech onset less this
MATCH_TOLERANCE_S = 0.6  # how far a final's speech end may sit from an utterance's to pair them


# -- the calls ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Utterance:
    clip_id: str
    text: str
    speech_end_s: float  # offset of the last speech sample in the call audio
    audio: np.ndarray  # the trimmed speech, for the offline WER


@dataclass(frozen=True)
class CallAudio:
    wav: Path
    duration_s: float
    utterances: tuple[Utterance, ...]


def english_clips(min_s: float, max_s: float) -> list[dict]:
    """Shared English clips of a usable length, in a fixed order (so every run places the same calls)."""
    rows = [json.loads(line) for line in (SPEECH / "manifest.jsonl").read_text().splitlines()]
    return sorted((r for r in rows if r["lang"] == "en" and min_s <= r["duration_s"] <= max_s), key=lambda r: r["id"])


def build_call(index: int, clips: list[dict], per_call: int, workdir: Path, rng: np.random.Generator) -> CallAudio:
    """Call `index`: `per_call` consecutive clips (wrapping) joined by 0.8-1.5 s pauses, as a 16 kHz WAV."""
    parts = [np.zeros(round(LEAD_IN_S * RATE), np.float32)]
    utterances = []
    for k in range(per_call):
        row = clips[(index * per_call + k) % len(clips)]
        speech = trim_silence(load_audio(SPEECH / row["path_wav16k"])[0][0], RATE)
        if k:
            parts.append(np.zeros(round(rng.uniform(0.8, 1.5) * RATE), np.float32))
        parts.append(speech)
        utterances.append(Utterance(row["id"], row["text"], sum(p.size for p in parts) / RATE, speech))
    parts.append(np.zeros(round(TAIL_S * RATE), np.float32))
    audio = np.concatenate(parts)
    workdir.mkdir(parents=True, exist_ok=True)
    wav = workdir / f"call-{index}.wav"
    soundfile.write(wav, audio, RATE)
    return CallAudio(wav, audio.size / RATE, tuple(utterances))


@dataclass
class PlacedCall:
    audio: CallAudio
    call_id: str | None = None
    ack_sent: float | None = None  # wall time (epoch s) SIPp sent the ACK; RTP starts right after
    error: str | None = None


async def place(target: str, audio: CallAudio, workdir: Path) -> PlacedCall:
    """One SIPp call; its Call-ID and ACK time come from SIPp's own message trace."""
    try:
        result = await place_call(target, audio.wav, workdir, hangup_after_s=HANGUP_AFTER_S)
    except SippError as error:  # keep SipP's exit status and every SIP status line it saw
        statuses = sorted(set(re.findall(r"^SIP/2\.0 \d{3} .*$", str(error), re.MULTILINE)))
        return PlacedCall(audio, error=f"{str(error).splitlines()[0][:40]} responses {statuses}")
    ack_sent, call_id = result.sent_at("ACK"), result.call_id
    if ack_sent is None or call_id is None:
        return PlacedCall(audio, error="no ACK / Call-ID in SIPp's trace")
    return PlacedCall(audio, call_id, ack_sent)


# -- observing the daemon ----------------------------------------------------------------------
def daemon_pids(daemon: Daemon) -> list[int]:
    """This process and, with workers > 1, the daemon's inference and ingest worker processes."""
    return [os.getpid(), *(pid for pids in daemon.child_pids().values() for pid in pids)]


def rss_bytes(pids: list[int]) -> int:
    """Resident set size of `pids` now (/proc; ru_maxrss is a lifetime peak, useless per step)."""
    return sum(int(Path(f"/proc/{pid}/statm").read_text().split()[1]) for pid in pids) * resource.getpagesize()


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of `pids` so far (/proc/PID/stat utime and stime, in clock ticks)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / ticks


def metric(daemon: Daemon, name: str, **labels: str) -> float:
    """A sample of the daemon's /metrics registry (every process's series merged in), 0 if absent."""
    return daemon.metrics.registry.get_sample_value(name, labels) or 0.0


@dataclass
class BatchCounters:
    """The scheduler's batches as /metrics counts them (the same in one process and in the inference process)."""

    batches: float
    items: float
    seconds: float
    shed: float
    buckets: dict[str, float]

    @classmethod
    def read(cls, daemon: Daemon) -> BatchCounters:
        buckets = {str(le): metric(daemon, "asr_inference_batch_size_bucket", le=str(float(le))) for le in (1, 2, 4, 8, 16, 32, 64, 128)}
        return cls(
            metric(daemon, "asr_inference_batch_size_count"),
            metric(daemon, "asr_inference_batch_size_sum"),
            metric(daemon, "asr_inference_seconds_sum", kind="final") + metric(daemon, "asr_inference_seconds_sum", kind="partial"),
            metric(daemon, "asr_scheduler_shed_partials_total")
            + metric(daemon, "asr_ipc_shed_partials_total", reason="arena_full")
            + metric(daemon, "asr_ipc_shed_partials_total", reason="inference_down"),
            buckets,
        )

    def since(self, before: BatchCounters) -> tuple[float, str, float, int]:
        """Mean batch size, the largest batch's histogram bound, mean batch wall time, partials shed."""
        batches = self.batches - before.batches
        largest = next((f"<={le}" for le, count in self.buckets.items() if count - before.buckets[le] >= batches), "-")
        return (
            (self.items - before.items) / batches if batches else float("nan"),
            largest if batches else "-",
            (self.seconds - before.seconds) / batches if batches else float("nan"),
            int(self.shed - before.shed),
        )


@dataclass
class Sampler:
    """Samples RSS and saturation every 100 ms during a step."""

    daemon: Daemon
    peak_rss: int = 0
    samples: int = 0
    saturated_samples: int = 0

    async def run(self) -> None:
        while True:
            self.peak_rss = max(self.peak_rss, rss_bytes(daemon_pids(self.daemon)))
            self.samples += 1
            self.saturated_samples += metric(self.daemon, "asr_scheduler_saturated") > 0
            await asyncio.sleep(0.1)


# -- one step of the ladder --------------------------------------------------------------------
def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def mean(values: list[float] | list[int]) -> float:
    return float(np.mean(values)) if values else float("nan")


@dataclass
class StepResult:
    calls: int
    finals: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    outside_p50_ms: float
    outside_p95_ms: float
    outside_pairs: str
    outside_minus_own_ms: float  # median, per paired final: outside view less the event's latency_ms
    partials: int
    cadence_p50_s: float
    cadence_p95_s: float
    partial_latency_p50_ms: float  # a partial's own latency_ms: arrival of the newest audio it covers -> emission
    partial_latency_p95_ms: float
    first_partial_p50_s: float
    first_partial_p95_s: float
    long_without_partial: int  # segments > 3 s that got no partial
    long_segments: int  # segments > 3 s
    churn: float
    stable_churn: float
    cpu_per_call_s: float
    cores_used: float
    rss_per_call_mib: float
    batch_mean: float
    batch_max: str
    batch_s: float
    shed_partials: int
    saturated_share: float
    wer: float
    failed_calls: int
    load: str  # 1, 5 and 15 min load averages at the end of the step (a shared machine)
    problems: list[str]
    texts: list[tuple[str, str]]  # per call: references joined, finals joined
    events: list[tuple[float, dict]]  # every event of the step's calls, with its arrival time (epoch s)


def analyse(
    n: int,
    placed: list[PlacedCall],
    recorded: list[tuple[float, dict]],
    cpu_s: float,
    wall_s: float,
    sampler: Sampler,
    rss_before: int,
    batches: tuple[float, str, float, int],
) -> StepResult:
    """Turn one step's calls, events and counters into the table row."""
    problems = [f"call {i}: {c.error}" for i, c in enumerate(placed) if c.error]
    latencies, outside, outside_minus_own, cadence, hypotheses, references = [], [], [], [], [], []
    first_partial: list[float] = []
    partial_latencies: list[float] = []
    utterances = partials = finals_count = long_segments = long_without = 0
    churned = [0, 0, 0, 0]  # changed, shown; stable changed, stable shown
    for call in placed:
        if call.call_id is None or call.ack_sent is None:  # not placed: among the problems above
            continue
        mine = [(t, e) for t, e in recorded if e["call_id"] == call.call_id]
        problems += [f"{call.call_id}: {p}" for p in check_order([e for _, e in mine])]
        finals = [(t, e) for t, e in mine if e["event"] == "segment.final"]
        finals_count += len(finals)
        latencies += [e["latency_ms"] for _, e in finals]
        hypotheses.append(" ".join(e["text"] for _, e in finals))
        references.append(" ".join(u.text for u in call.audio.utterances))
        shown: dict[str, list[dict]] = {}
        for _, e in mine:
            if e["event"] == "segment.partial":
                partials += 1
                partial_latencies.append(e["latency_ms"])
                shown.setdefault(e["segment_id"], []).append(e)
        stamps = partial_stamps(e for _, e in mine)
        cadence += gaps_between(stamps)
        for _, e in finals:
            seen = shown.get(e["segment_id"], [])
            if e["end_ms"] - e["start_ms"] > 3000:
                long_segments += 1
                long_without += not seen
            if seen:
                onset = call.ack_sent + (e["start_ms"] + PRE_PAD_MS) / 1000
                first_partial.append(stamps[e["segment_id"]][0] - onset)
                for k, key in ((0, "text"), (2, "stable_text")):
                    changed, count = churn([*(p.get(key) or "" for p in seen), e["text"]])
                    churned[k] += changed
                    churned[k + 1] += count
        for utterance in call.audio.utterances:  # pair it with the final whose speech end (end less pad) is nearest
            utterances += 1
            candidates = [
                (abs(e["end_ms"] / 1000 - POST_PAD_S - utterance.speech_end_s), t, e["latency_ms"])
                for t, e in finals
                if e["start_ms"] / 1000 < utterance.speech_end_s
            ]
            distance, arrived, latency_ms = min(candidates, default=(float("inf"), 0.0, 0))
            if distance <= MATCH_TOLERANCE_S:
                outside.append(1000 * (arrived - call.ack_sent - utterance.speech_end_s))
                outside_minus_own.append(outside[-1] - latency_ms)
    return StepResult(
        calls=n,
        finals=finals_count,
        p50_ms=pct(latencies, 50),
        p95_ms=pct(latencies, 95),
        p99_ms=pct(latencies, 99),
        outside_p50_ms=pct(outside, 50),
        outside_p95_ms=pct(outside, 95),
        outside_pairs=f"{len(outside)}/{utterances}",
        outside_minus_own_ms=pct(outside_minus_own, 50),
        partials=partials,
        cadence_p50_s=pct(cadence, 50),
        cadence_p95_s=pct(cadence, 95),
        partial_latency_p50_ms=pct(partial_latencies, 50),
        partial_latency_p95_ms=pct(partial_latencies, 95),
        first_partial_p50_s=pct(first_partial, 50),
        first_partial_p95_s=pct(first_partial, 95),
        long_without_partial=long_without,
        long_segments=long_segments,
        churn=churned[0] / max(churned[1], 1),
        stable_churn=churned[2] / max(churned[3], 1),
        cpu_per_call_s=cpu_s / sum(c.audio.duration_s for c in placed),
        cores_used=cpu_s / wall_s,
        rss_per_call_mib=(sampler.peak_rss - rss_before) / n / 2**20,
        batch_mean=batches[0],
        batch_max=batches[1],
        batch_s=batches[2],
        shed_partials=batches[3],
        saturated_share=sampler.saturated_samples / max(sampler.samples, 1),
        wer=corpus_wer(references, hypotheses) if references else float("nan"),
        failed_calls=sum(c.error is not None for c in placed),
        load=load_average(),
        problems=problems,
        texts=list(zip(references, hypotheses)),
        events=recorded,
    )


async def warm_up(daemon: Daemon, speech: np.ndarray) -> None:
    """Run the model (twice) and the VAD on real speech before the step's calls.

    The first runs allocate (measured here: +250 MiB and +160 MiB RSS for the first two runs of a
    batch shape) and are slow; that is not a per-call cost. In one process the model is called
    directly, outside the scheduler: on this shared machine one call can leave the scheduler
    `saturated` for good, and the daemon then refuses every later call with 503
    (docs/benchmarks.md). With workers > 1 the model lives in the inference process, so the
    warm-up goes through its scheduler as two finals (with no backlog after them, `saturated` clears).
    The step's calls all arrive together, before any batch has run, so they get in.
    """
    short = speech[: 3 * RATE]  # a partial of a short segment: the 5 s partial window
    requests = (live.Utterance(speech), live.Utterance(short, partial=True), live.Utterance(short))
    for _ in range(2):  # ONNX Runtime plans and allocates its memory pattern on the second run
        if daemon.model is not None:
            await asyncio.to_thread(daemon.model.transcribe_batch, [speech])
            for request in requests[1:]:
                await asyncio.to_thread(daemon.model.live, [request])
        else:
            assert daemon.inference_client is not None
            for request in requests:
                await daemon.inference_client.submit(("warm-up", request.partial), request, Priority.FINAL)
    Vad().process(speech)


def target(daemon: Daemon) -> str:
    assert daemon.ingest is not None
    return f"127.0.0.1:{daemon.ingest.sip.port}"


async def wait_ended(recorder: TopicRecorder, call_ids: set[str], timeout_s: float = 30) -> None:
    """Until every call in `call_ids` has its call.ended on the topic (or the timeout passes)."""
    deadline = time.monotonic() + timeout_s
    # The recorder is fed by its own consumer thread, which has no asyncio.Event to set: poll it.
    while recorder.ended(call_ids) < len(call_ids) and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.1)


async def run_step(
    n: int, daemon: Daemon, recorder: TopicRecorder, calls: list[CallAudio], workdir: Path, stagger_s: float = 0.0
) -> StepResult:
    """Place `n` calls (`stagger_s` apart), wait for their call.ended events, and measure the step."""
    pids = daemon_pids(daemon)
    sampler, rss_before = Sampler(daemon), rss_bytes(pids)
    batches_before, cpu_before, consumer_before, started = BatchCounters.read(daemon), cpu_seconds(pids), recorder.cpu_s, time.monotonic()
    sampling = asyncio.create_task(sampler.run())

    async def staggered(i: int, call: CallAudio) -> PlacedCall:
        await asyncio.sleep(i * stagger_s)
        return await place(target(daemon), call, workdir / f"n{n}-{i}")

    placed = list(await asyncio.gather(*(staggered(i, call) for i, call in enumerate(calls[:n]))))
    call_ids = {c.call_id for c in placed if c.call_id}
    await wait_ended(recorder, call_ids)
    await asyncio.sleep(0.5)  # a little past the last call.ended, so duplicates would show
    sampling.cancel()
    cpu_s = cpu_seconds(pids) - cpu_before - (recorder.cpu_s - consumer_before)
    batches = BatchCounters.read(daemon).since(batches_before)
    return analyse(n, placed, recorder.events_of(call_ids), cpu_s, time.monotonic() - started, sampler, rss_before, batches)


# -- report ------------------------------------------------------------------------------------
HEADER = (
    "| N | finals | p50 / p95 / p99 latency_ms | outside p50 / p95 ms (pairs) | outside - own, median ms | partials | partial gap p50 / p95 s "
    "| partial latency_ms p50 / p95 | first partial p50 / p95 s | > 3 s without partial | churn / stable churn "
    "| CPU s per call-s | cores used | RSS MiB per call | batch mean / max | batch s (mean) | shed partials | saturated | WER | load avg |\n"
    "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
)


def row(r: StepResult) -> str:
    return (
        f"| {r.calls} | {r.finals} | {r.p50_ms:.0f} / {r.p95_ms:.0f} / {r.p99_ms:.0f} | {r.outside_p50_ms:.0f} / {r.outside_p95_ms:.0f} ({r.outside_pairs}) | {r.outside_minus_own_ms:+.0f} "
        f"| {r.partials} | {r.cadence_p50_s:.2f} / {r.cadence_p95_s:.2f} | {r.partial_latency_p50_ms:.0f} / {r.partial_latency_p95_ms:.0f} | {r.first_partial_p50_s:.2f} / {r.first_partial_p95_s:.2f} "
        f"| {r.long_without_partial}/{r.long_segments} | {r.churn:.3f} / {r.stable_churn:.3f} "
        f"| {r.cpu_per_call_s:.3f} | {r.cores_used:.2f} | {r.rss_per_call_mib:.1f} "
        f"| {r.batch_mean:.2f} / {r.batch_max} | {r.batch_s:.2f} | {r.shed_partials} | {r.saturated_share:.0%} | {r.wer:.3f} | {r.load} |"
    )


POOLED_HEADER = (
    "| rounds | finals | p50 / p95 / p99 latency_ms | partials | partial gap p50 / p95 s | partial latency_ms p50 / p95 "
    "| > 3 s without partial | WER |\n|---:|---:|---:|---:|---:|---:|---:|---:|"
)


def pooled_row(results: list[StepResult]) -> str:
    """One row over several rounds of a step: percentiles of every round's values together, corpus WER of every call."""
    events = [e for r in results for _, e in r.events]
    finals = [e["latency_ms"] for e in events if e["event"] == "segment.final"]
    partials = [e for e in events if e["event"] == "segment.partial"]
    gaps = gaps_between(partial_stamps(partials))
    latencies = [e["latency_ms"] for e in partials]
    without, long_segments = sum(r.long_without_partial for r in results), sum(r.long_segments for r in results)
    references, hypotheses = zip(*(pair for r in results for pair in r.texts), strict=True)
    return (
        f"| {len(results)} | {len(finals)} | {pct(finals, 50):.0f} / {pct(finals, 95):.0f} / {pct(finals, 99):.0f} | {len(partials)} "
        f"| {pct(gaps, 50):.2f} / {pct(gaps, 95):.2f} | {pct(latencies, 50):.0f} / {pct(latencies, 95):.0f} "
        f"| {without}/{long_segments} | {corpus_wer(list(references), list(hypotheses)):.4f} |"
    )


def write_events(path: Path, events: list[tuple[float, dict]]) -> None:
    """One JSON object per line: the event with its arrival time (`arrived`, epoch s) added."""
    path.write_text("".join(json.dumps({"arrived": t, **e}) + "\n" for t, e in events))


def telephone(audio: np.ndarray) -> np.ndarray:
    """What the daemon hears of 16 kHz audio sent as SIPp sends it: 8 kHz G.711 mu-law, back to 16 kHz."""
    pcm_8k = np.round(np.clip(resample(audio, RATE, 8000), -1, 1) * 32767).astype(np.int16)
    return resample(ulaw_decode(ulaw_encode(pcm_8k)).astype(np.float32) / 32768, 8000, RATE)


def offline_wer(calls: list[CallAudio]) -> float:
    """The finals' yardstick: the same utterances, through the same telephone channel, transcribed as
    `asr-stream transcribe` does (full window, one utterance at a time)."""
    model = load_model("whisper-tiny.en", REPO / "engines")
    utterances = [u for call in calls for u in call.utterances]
    texts = [model.transcribe_batch([telephone(u.audio)])[0].text for u in utterances]
    return corpus_wer([u.text for u in utterances], texts)


def apply_overrides(config: dict, overrides: list[str]) -> None:
    """`section.key=value` (value parsed as YAML) into the daemon's config document."""
    for override in overrides:
        path, _, value = override.partition("=")
        *sections, key = path.split(".")
        node = config
        for section in sections:
            node = node.setdefault(section, {})
        node[key] = yaml.safe_load(value)


async def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    print(f"machine: {machine()}\ndate: {datetime.now().astimezone():%Y-%m-%d %H:%M %Z}\nload average before: {load_average()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="asr-load-") as tmp, LocalBroker() as broker:
        workdir = Path(tmp)
        port = free_tcp_port()
        config = {
            "sip": {"listen": "127.0.0.1:0"},
            "rtp": {"port_range": [port - port % 2, port - port % 2 + 400], "bind": "127.0.0.1"},
            "http": {"listen": f"127.0.0.1:{free_tcp_port()}"},
            "kafka": {"bootstrap_servers": broker.bootstrap_servers, "topic": TOPIC, "spool_dir": str(workdir / "spool")},
            "model": "whisper-tiny.en",
            "engines_dir": str(REPO / "engines"),
            "scheduler": {"partial_interval_s": args.partial_interval_s},
        }
        apply_overrides(config, args.set)
        config_path = workdir / "config.yaml"
        config_path.write_text(yaml.safe_dump(config))
        rng = np.random.default_rng(args.seed)
        clips = english_clips(2.5, 10.0)
        calls = [build_call(i, clips, args.utterances, workdir, rng) for i in range(max(args.calls))]
        longest = max(clips, key=lambda r: r["duration_s"])  # the longest decode sizes ONNX Runtime's arena
        warmup_speech = load_audio(SPEECH / longest["path_wav16k"])[0][0]
        print(
            f"{len(calls)} calls of {args.utterances} utterances, {min(c.duration_s for c in calls):.1f}-{max(c.duration_s for c in calls):.1f} s each, "
            f"started {args.stagger_s:g} s apart; overrides: {args.set or 'none'}",
            flush=True,
        )
        print(f"offline WER of these utterances (G.711, full window): {offline_wer(calls[: max(args.calls)]):.3f}", flush=True)
        print(HEADER, flush=True)
        recorder = None
        try:
            for n in args.calls:
                results = []
                for round_ in range(args.rounds):
                    # A fresh daemon per step and round (see the module docstring for why).
                    daemon = Daemon(load_config(config_path, environ={}))
                    await daemon.start()
                    try:
                        if recorder is None:  # the first daemon created the topic
                            recorder = TopicRecorder(broker.bootstrap_servers, TOPIC)
                            await asyncio.to_thread(recorder.start)
                        await warm_up(daemon, warmup_speech)
                        result = await run_step(n, daemon, recorder, calls, workdir, args.stagger_s)
                    finally:
                        await daemon.stop()
                    results.append(result)
                    print(row(result), flush=True)
                    for reference, hypothesis in result.texts if args.show_text else []:
                        print(f"    ref: {reference}\n    hyp: {hypothesis}", flush=True)
                    if args.events_out:
                        suffix = f"-r{round_}" if args.rounds > 1 else ""
                        await asyncio.to_thread(write_events, Path(f"{args.events_out}-n{n}{suffix}.jsonl"), result.events)
                    for problem in result.problems[:20]:
                        print(f"    N={n}: {problem}", flush=True)
                if args.rounds > 1:
                    print(f"pooled over {args.rounds} rounds of N={n}:\n{POOLED_HEADER}\n{pooled_row(results)}", flush=True)
                worst = max(results, key=lambda r: r.p95_ms)
                if not worst.p95_ms <= args.limit_ms or any(r.failed_calls for r in results):
                    print(
                        f"stop at N={n}: p95 {worst.p95_ms:.0f} ms (limit {args.limit_ms:.0f}), "
                        f"{sum(r.failed_calls for r in results)} calls failed",
                        flush=True,
                    )
                    break
        finally:
            if recorder is not None:
                recorder.stop()
    print(f"load average after: {load_average()}", flush=True)
    return 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, nargs="+", default=[1, 2, 4, 6, 8, 10, 12], help="the ladder of concurrent calls")
    parser.add_argument("--utterances", type=int, default=4, help="clips per call")
    parser.add_argument("--limit-ms", type=float, default=1500, help="stop once p95 end-of-speech -> final exceeds this")
    parser.add_argument(
        "--partial-interval-s", type=float, default=1.0, help="the daemon's default is 1.0; a huge value turns partials off"
    )
    parser.add_argument("--seed", type=int, default=1, help="for the pauses between utterances")
    parser.add_argument("--rounds", type=int, default=1, help="run each step this many times, then a pooled row")
    parser.add_argument("--events-out", metavar="PREFIX", help="write each step's events to PREFIX-nN.jsonl (with arrival times)")
    parser.add_argument("--show-text", action="store_true", help="print each call's finals under its references")
    parser.add_argument("--stagger-s", type=float, default=0.0, help="start the calls this far apart (0: all at once)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="a daemon config override")
    return parser.parse_args()


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
