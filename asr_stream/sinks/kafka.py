"""Publish transcript events to Kafka: acknowledged by the broker, or kept in the spool.

Guarantees, per call (record key = call_id, so a call's events share a partition):
  * order: a call's events reach the topic in the order `publish` saw them;
  * at-least-once: an event leaves our custody only when the broker acknowledged it
    (acks=all); anything unacknowledged goes to the on-disk spool and is replayed, oldest
    first, before any newer event is sent. Consumers upsert by (segment_id, revision).

Threading: kafka-python is blocking, so a single "kafka-sink" thread owns the producer and the
spool. `publish` only serialises the event and puts it on a bounded in-memory queue; the
asyncio loop never waits on the network or the disk. The thread sends what has queued up as
one batch and waits for its acknowledgements before sending the next (group commit): at most
one batch is ever in doubt, which is what makes the spool-ordering rule simple.

A batch in doubt (sent, not acknowledged when the sink stops waiting: the broker froze or died
after reading it) is spooled, since only the spool survives a crash. With the idempotent
producer it is also left in the producer, which keeps retrying it with its original producer id
and sequence numbers (up to `in_doubt_retry_ms`); the broker keeps one copy of a sequence number
(Kafka's idempotence), so whether the stale request or the retry lands first, the batch is
written once. The spool is not replayed until the producer knows; what it acknowledged is then
skipped, after a look at the log where the broker's answer leaves a doubt (sinks/in_doubt.py).
What remains duplicable is
written down in docs/events.md: a batch in doubt when the daemon itself stops or crashes, or when
the broker stays away longer than `in_doubt_retry_ms` (a replay is a new producer id, which the
broker cannot match to the old copy).

Durability hook: a `DeliveryLedger` (the open-calls journal, sinks/journal.py) hears of events
on this thread just before they can reach the broker or the spool, and again once each is
acknowledged or spooled, the moment from which a crash can no longer lose it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from kafka import KafkaAdminClient, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import ClusterAuthorizationFailedError, KafkaConfigurationError, KafkaError, KafkaTimeoutError, TopicAlreadyExistsError
from kafka.producer.future import FutureRecordMetadata

from asr_stream.common.throttled_log import ThrottledLog, clip
from asr_stream.sinks.in_doubt import Outcome, SpoolHeadSent, find_in_log
from asr_stream.sinks.spool import Spool, SpoolFull, SpoolRecord
from asr_stream.transcript.events import SegmentPartial, TranscriptEvent

log = logging.getLogger(__name__)

# kafka-python option names accepted from the `security` mapping: TLS and SASL only, so a
# config typo fails at start instead of being silently ignored.
SECURITY_OPTIONS = frozenset(
    {
        "security_protocol",
        "ssl_context",
        "ssl_check_hostname",
        "ssl_cafile",
        "ssl_certfile",
        "ssl_keyfile",
        "ssl_crlfile",
        "ssl_password",
        "ssl_ciphers",
        "sasl_mechanism",
        "sasl_plain_username",
        "sasl_plain_password",
        "sasl_kerberos_name",
        "sasl_kerberos_service_name",
        "sasl_kerberos_domain_name",
        "sasl_oauth_token_provider",
    }
)

# Above this share of the spool's bound, partials are no longer spooled: the final of the same
# segment supersedes them, and the remaining room is kept for finals and call events.
PARTIALS_HIGH_WATER = 0.8


@dataclass(frozen=True, kw_only=True)
class KafkaSettings:
    """Where and how to publish. `security` is passed to kafka-python as is (never logged)."""

    bootstrap_servers: str
    topic: str = "asr.transcripts"
    partitions: int = 6  # used only when the sink creates the topic
    replication_factor: int = 1
    client_id: str = "asr-stream"
    spool_dir: Path = Path("spool/kafka")
    spool_max_bytes: int = 256 * 2**20
    request_timeout_ms: int = 5_000
    delivery_timeout_ms: int = 15_000  # how long a send may retry before its event is spooled
    # How long the idempotent producer keeps retrying a spooled batch in doubt with its original
    # sequence numbers (so the broker writes it once) before the spool is replayed regardless.
    # Bounded because kafka-python's I/O thread polls busily while it cannot finish setting up a
    # connection (a broker that accepts TCP but does not answer): about half a core, measured.
    in_doubt_retry_ms: int = 120_000
    compression_type: str | None = None
    security: Mapping[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        unknown = set(self.security) - SECURITY_OPTIONS
        if unknown:
            raise ValueError(f"unknown Kafka security options: {sorted(unknown)}")
        if self.delivery_timeout_ms < self.request_timeout_ms:
            raise ValueError("delivery_timeout_ms must be at least request_timeout_ms (Kafka's rule)")
        if self.in_doubt_retry_ms < self.delivery_timeout_ms:
            raise ValueError("in_doubt_retry_ms must be at least delivery_timeout_ms")


def client_options(settings: KafkaSettings) -> dict[str, Any]:
    """What each of the sink's clients (producer, topic admin, read-back consumer) connects with."""
    return {
        "bootstrap_servers": settings.bootstrap_servers,
        "client_id": settings.client_id,
        "request_timeout_ms": settings.request_timeout_ms,
        "bootstrap_timeout_ms": settings.request_timeout_ms,
        # kafka-python's default grows to 30 s between reconnects; a broker back from an
        # outage should be noticed within a couple of seconds.
        "reconnect_backoff_max_ms": 2_000,
        **settings.security,
    }


def producer_options(settings: KafkaSettings, idempotent: bool) -> dict[str, Any]:
    """The sink's producer: idempotent with 5 requests in flight, or without and one in flight (order)."""
    options = client_options(settings) | {
        "acks": "all",
        "delivery_timeout_ms": settings.delivery_timeout_ms,
        "max_block_ms": settings.request_timeout_ms,
        "compression_type": settings.compression_type,
    }
    if not idempotent:
        return options | {"enable_idempotence": False, "max_in_flight_requests_per_connection": 1}
    # The producer retries a batch for in_doubt_retry_ms; the sink stops waiting after
    # delivery_timeout_ms and spools it, leaving the producer to finish (module docstring).
    return options | {
        "delivery_timeout_ms": settings.in_doubt_retry_ms,
        "enable_idempotence": True,
        "max_in_flight_requests_per_connection": 5,
    }


class DeliveryLedger(Protocol):
    """Hears, on the sink's thread, when events leave the process's memory (sinks/journal.py)."""

    def leaving(self, events: Sequence[TranscriptEvent]) -> None:
        """`events` are about to be sent or spooled; none of them has reached the broker yet."""

    def kept(self, events: Sequence[TranscriptEvent]) -> None:
        """`events` are acknowledged by the broker or durable in the spool."""


@dataclass(frozen=True, slots=True)
class _Outgoing:
    record: SpoolRecord
    event: TranscriptEvent

    @property
    def supersedable(self) -> bool:
        """A partial: a later revision of its segment replaces it."""
        return isinstance(self.event, SegmentPartial)


class KafkaSink:
    """Delivers events to one topic; counters are plain attributes for the metrics stage.

    delivered: acknowledged by the broker and not to be sent again
    failed:    send attempts the broker did not acknowledge (each was spooled or dropped)
    spooled:   records written to the spool
    dropped:   events lost on purpose (queue or spool full), each logged
    spool_size / spool_bytes: records and bytes waiting in the spool now
    """

    def __init__(
        self,
        settings: KafkaSettings,
        queue_capacity: int = 10_000,
        replay_chunk: int = 500,
        ledger: DeliveryLedger | None = None,
        on_delivered: Callable[[Sequence[TranscriptEvent]], None] | None = None,
    ) -> None:
        """`on_delivered(events)`: told, on the sink's thread, of events the broker acknowledged at
        their first send (not of those replayed from the spool)."""
        self.settings = settings
        self._ledger = ledger
        self._on_delivered = on_delivered
        self.delivered = 0
        self.failed = 0
        self.spooled = 0
        self.dropped = 0
        self.spool_size = 0
        self.spool_bytes = 0
        self.idempotent: bool | None = None  # known once connected; None: not yet
        self._queue: queue.Queue[_Outgoing] = queue.Queue(queue_capacity)
        self._replay_chunk = replay_chunk
        self._stopping = threading.Event()
        self._deadline = float("inf")
        self._thread = threading.Thread(target=self._run, name="kafka-sink", daemon=True)
        self._producer: KafkaProducer | None = None
        self._spool: Spool | None = None
        self._head_sent: SpoolHeadSent | None = None  # set while the spool's head holds records sent in doubt
        # Per partition, one past the highest offset the broker acknowledged to us: records sent
        # later can only be at or after it, which bounds the search in `find_in_log`.
        self._acknowledged_end: dict[TopicPartition, int] = {}
        self._retry_at = 0.0
        self._backoff_s = 0.5
        self._spool_full_logged = False
        self._failed_while_stopping = False
        # Once the thread has put its last queued items in the spool, `publish` spools directly:
        # an event handed over after close() is kept for the next start, never left in a dead queue.
        self._closed_lock = threading.Lock()
        self._closed = False
        self._per_event_log = ThrottledLog(log)  # lines that would otherwise come once per event

    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        """Delivering or spooling: the sink's thread runs and the spool has room (for /readyz)."""
        return self._thread.is_alive() and not self._spool_full_logged  # set while the spool refuses events

    def publish(self, event: TranscriptEvent) -> None:
        """Hand an event over for delivery; never blocks the calling (event loop) thread."""
        item = _Outgoing(SpoolRecord(event.call_id.encode(), event.to_json()), event)
        with self._closed_lock:
            if self._closed:
                self._per_event_log.warning(
                    "closed", "kafka sink closed: %s for call %s goes to the spool", event.event, clip(event.call_id)
                )
                self._leaving([item])
                self._spool_items([item])
                return
            try:
                self._queue.put_nowait(item)
            except queue.Full:
                self.dropped += 1
                self._per_event_log.log(
                    logging.ERROR,
                    "queue full",
                    "kafka sink queue full (%d); dropped a %s for call %s",
                    self._queue.maxsize,
                    event.event,
                    clip(event.call_id),
                )

    async def close(self, timeout_s: float = 10.0) -> None:
        """Deliver what is queued within `timeout_s`; whatever is not acknowledged stays spooled."""
        self._deadline = time.monotonic() + timeout_s
        self._stopping.set()
        if self._thread.is_alive():
            # The thread exits by itself at the deadline; the margin covers closing the producer.
            await asyncio.to_thread(self._thread.join, timeout_s + self.settings.request_timeout_ms / 1000 + 5)

    # --- the sink thread -------------------------------------------------------------------

    def _run(self) -> None:
        self._spool = Spool(self.settings.spool_dir, max_bytes=self.settings.spool_max_bytes)
        self._update_spool_counters()
        try:
            while True:
                batch = self._take_batch()
                self._leaving(batch)
                if len(self._spool) or not self._ensure_producer():
                    self._spool_items(batch)  # behind the backlog, to keep each call's order
                    self._replay_chunk_from_spool()
                else:
                    self._deliver(batch)
                if self._stopping.is_set() and self._finished():
                    break
        except Exception:
            log.exception("kafka sink thread failed; queued events go to the spool")
        finally:
            with self._closed_lock:
                rest = self._drain_queue()
                self._leaving(rest)
                self._spool_items(rest)
                self._closed = True
            self._drop_producer()
            if len(self._spool):
                log.warning("kafka sink stopped with %d events in the spool %s", len(self._spool), self._spool.directory)

    def _finished(self) -> bool:
        """When stopping: nothing left, the deadline passed, or the broker proved to be away."""
        nothing_left = self._queue.empty() and not len(self._spool)  # type: ignore[arg-type]
        return nothing_left or time.monotonic() >= self._deadline or self._failed_while_stopping

    def _take_batch(self) -> list[_Outgoing]:
        """What has queued up (waiting briefly for the first item when idle)."""
        try:
            batch = [self._queue.get(timeout=0 if self._stopping.is_set() else 0.1)]
        except queue.Empty:
            return []
        return batch + self._drain_queue()

    def _drain_queue(self) -> list[_Outgoing]:
        items = []
        while True:
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                return items

    def _deliver(self, batch: list[_Outgoing]) -> None:
        """Send a batch (the spool is empty) and wait for it; spool what is not known to be written."""
        outcomes = self._send_and_wait([item.record for item in batch])
        if all(outcome is True for outcome in outcomes):
            self.delivered += len(batch)
            self._kept(batch)
            return
        # From the first failure on, a call's later events are spooled too, even if the broker
        # took them, so its events never overtake each other; other calls are unaffected.
        blocked_keys: set[bytes] = set()
        acknowledged: list[_Outgoing] = []
        to_spool: list[_Outgoing] = []
        spooled_outcomes: list[Outcome] = []
        for item, outcome in zip(batch, outcomes, strict=True):
            if outcome is not True or item.record.key in blocked_keys:
                blocked_keys.add(item.record.key)
                to_spool.append(item)
                spooled_outcomes.append(outcome)
            else:
                acknowledged.append(item)
        self.delivered += len(acknowledged)
        self._kept(acknowledged)
        if self._spool_items(to_spool) == len(to_spool):
            self._head_sent = SpoolHeadSent([item.record.key for item in to_spool], spooled_outcomes)

    def _replay_chunk_from_spool(self) -> None:
        """Send the spool's oldest records, skipping those known written; remove the acknowledged prefix."""
        assert self._spool is not None
        if not len(self._spool) or not self._ensure_producer():
            return
        head_sent, self._head_sent = self._head_sent, None
        if head_sent is not None and not head_sent.settled():
            self._head_sent = head_sent  # the producer is still retrying them: wait for its answer
            with contextlib.suppress(KafkaError):  # briefly, so a stop does not spin while it waits
                self._producer.flush(timeout=0.1)  # type: ignore[union-attr]
            return
        chunk = self._spool.peek(max(self._replay_chunk, len(head_sent.keys) if head_sent is not None else 0))
        skip: set[int] = set()
        if head_sent is not None:
            unconfirmed = head_sent.unconfirmed()
            skip = head_sent.delivered(
                find_in_log(
                    self._client_options(),
                    self._acknowledged_end,
                    {position: (partition, chunk[position]) for position, partition in unconfirmed.items()},
                    self.settings.request_timeout_ms / 1000,
                )
            )
        if skip:
            log.info("kafka: %d spooled events in doubt were written by the broker after all; they are not sent again", len(skip))
        sent = iter(self._send_and_wait([record for position, record in enumerate(chunk) if position not in skip]))
        outcomes: list[Outcome] = [True if position in skip else next(sent) for position in range(len(chunk))]
        prefix = next((index for index, outcome in enumerate(outcomes) if outcome is not True), len(chunk))
        self._spool.acknowledge(prefix)
        self.delivered += prefix
        self._update_spool_counters()
        if prefix < len(chunk):
            self._head_sent = SpoolHeadSent([record.key for record in chunk[prefix:]], outcomes[prefix:])
        elif not len(self._spool):
            log.info("kafka spool replayed; publishing directly again")

    def _send_and_wait(self, records: Sequence[SpoolRecord]) -> list[Outcome]:
        """One outcome per record, in order (see `Outcome`). Drops the producer on a failure that is not in doubt."""
        if not records:
            return []
        assert self._producer is not None
        futures = []
        send_error: KafkaError | None = None
        try:
            for record in records:
                futures.append(self._producer.send(self.settings.topic, key=record.key, value=record.value))
            self._producer.flush(timeout=self._wait_budget_s())
        except KafkaError as error:  # metadata or buffer timeout, or the flush deadline
            send_error = error
        outcomes: list[Outcome] = [future.succeeded() if future.is_done else future for future in futures]
        outcomes += [False] * (len(records) - len(futures))
        for future in futures:
            if future.succeeded() and future.value.offset >= 0:
                partition = future.value.topic_partition
                self._acknowledged_end[partition] = max(self._acknowledged_end.get(partition, 0), future.value.offset + 1)
        if all(outcome is True for outcome in outcomes):
            return outcomes
        self.failed += sum(outcome is not True for outcome in outcomes)
        errors = [future.exception for future in futures if future.failed()]
        in_doubt = sum(isinstance(outcome, FutureRecordMetadata) for outcome in outcomes)
        if in_doubt and self.idempotent and not any(isinstance(error, ClusterAuthorizationFailedError) for error in errors):
            log.warning(
                "kafka: %d events not acknowledged within %.1f s (%s); spooled, and the producer keeps retrying them with "
                "their original sequence numbers so that the broker writes them once",
                in_doubt,
                self._wait_budget_s(),
                errors[0] if errors else send_error or "no answer",
            )
            self._schedule_retry()
            return outcomes
        self._note_failure(errors[0] if errors else send_error)
        return [outcome if outcome is True else False for outcome in outcomes]

    def _wait_budget_s(self) -> float:
        budget = self.settings.delivery_timeout_ms / 1000 + 1
        if self._stopping.is_set():
            budget = min(budget, max(0.0, self._deadline - time.monotonic()))
        return budget

    def _note_failure(self, error: BaseException | None) -> None:
        """Start over with a fresh producer after a backoff: the simplest state to trust."""
        if isinstance(error, ClusterAuthorizationFailedError) and self.idempotent:
            log.warning("broker refuses idempotent writes (no IDEMPOTENT_WRITE permission); continuing without idempotence")
            self.idempotent = False
        log.warning("kafka delivery failed (%s); spooling until the broker is back", error or "not acknowledged in time")
        self._drop_producer()
        self._schedule_retry()

    # --- connection ------------------------------------------------------------------------

    def _ensure_producer(self) -> bool:
        """A connected producer, or False while the broker is away (retried with backoff)."""
        if self._producer is not None:
            return True
        if time.monotonic() < self._retry_at and not self._stopping.is_set():
            return False  # while stopping, one more attempt beats waiting out the backoff
        try:
            self._ensure_topic()
            self._producer = self._new_producer()
        except (KafkaError, OSError) as error:
            log.warning("kafka broker %s unavailable (%s); retrying in %.1f s", self.settings.bootstrap_servers, error, self._backoff_s)
            self._schedule_retry()
            return False
        log.info("kafka producer connected to %s (idempotent: %s)", self.settings.bootstrap_servers, self.idempotent)
        self._backoff_s = 0.5
        return True

    def _schedule_retry(self) -> None:
        self._failed_while_stopping = self._stopping.is_set()
        self._retry_at = time.monotonic() + self._backoff_s
        self._backoff_s = min(self._backoff_s * 2, 10.0)

    def _client_options(self) -> dict[str, Any]:
        return client_options(self.settings)

    def _new_producer(self) -> KafkaProducer:
        """Idempotent where the broker supports it; otherwise one request in flight keeps order."""
        if self.idempotent is not False:
            try:
                producer = KafkaProducer(**producer_options(self.settings, idempotent=True))
                self.idempotent = True
                return producer
            except KafkaConfigurationError as error:
                log.warning("idempotent producer not possible (%s); using one request in flight", error)
                self.idempotent = False
        return KafkaProducer(**producer_options(self.settings, idempotent=False))

    def _ensure_topic(self) -> None:
        admin = KafkaAdminClient(**self._client_options())
        try:
            if self.settings.topic in admin.list_topics():
                return
            topic = NewTopic(self.settings.topic, self.settings.partitions, self.settings.replication_factor)
            admin.create_topics([topic])
            log.info("created topic %s with %d partitions", self.settings.topic, self.settings.partitions)
        except TopicAlreadyExistsError:
            pass  # another instance created it between our look and our create
        finally:
            admin.close()

    def _drop_producer(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                producer.close(timeout=0)  # fails what it was still retrying: the spool has it
            except KafkaTimeoutError:
                # kafka-python's close() flushes first and raises while records are unacknowledged,
                # before it stops its sender thread (dpkp/kafka-python#2537); abandoning them has no
                # public call, so stop the sender as close() would have: it fails those records.
                producer._sender.force_close()
        if self._head_sent is not None and not self._head_sent.settled():
            self._head_sent = None

    # --- spool -----------------------------------------------------------------------------

    def _spool_items(self, items: list[_Outgoing]) -> int:
        """Append to the spool (partials left out when it is nearly full); how many were written."""
        if not items:
            return 0
        assert self._spool is not None
        if self._spool.size_bytes >= PARTIALS_HIGH_WATER * self._spool.max_bytes:
            kept = [item for item in items if not item.supersedable]
            self.dropped += len(items) - len(kept)
            items = kept
        try:
            self._spool.append([item.record for item in items])
            self.spooled += len(items)
        except SpoolFull as error:
            self.dropped += len(items)
            if not self._spool_full_logged:
                log.error("kafka spool full, dropping new events until it drains: %s", error)
                self._spool_full_logged = True
            items = []
        self._update_spool_counters()
        self._kept(items)
        return len(items)

    # --- ledger ----------------------------------------------------------------------------

    def _leaving(self, items: list[_Outgoing]) -> None:
        if self._ledger is not None:
            self._tell_ledger(self._ledger.leaving, items)

    def _kept(self, items: list[_Outgoing]) -> None:
        if self._ledger is not None:
            self._tell_ledger(self._ledger.kept, items)
        if self._on_delivered is not None and items:
            self._on_delivered([item.event for item in items])

    def _tell_ledger(self, hook: Callable[[Sequence[TranscriptEvent]], None], items: list[_Outgoing]) -> None:
        """A ledger that cannot write (a full disk) must not stop delivery: its failure is logged."""
        if items:
            try:
                hook([item.event for item in items])
            except OSError as error:
                self._per_event_log.log(logging.ERROR, "ledger", "kafka: the delivery ledger failed (%s); delivering anyway", error)

    def _update_spool_counters(self) -> None:
        assert self._spool is not None
        self.spool_size = len(self._spool)
        self.spool_bytes = self._spool.size_bytes
        if self.spool_bytes < PARTIALS_HIGH_WATER * self._spool.max_bytes:
            self._spool_full_logged = False
