"""`asr-stream workorders`: a consumer-group member that turns finished calls into work-order drafts.

Guarantees (docs/workorders.md has the long form):

* one draft per call on the drafts topic, key = call_id, published when `call.ended` arrives
  (partials ignored, redelivered finals dropped, all channels merged in time order);
* offsets are committed only after the broker acknowledged (acks=all) every draft of the records
  below them, and never past the first event of a call that is still open: a consumer that
  crashes, restarts or loses a partition in a rebalance re-reads every open call whole;
* redrafting after such a crash is harmless: a draft is a pure function of its call's events
  (draft.py), so the copy is byte-identical with the same `work_order_id`;
* a record that is not a usable transcript event (not JSON, unknown schema, invalid) is logged
  with its partition and offset and skipped; it never stops the consumer.

Threading: kafka-python is blocking; `run` owns the consumer and the producer on the calling
thread. kafka-python calls the rebalance listener on its IO thread, but only while this thread
waits inside poll() or close(), so the listener and the record loop never touch the partition
state at the same time.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata
from kafka.util import ensure_valid_topic_name

from asr_stream.errors import OperatorError
from asr_stream.transcript.events import TranscriptEvent
from asr_stream.workorders.assembly import PartitionCalls
from asr_stream.workorders.draft import build_draft, draft_json
from asr_stream.workorders.records import UnusableRecord, decode_record
from asr_stream.workorders.rules import Rules

log = logging.getLogger(__name__)


class WorkOrderError(OperatorError):
    """The consumer cannot start (no broker, a bad topic name): the operator's to fix."""


@dataclass(frozen=True, kw_only=True)
class WorkOrderSettings:
    bootstrap_servers: str
    topic: str = "asr.transcripts"
    out_topic: str = "asr.workorders"
    group_id: str = "asr-stream-workorders"
    session_timeout_ms: int = 10_000
    request_timeout_ms: int = 5_000
    poll_timeout_ms: int = 500
    abandon_after: timedelta = timedelta(hours=2)

    def __post_init__(self) -> None:
        for name in (self.topic, self.out_topic):
            try:
                ensure_valid_topic_name(name)
            except ValueError as error:
                raise WorkOrderError(str(error)) from error
        if self.topic == self.out_topic:
            raise WorkOrderError(f"the drafts need a topic of their own, not the transcript topic {self.topic!r}")
        if self.abandon_after <= timedelta(0):
            raise WorkOrderError("the abandon time must be positive")


class WorkOrderConsumer(ConsumerRebalanceListener):
    """Consumes transcript events as a group member and publishes one draft per call.

    Its own rebalance listener: the calls read from a partition live exactly as long as this
    member owns it; a partition's next owner re-reads it from the committed offset.

    Counters are plain attributes (read by tests and logs): drafts_published, records_skipped.
    `assigned` is a snapshot of the partitions this member owns, safe to read from any thread.
    """

    def __init__(self, settings: WorkOrderSettings, rules: Rules | None) -> None:
        self.settings = settings
        self.rules = rules
        self.drafts_published = 0
        self.records_skipped = 0
        self.assigned: frozenset[TopicPartition] = frozenset()
        self._partitions: dict[TopicPartition, PartitionCalls] = {}
        self._revoked: dict[TopicPartition, PartitionCalls] = {}  # during a rebalance
        self._consumer: KafkaConsumer | None = None
        self._producer: KafkaProducer | None = None

    def run(self, stop: threading.Event) -> None:
        """Consume until `stop` is set; then leave the group. Raises WorkOrderError if no broker."""
        self._consumer = self._connect()
        try:
            while not stop.is_set():
                self._process(self._consumer.poll(timeout_ms=self.settings.poll_timeout_ms), stop)
        finally:
            self._consumer.close(autocommit=False)
            self._drop_producer()

    # --- the record loop -------------------------------------------------------------------

    def _process(self, batch: Mapping[TopicPartition, list[ConsumerRecord]], stop: threading.Event) -> None:
        drafts: list[dict[str, Any]] = []
        for partition, records in batch.items():
            calls = self._partitions[partition]
            for record in records:
                for closed in calls.add(record.offset, self._event_of(record)):
                    drafts.append(build_draft(closed, self.rules))
        backoff_s = 0.5
        while drafts and not self._publish(drafts):
            if stop.wait(backoff_s):
                return  # nothing committed: a restart re-reads these calls
            backoff_s = min(backoff_s * 2, 10.0)
        self._commit()

    def _event_of(self, record: ConsumerRecord) -> TranscriptEvent | None:
        try:
            return decode_record(record.value)
        except UnusableRecord as error:
            self.records_skipped += 1
            log.warning("skipping record %s[%d]@%d: %s", record.topic, record.partition, record.offset, error)
            return None

    def _publish(self, drafts: list[dict[str, Any]]) -> bool:
        """Send the drafts and wait until the broker acknowledged all of them (acks=all)."""
        try:
            producer = self._ensure_producer()
            futures = [producer.send(self.settings.out_topic, key=draft["call_id"].encode(), value=draft_json(draft)) for draft in drafts]
            producer.flush(timeout=self.settings.request_timeout_ms / 1000 * 3)
            for future in futures:
                future.get(timeout=0)
        except KafkaError as error:
            log.warning("%d draft(s) not acknowledged (%s); retrying, offsets stay uncommitted", len(drafts), error)
            self._drop_producer()
            return False
        self.drafts_published += len(drafts)
        for draft in drafts:
            log.info(
                "published work order %s for call %s: %s, %d segment(s), %d contact number(s)",
                draft["work_order_id"],
                draft["call_id"],
                draft["category"],
                len(draft["transcript"]),
                len(draft["contact_numbers"]),
                extra={"call_id": draft["call_id"]},
            )
        return True

    def _commit(self) -> None:
        """Commit, per partition, the first offset a new owner would need (only when it moved)."""
        assert self._consumer is not None
        offsets = {}
        for partition, calls in self._partitions.items():
            offset = calls.commit_offset()
            if offset is not None and offset != calls.committed:
                offsets[partition] = OffsetAndMetadata(offset, "", -1)
        if not offsets:
            return
        try:
            self._consumer.commit(offsets)
        except KafkaError as error:  # CommitFailedError after an eviction, or the broker is away
            # Safe to leave: the offsets stay where they were, so more is re-read, never less.
            log.warning("offset commit failed (%s); it is retried after the next batch", error)
            return
        for partition, meta in offsets.items():
            self._partitions[partition].committed = meta.offset

    # --- group membership ------------------------------------------------------------------

    # kafka-python 3 keeps the fetch position of a partition that stays assigned across a
    # rebalance (assign_from_subscribed preserves its state), so the calls read from it stay too:
    # a revoked partition's calls wait in `_revoked` until on_partitions_assigned says whether it
    # came back. No commit is needed here: every batch was committed (as far as open calls allow)
    # before the next poll.

    def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        self._revoked.update((partition, self._partitions.pop(partition)) for partition in revoked if partition in self._partitions)
        self.assigned = frozenset(self._partitions)

    def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        for partition in assigned:
            kept = self._revoked.pop(partition, None)
            self._partitions[partition] = kept if kept is not None else PartitionCalls(self.settings.abandon_after)
        for partition, calls in self._revoked.items():
            if calls.open_calls:
                log.info("gave up %s with %d open call(s); its new owner re-reads them", partition, calls.open_calls)
        self._revoked.clear()
        self.assigned = frozenset(self._partitions)
        log.info("assigned %s", sorted(f"{p.topic}[{p.partition}]" for p in self.assigned))

    def on_partitions_lost(self, lost: Iterable[TopicPartition]) -> None:
        """Evicted from the group: another member may have moved these partitions on, and
        kafka-python restarts them from the committed offset, so nothing read from them is kept."""
        for partition in lost:
            self._partitions.pop(partition, None)
        self.assigned = frozenset(self._partitions)
        log.warning("lost %s (evicted from the group); re-reading from the committed offsets if they come back", sorted(map(str, lost)))

    # --- connections -----------------------------------------------------------------------

    def _client_options(self) -> dict[str, Any]:
        return {
            "bootstrap_servers": self.settings.bootstrap_servers,
            "client_id": "asr-stream-workorders",
            "request_timeout_ms": self.settings.request_timeout_ms,
            "bootstrap_timeout_ms": self.settings.request_timeout_ms,
            "reconnect_backoff_max_ms": 2_000,
        }

    def _connect(self) -> KafkaConsumer:
        # kafka-python logs every refused bootstrap attempt as an ERROR; when none succeeds the
        # operator gets one line from us instead, so its logger is silenced for the bootstrap.
        kafka_logger = logging.getLogger("kafka")
        level = kafka_logger.level
        kafka_logger.setLevel(logging.CRITICAL)
        try:
            consumer = KafkaConsumer(
                **self._client_options(),
                group_id=self.settings.group_id,
                enable_auto_commit=False,
                auto_offset_reset="earliest",  # a new group drafts every call still on the topic
                session_timeout_ms=self.settings.session_timeout_ms,
                heartbeat_interval_ms=max(100, self.settings.session_timeout_ms // 3),
            )
        except KafkaError as error:  # kafka-python: "Unable to bootstrap from ..."
            raise WorkOrderError(f"no Kafka broker reachable at {self.settings.bootstrap_servers} ({error})") from error
        finally:
            kafka_logger.setLevel(level)
        consumer.subscribe([self.settings.topic], listener=self)
        log.info("consuming %s as group %s; drafts go to %s", self.settings.topic, self.settings.group_id, self.settings.out_topic)
        return consumer

    def _ensure_producer(self) -> KafkaProducer:
        if self._producer is None:
            # No idempotence: a producer retry can only duplicate a draft, which is harmless (same
            # id, same bytes), and brokers that withhold IDEMPOTENT_WRITE still take the drafts.
            self._producer = KafkaProducer(
                **self._client_options(), acks="all", enable_idempotence=False, max_block_ms=self.settings.request_timeout_ms
            )
        return self._producer

    def _drop_producer(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            producer.close(timeout=0)


def run_until_signalled(settings: WorkOrderSettings, rules: Rules | None) -> int:
    """The CLI's loop: consume until SIGTERM or SIGINT, then leave the group cleanly."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    WorkOrderConsumer(settings, rules).run(stop)
    return 0
