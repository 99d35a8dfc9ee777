"""Beyond one host: the shipped Kamailio dispatcher in front of several daemons, Kafka behind them.

Everything is a real process on 127.0.0.1: a Tansu broker, `asr-stream serve` replicas (Whisper
tiny.en on ONNX Runtime), Kamailio running deploy/kamailio/kamailio.cfg with its defines pointed at
a temporary directory (1 s OPTIONS probes, 1 s transaction timeout), and SIPp placing the calls
through Kamailio, streaming G.711 speech. Which replica took a call is read from the 200 OK that
SIPp received (its Contact, and the SDP's RTP port inside that replica's port range) and from the
replicas' own /metrics; what the consumer sees is read back from Kafka.

Replica "asr-a" takes one call at a time (`sip.max_calls: 1`), so a second concurrent call that
the dispatcher offers it is refused with 503 and must fail over. The tests share one cluster and
run in file order (one adds a third replica, the last stops one); each also passes on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from kafka import KafkaConsumer
from kafka.partitioner.default import murmur2
from kafka_fixtures import consume_all
from sip_cluster import Kamailio, Replica, write_dispatcher_list
from test_daemon_e2e import assert_call_lifecycle, clip
from test_workorders_kafka import read_drafts, running, settings_for, split_between, wait_until

from asr_stream.devtools.local_broker import LocalBroker, free_tcp_port
from asr_stream.devtools.sipp import SippRun, place_call, run_sipp, telephone_pcm, write_call

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

SCENARIOS = Path(__file__).parent / "sipp"
SHORT_CLIP = "en_ljspeech_LJ001-0002"  # 1.9 s, one utterance
LONG_CLIP = "en_librivox_sense_and_sensibility_01_austen_64kb-0870"  # 7.1 s


@dataclass
class Cluster:
    broker: LocalBroker
    topic: str
    replicas: list[Replica]
    kamailio: Kamailio
    workdir: Path

    @property
    def full_replica(self) -> Replica:
        return self.replicas[0]

    def replica_at(self, sip_port: int) -> Replica:
        (replica,) = [r for r in self.replicas if r.sip_port == sip_port]
        return replica


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    workdir = tmp_path_factory.mktemp("scale-out")
    topic = f"transcripts-{uuid.uuid4().hex[:8]}"
    rtp_base = free_tcp_port() // 2 * 2
    with contextlib.ExitStack() as stack:
        broker = LocalBroker()
        broker.start()
        stack.callback(broker.stop, timeout_s=3)
        replicas = [
            Replica.create("asr-a", workdir / "a", broker.bootstrap_servers, topic, rtp_base, max_calls=1),
            Replica.create("asr-b", workdir / "b", broker.bootstrap_servers, topic, rtp_base + 200),
        ]
        stack.callback(stop_all, replicas)  # the list as it is at the end: a test may add one
        for replica in replicas:
            replica.start()
        kamailio = Kamailio.start(workdir / "kamailio", replicas)
        stack.callback(kamailio.stop)
        yield Cluster(broker, topic, replicas, kamailio, workdir)


def stop_all(replicas: list[Replica]) -> None:
    for replica in replicas:
        if replica.process is not None:
            replica.stop()


# --- what the caller saw -----------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """A 200 OK to an INVITE as SIPp received it (through Kamailio)."""

    call_id: str
    contact_port: int
    media_address: str
    media_ports: tuple[int, ...]


def answers(run: SippRun) -> dict[str, Answer]:
    """Every Call-ID's 200 OK to its INVITE, from SIPp's message trace (retransmissions collapse)."""
    found = {}
    for block in re.split(r"^-{20,} .*$", run.messages, flags=re.MULTILINE):
        if "message received" not in block or not re.search(r"^SIP/2.0 200 ", block, re.MULTILINE):
            continue
        if not re.search(r"^CSeq: \d+ INVITE", block, re.MULTILINE):
            continue
        call_id = re.search(r"^Call-ID: (\S+)", block, re.MULTILINE).group(1)
        contact_port = int(re.search(r"^Contact: <sip:[^>]*?:(\d+)[;>]", block, re.MULTILINE).group(1))
        media_address = re.search(r"^c=IN IP4 (\S+)", block, re.MULTILINE).group(1)
        media_ports = tuple(int(port) for port in re.findall(r"^m=audio (\d+) ", block, re.MULTILINE))
        found[call_id] = Answer(call_id, contact_port, media_address, media_ports)
    return found


def routed(cluster: Cluster, run: SippRun) -> dict[str, Replica]:
    """Which replica answered each call; its SDP must name that replica's own RTP ports."""
    routes = {}
    for answer in answers(run).values():
        replica = cluster.replica_at(answer.contact_port)
        assert answer.media_address == "127.0.0.1"
        assert answer.media_ports and all(replica.owns_rtp_port(port) for port in answer.media_ports), (answer, replica.config["rtp"])
        routes[answer.call_id] = replica
    return routes


def failovers(cluster: Cluster) -> dict[str, list[str]]:
    """Call-ID -> "<replica URI> <status>" for each failure Kamailio's failure_route retried."""
    result: dict[str, list[str]] = {}
    for uri, status, call_id in re.findall(r"asr-stream replica (\S+) answered (\d+) for (\S+): trying the next one", cluster.kamailio.log):
        result.setdefault(call_id, []).append(f"{uri} {status}")
    return result


# --- what the consumer saw ---------------------------------------------------------------------


def records_of_calls(cluster: Cluster, call_ids: set[str], timeout_s: float = 60) -> list:
    """Every record of the topic (all partitions, from the start) once each call in `call_ids` has
    its call.ended."""

    def all_ended(records) -> bool:
        ended = {json.loads(r.value)["call_id"] for r in records if json.loads(r.value)["event"] == "call.ended"}
        return call_ids <= ended

    records = consume_all(cluster.broker.bootstrap_servers, cluster.topic, timeout_s=timeout_s, done=all_ended)
    assert all_ended(records), f"calls without call.ended: {call_ids - {json.loads(r.value)['call_id'] for r in records}}"
    return records


def events_of(records: list, call_id: str) -> list[dict]:
    """One call's events in the order of its partition's offsets (its production order)."""
    mine = sorted((r for r in records if r.key == call_id.encode()), key=lambda r: (r.partition, r.offset))
    return [json.loads(r.value) for r in mine]


async def place_short_calls(cluster: Cluster, workdir: Path, calls: int) -> SippRun:
    wav, _ = clip(SHORT_CLIP)
    return await place_call(cluster.kamailio.target, wav, workdir, calls=calls)


# --- the tests ---------------------------------------------------------------------------------


async def test_calls_are_spread_over_both_replicas_with_media_straight_to_each(cluster: Cluster, tmp_path: Path) -> None:
    packets_before = [replica.metric("asr_rtp_packets_total") for replica in cluster.replicas]
    run = await place_short_calls(cluster, tmp_path, calls=2)
    routes = routed(cluster, run)
    assert sorted(r.name for r in routes.values()) == ["asr-a", "asr-b"], "the call-load algorithm put both calls on one replica"
    assert not set(routes) & set(failovers(cluster)), "a replica refused a call it had room for"
    # Kamailio relays no media: each replica's own RTP ports received the whole of its call.
    packets_per_call = telephone_pcm(clip(SHORT_CLIP)[0]).shape[0] // 160
    for replica, before in zip(cluster.replicas, packets_before):
        assert replica.metric("asr_rtp_packets_total") - before >= 0.95 * packets_per_call, replica.name
    records = await asyncio.to_thread(records_of_calls, cluster, set(routes))
    for call_id in routes:
        events = events_of(records, call_id)
        assert_call_lifecycle(events, call_id)
        assert events[-1]["end_reason"] == "hangup", "the caller's BYE did not reach the replica through Kamailio"


async def test_a_siprec_session_passes_through_to_one_replica(cluster: Cluster, tmp_path: Path) -> None:
    run = await run_sipp(cluster.kamailio.target, ["-sf", str(SCENARIOS / "siprec.xml")], tmp_path)
    assert run.returncode == 0, run.explain()
    (call_id,) = routed(cluster, run)  # answered by one replica, on its own RTP ports
    (answer,) = answers(run).values()
    assert len(answer.media_ports) == 2, "both recorded streams must be answered on the replica's own ports"
    records = await asyncio.to_thread(records_of_calls, cluster, {call_id})
    events = events_of(records, call_id)
    started = events[0]
    assert started["event"] == "call.started"
    assert sorted(channel["label"] for channel in started["channels"]) == ["agent", "caller"], started["channels"]
    assert events[-1]["event"] == "call.ended" and events[-1]["end_reason"] == "hangup"


async def test_a_full_replica_answers_503_and_the_call_fails_over(cluster: Cluster, tmp_path: Path) -> None:
    # Four overlapping calls: the call-load algorithm offers asr-a (max_calls 1) a second call at
    # the latest by the fourth, which asr-a refuses with 503 and Kamailio retries on asr-b.
    run = await place_short_calls(cluster, tmp_path, calls=4)  # raises unless all four were answered
    routes = routed(cluster, run)
    assert len(routes) == 4
    assert sorted(r.name for r in routes.values()) == ["asr-a", "asr-b", "asr-b", "asr-b"]
    retried = {call_id: tries for call_id, tries in failovers(cluster).items() if call_id in routes}
    assert retried, "no call was offered to the full replica first"
    for call_id, tries in retried.items():
        assert tries == [f"{cluster.full_replica.uri} 503"], tries
        assert routes[call_id].name == "asr-b"


async def test_every_call_keeps_to_one_partition_in_order(cluster: Cluster, tmp_path: Path) -> None:
    run = await place_short_calls(cluster, tmp_path, calls=3)
    routes = routed(cluster, run)
    assert {r.name for r in routes.values()} == {"asr-a", "asr-b"}, "both replicas must produce"
    records = await asyncio.to_thread(records_of_calls, cluster, set(routes))
    consumer = KafkaConsumer(bootstrap_servers=cluster.broker.bootstrap_servers)
    try:
        partitions = sorted(consumer.partitions_for_topic(cluster.topic))
    finally:
        consumer.close()
    assert partitions == [0, 1, 2, 3], "the replicas create the topic with kafka.partitions = 4"
    # Every call of every test so far, from both replicas.
    call_ids = {record.key.decode() for record in records}
    for call_id in call_ids:
        used = {record.partition for record in records if record.key == call_id.encode()}
        # The Java client's partitioner too: murmur2 of the key, so any producer agrees.
        assert used == {(murmur2(call_id.encode()) & 0x7FFFFFFF) % len(partitions)}, (call_id, used)
        assert_call_lifecycle(events_of(records, call_id), call_id)
    print(f"\n{len(call_ids)} calls over partitions {sorted({r.partition for r in records})}")


async def test_two_workorders_consumers_split_the_replicas_calls_and_draft_each_once(cluster: Cluster, tmp_path: Path) -> None:
    """Behind the replicas: one consumer group over the 4-partition topic drafts every call exactly once."""
    run = await place_short_calls(cluster, tmp_path, calls=3)
    assert {r.name for r in routed(cluster, run).values()} == {"asr-a", "asr-b"}
    records = await asyncio.to_thread(records_of_calls, cluster, set(routed(cluster, run)))
    ended = {record.key.decode() for record in records if json.loads(record.value)["event"] == "call.ended"}
    settings = settings_for(cluster.broker, cluster.topic, group=f"drafts-{uuid.uuid4().hex[:6]}")

    def draft_everything() -> tuple[list[dict], tuple[int, int]]:
        with running(settings) as first, running(settings) as second:
            wait_until(split_between(first, second, 4), 20, "the group to split the partitions")
            drafts = read_drafts(cluster.broker.bootstrap_servers, settings.out_topic, expected=len(ended))
            return drafts, (first.drafts_published, second.drafts_published)

    drafts, counts = await asyncio.to_thread(draft_everything)
    assert sorted(draft["call_id"] for draft in drafts) == sorted(ended), "each ended call drafted exactly once"
    # The first member drafts the backlog alone until the second joins; together they publish each call once.
    assert sum(counts) == len(ended), counts


async def test_kamcmd_reload_adds_a_replica_that_takes_calls(cluster: Cluster, tmp_path: Path) -> None:
    base = cluster.replicas[-1].config["rtp"]["port_range"][1] + 1
    added = Replica.create("asr-c", cluster.workdir / "c", cluster.broker.bootstrap_servers, cluster.topic, base)
    cluster.replicas.append(added)  # the fixture stops it with the others
    added.start()
    write_dispatcher_list(cluster.workdir / "kamailio" / "dispatcher.list", cluster.replicas)
    cluster.kamailio.kamcmd("dispatcher.reload")
    cluster.kamailio.wait_for_states({replica.uri: "A" for replica in cluster.replicas}, timeout_s=15)
    run = await place_short_calls(cluster, tmp_path, calls=3)
    assert sorted(r.name for r in routed(cluster, run).values()) == ["asr-a", "asr-b", "asr-c"]


async def test_a_stopped_replica_ends_its_calls_is_probed_out_and_comes_back(cluster: Cluster, tmp_path: Path) -> None:
    wav, _ = clip(LONG_CLIP)
    scenario = write_call(telephone_pcm(wav), tmp_path / "long")
    await asyncio.to_thread(poll, lambda: not busy(cluster.replicas), 60, "earlier calls finalised")
    call = asyncio.create_task(run_sipp(cluster.kamailio.target, ["-sf", str(scenario)], tmp_path / "long", timeout_s=40))
    try:
        await asyncio.to_thread(poll, lambda: busy(cluster.replicas), 20, "a replica took the call")
        (victim,) = busy(cluster.replicas)
        await asyncio.sleep(2)  # mid-speech
        assert await asyncio.to_thread(victim.stop, signal.SIGTERM) == 0, "the drain did not finish cleanly"
    finally:
        run = await call
    # The replica hung up through Kamailio (the caller got its BYE) and told the consumer why.
    ((call_id, answered_by),) = routed(cluster, run).items()
    assert answered_by is victim
    assert re.search(r"message received[^\n]*\n\nBYE sip:", run.messages), run.explain()
    records = await asyncio.to_thread(records_of_calls, cluster, {call_id})
    events = events_of(records, call_id)
    assert_call_lifecycle(events, call_id)
    assert events[-1]["end_reason"] == "shutdown"

    # OPTIONS probes take the stopped replica out of the set; new calls go to the others at once.
    cluster.kamailio.wait_for_states({victim.uri: "I"}, timeout_s=15)
    assert f"asr-stream replica {victim.uri} is down" in cluster.kamailio.log
    survivors = [replica for replica in cluster.replicas if replica is not victim]
    for attempt in range(2):
        routes = routed(cluster, await place_short_calls(cluster, tmp_path / f"after-{attempt}", calls=1))
        assert all(replica in survivors for replica in routes.values())
        assert not set(routes) & set(failovers(cluster)), "a call was still offered to the stopped replica"

    # Started again at the same address, it answers the probes and rejoins the set.
    victim.start()
    cluster.kamailio.wait_for_states({replica.uri: "A" for replica in cluster.replicas}, timeout_s=15)
    assert f"asr-stream replica {victim.uri} is up" in cluster.kamailio.log


def busy(replicas: list[Replica]) -> list[Replica]:
    """The replicas with a call not yet ended (call.ended comes after the call's last final)."""
    return [replica for replica in replicas if replica.metric("asr_calls_active") > 0]


def poll(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        time.sleep(0.1)
