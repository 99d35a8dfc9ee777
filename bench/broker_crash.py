"""What the test broker keeps of acknowledged sends when it is killed mid-stream: why the Kafka sink
reads the log back for a "duplicate" answered without an offset (sinks/in_doubt.py).

Run by hand:  .venv/bin/python bench/broker_crash.py [--rounds 12] [--seed 1]

Tansu on S3 storage (moto on 127.0.0.1, as `durable_kafka_broker` in the tests) takes sends from
one producer with the sink's idempotent settings (acks=all, 5 requests in flight, retries for
`in_doubt_retry_ms`); each round it is SIGKILLed while sends are in flight, restarted on the same
port after a pause, and the producer is left to finish its retries. At the end every send the
producer reported written is looked up in the topic, split by its answer: an offset (a write, or
a duplicate the broker located), or none (DUPLICATE_SEQUENCE_NUMBER without an offset).
"""

from __future__ import annotations

import argparse
import collections
import logging
import random
import sys
import time
import uuid
from pathlib import Path

from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.producer.future import FutureRecordMetadata

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from kafka_fixtures import consume_all, s3_backed_broker  # tests/ is not a package: found through the path above

from asr_stream.devtools.local_broker import LocalBroker
from asr_stream.sinks.kafka import KafkaSettings, producer_options


def crash_round(broker: LocalBroker, topic: str, first: int, rng: random.Random) -> dict[bytes, FutureRecordMetadata]:
    """Sends in bursts until a random moment, SIGKILL, a pause, restart; returns each value's future once the producer is done."""
    producer = KafkaProducer(**producer_options(KafkaSettings(bootstrap_servers=broker.bootstrap_servers), idempotent=True))
    sent: dict[bytes, FutureRecordMetadata] = {}
    kill_at = time.monotonic() + rng.uniform(0.3, 1.5)
    number = first
    while time.monotonic() < kill_at:
        for _ in range(10):
            value = f"v{number}".encode()
            sent[value] = producer.send(topic, key=f"call-{number % 7}".encode(), value=value)
            number += 1
        time.sleep(0.01)
    broker.kill()
    time.sleep(rng.uniform(0.5, 3.0))
    broker.start()
    producer.flush(timeout=90)
    producer.close(timeout=5)
    return sent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if not 1 <= args.rounds <= 100:
        parser.error("--rounds is 1..100")
    rng = random.Random(args.seed)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's S3 server logs every request
    with s3_backed_broker() as broker:
        topic = f"crash-{uuid.uuid4().hex[:8]}"
        admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap_servers)
        admin.create_topics([NewTopic(topic, 3, 1)])
        admin.close()
        sent: dict[bytes, FutureRecordMetadata] = {}
        for _ in range(args.rounds):
            sent |= crash_round(broker, topic, len(sent), rng)
        written = {value: future.value for value, future in sent.items() if future.is_done and future.succeeded()}
        in_log = collections.Counter(record.value for record in consume_all(broker.bootstrap_servers, topic, len(written), 120))
    located = [value for value, metadata in written.items() if metadata.offset >= 0]
    unlocated = [value for value, metadata in written.items() if metadata.offset < 0]
    print(f"{args.rounds} crashes, {len(sent)} sends, {len(written)} reported written, {sum(in_log.values())} records read")
    print(f"  with an offset:    {len(located)}, of which not in the log {sum(value not in in_log for value in located)}")
    print(f"  without an offset: {len(unlocated)}, of which not in the log {sum(value not in in_log for value in unlocated)}")
    print(f"  values in the log more than once: {sum(count > 1 for count in in_log.values())}")


if __name__ == "__main__":
    main()
