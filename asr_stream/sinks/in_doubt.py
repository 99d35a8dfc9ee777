"""Sends in doubt: what the Kafka sink knows of records it sent and spooled without an acknowledgement.

A batch the broker did not acknowledge in time is spooled (only the spool survives a crash) and
left to the idempotent producer, which keeps retrying it with its original producer id and
sequence numbers, so the broker writes it once (sinks/kafka.py). Once the producer has an answer
for each record, `SpoolHeadSent` says which of the spool's first records the replay must skip.

A retry answered "duplicate" *with* an offset (what Kafka does for a batch it holds) is believed.
One answered DUPLICATE_SEQUENCE_NUMBER without an offset is looked up in the partition first
(`find_in_log`): Tansu gives that answer, and after a crash of its own it gave it for a batch
whose offset it then reused, so believing it lost a record (tests/test_kafka_sink.py, the broker
restart test). Reading back is the one check that holds whatever the broker.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError
from kafka.producer.future import FutureRecordMetadata

from asr_stream.sinks.spool import SpoolRecord

log = logging.getLogger(__name__)

#: What a send came to, per record: acknowledged (True), not written (False), or still being
#: retried by the producer with its original sequence numbers (its future: in doubt).
Outcome: TypeAlias = bool | FutureRecordMetadata


@dataclass(frozen=True)
class SpoolHeadSent:
    """What is known of the spool's first records from sends that were not all acknowledged in time.

    `keys[i]`, `outcomes[i]` describe the i-th oldest spooled record. Once no outcome is in doubt,
    `delivered()` names the records the replay must skip: those written, as long as every earlier
    record of the same key was written too (a call's events must not overtake each other, so after
    a record of a call that must be sent again, that call's later ones are sent again as well).
    """

    keys: list[bytes]
    outcomes: list[Outcome]

    def settled(self) -> bool:
        return all(not isinstance(outcome, FutureRecordMetadata) or outcome.is_done for outcome in self.outcomes)

    def unconfirmed(self) -> dict[int, TopicPartition]:
        """Positions the broker called duplicates without saying where they are: to be looked up."""
        return {
            position: outcome.value.topic_partition
            for position, outcome in enumerate(self.outcomes)
            if isinstance(outcome, FutureRecordMetadata) and outcome.succeeded() and outcome.value.offset < 0
        }

    def delivered(self, confirmed: set[int]) -> set[int]:
        """`confirmed`: the `unconfirmed()` positions found in the log."""
        resent_keys: set[bytes] = set()
        delivered = set()
        for position, (key, outcome) in enumerate(zip(self.keys, self.outcomes, strict=True)):
            if isinstance(outcome, FutureRecordMetadata):
                written = outcome.succeeded() and (outcome.value.offset >= 0 or position in confirmed)
            else:
                written = outcome
            if written and key not in resent_keys:
                delivered.add(position)
            else:
                resent_keys.add(key)
        return delivered


def find_in_log(
    client_options: Mapping[str, Any],
    start_offsets: Mapping[TopicPartition, int],
    wanted: Mapping[int, tuple[TopicPartition, SpoolRecord]],
    timeout_s: float,
) -> set[int]:
    """Which of `wanted` (position -> partition, record) its partition holds now, byte for byte.

    Each partition is read from `start_offsets` (one past the highest offset the broker
    acknowledged to this producer before: a record sent later cannot be earlier) up to its high
    watermark, what consumers can read, within `timeout_s` per partition. A record not found, or
    whose partition has no start offset, is to be sent again: a possible duplicate, never a loss.
    Records are unique (each carries its emission time and revision), so equal bytes are the same
    event.
    """
    found: set[int] = set()
    by_partition: dict[TopicPartition, dict[tuple[bytes, bytes], int]] = {}
    for position, (partition, record) in wanted.items():
        if partition in start_offsets:
            by_partition.setdefault(partition, {})[(record.key, record.value)] = position
    if not by_partition:
        return found
    consumer: KafkaConsumer | None = None
    try:
        consumer = KafkaConsumer(**client_options, enable_auto_commit=False, fetch_max_wait_ms=100)
        for partition, positions in by_partition.items():
            consumer.assign([partition])
            consumer.seek(partition, start_offsets[partition])
            deadline = time.monotonic() + timeout_s
            while positions and time.monotonic() < deadline:
                for record in consumer.poll(timeout_ms=100).get(partition, []):
                    if (record.key, record.value) in positions:
                        found.add(positions.pop((record.key, record.value)))
                high_watermark = consumer.highwater(partition)
                if high_watermark is not None and consumer.position(partition) >= high_watermark:
                    break
    except KafkaError as error:
        log.warning("kafka: could not read back %d events in doubt (%s); sending them again", len(wanted) - len(found), error)
    finally:
        if consumer is not None:
            consumer.close()
    log.info("kafka: %d of %d events answered as duplicates without an offset were found in the log", len(found), len(wanted))
    return found
