"""What the main process and its children tell each other over their control links (`common.ipc`).

Small frozen dataclasses, pickled: SIP `Call`s, transcript events, metric snapshots. Audio never
travels here (it goes through shared memory, `inference.remote`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from asr_stream.app.process_metrics import Family
from asr_stream.sip.call import Call, LocalMedia
from asr_stream.sip.call import EndReason as SipEndReason
from asr_stream.transcript.events import TranscriptEvent

# -- every child -> main -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MetricsReport:
    """The child's metric families (`app.process_metrics`), every snapshot interval and before it exits."""

    families: list[Family]
    rtp_port_pairs_free: int | None = None  # an ingest worker's ports left


# -- main -> every child -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Stop:
    """A request: finish within `deadline_s` (a worker: its calls' last finals; inference: queued finals), then exit."""

    deadline_s: float


# -- inference process -> main -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StartFailed:
    """The model cannot be loaded (e.g. it is not prepared); `message` is one line for the operator."""

    message: str


@dataclass(frozen=True, slots=True)
class InferenceReady:
    pid: int
    language: str | None  # the model's default language, which every call's events carry
    max_batch: int
    hotword_lists: frozenset[str]  # the named hotword lists the model compiled (calls pick one by name)


@dataclass(frozen=True, slots=True)
class Saturation:
    """The scheduler's `saturated` changed: new calls are refused (503) while it is set."""

    saturated: bool


# -- ingest worker <-> main ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WorkerReady:
    pid: int
    rtp_port_pairs_free: int


@dataclass(frozen=True, slots=True)
class OpenCall:
    """A request: open the call's receivers; the reply is `Opened`, or PortsExhausted is raised."""

    call: Call


@dataclass(frozen=True, slots=True)
class Opened:
    media: Sequence[LocalMedia]
    rtp_port_pairs_free: int


@dataclass(frozen=True, slots=True)
class UpdateCall:
    """A request (re-INVITE): apply it, or ValueError is raised when a channel cannot follow."""

    call: Call


@dataclass(frozen=True, slots=True)
class ConfirmCall:
    call: Call


@dataclass(frozen=True, slots=True)
class CloseCall:
    call: Call
    reason: SipEndReason


@dataclass(frozen=True, slots=True)
class Publish:
    """An event of one of the worker's calls, in the call's order: main publishes it (Kafka, live feed, metrics)."""

    event: TranscriptEvent


@dataclass(frozen=True, slots=True)
class HangUp:
    """The worker wants a call ended (its RTP stopped): main sends the BYE."""

    call_id: str
    reason: SipEndReason
