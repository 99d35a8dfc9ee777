"""One /metrics for a daemon of several processes: children send snapshots, main merges them.

The "equivalent" of prometheus-client's multiprocess mode, chosen because that mode cannot serve
the daemon's collectors that read components at scrape time (scheduler queues, RTP receivers,
Kafka counters), and needs a shared directory of mmap files cleaned at every start. Instead each
child process (ingest worker, inference process) sends `snapshot()` of the families it feeds every
`SNAPSHOT_INTERVAL_S`, and once more before it exits; the main process keeps the latest per child
and `MergedCollector` shows its own series plus the children's, summed per (sample, labels), so
every metric name means what it means in a single process. Gauges that are a maximum
(`MAX_FAMILIES`) are merged by maximum.

A child that dies or restarts would take its counters back to zero and make the sum go down,
which Prometheus reads as a counter reset; so when a child goes, `retire()` folds its last counters
and histograms into a kept total (its gauges go with it).
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Metric
from prometheus_client.registry import Collector

#: How often a child sends its snapshot (a scrape sees children's series at most this old).
SNAPSHOT_INTERVAL_S = 1.0
#: Gauges whose merge is the largest value, not the sum.
MAX_FAMILIES = frozenset({"asr_rtp_jitter_max_ms"})
_CUMULATIVE = frozenset({"counter", "histogram", "summary"})

SampleKey = tuple[str, tuple[tuple[str, str], ...]]  # sample name, sorted labels


@dataclass
class Family:
    """One metric family as plain, picklable data."""

    name: str
    documentation: str
    type: str
    unit: str
    samples: dict[SampleKey, float]


def snapshot(registry: CollectorRegistry, prefixes: tuple[str, ...]) -> list[Family]:
    """The families of `registry` whose names start with one of `prefixes`."""
    return [family_of(metric) for metric in registry.collect() if metric.name.startswith(prefixes)]


def family_of(metric: Metric) -> Family:
    """`metric` as plain data, without its `_created` samples (a creation time cannot be summed)."""
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in metric.samples if not s.name.endswith("_created")}
    return Family(metric.name, metric.documentation, metric.type, metric.unit, samples)


def merge(into: dict[str, Family], families: Iterable[Family]) -> None:
    """Add `families` to `into` by name: matching samples summed (or maxed), new ones added."""
    for family in families:
        mine = into.get(family.name)
        if mine is None:
            into[family.name] = Family(family.name, family.documentation, family.type, family.unit, dict(family.samples))
            continue
        combine = max if family.name in MAX_FAMILIES else operator.add
        for key, value in family.samples.items():
            mine.samples[key] = combine(mine.samples[key], value) if key in mine.samples else value


class ChildSeries:
    """The latest snapshot of each child process, and the cumulative series of children gone."""

    def __init__(self) -> None:
        self._latest: dict[str, list[Family]] = {}
        self._retired: dict[str, Family] = {}

    def update(self, child: str, families: list[Family]) -> None:
        self._latest[child] = families

    def retire(self, child: str) -> None:
        """`child` ended: keep its counters and histograms, drop its gauges."""
        merge(self._retired, (family for family in self._latest.pop(child, []) if family.type in _CUMULATIVE))

    def families(self) -> Iterator[list[Family]]:
        yield list(self._retired.values())
        yield from self._latest.values()


class MergedCollector(Collector):
    """This process's registry with every child's series merged in; register it where /metrics reads."""

    def __init__(self, own: CollectorRegistry, children: ChildSeries) -> None:
        self._own = own
        self._children = children

    def collect(self) -> Iterator[Metric]:
        own = list(self._own.collect())
        remote: dict[str, Family] = {}
        for families in self._children.families():
            merge(remote, families)
        for metric in own:
            extra = remote.pop(metric.name, None)
            yield metric if extra is None else _to_metric(_with(metric, extra))
        for family in remote.values():
            yield _to_metric(family)


def _with(metric: Metric, extra: Family) -> Family:
    """`metric` of this process merged with the children's family of the same name."""
    merged = {metric.name: family_of(metric)}
    merge(merged, [extra])
    return merged[metric.name]


def _to_metric(family: Family) -> Metric:
    metric = Metric(family.name, family.documentation, family.type, family.unit)
    for (name, labels), value in family.samples.items():
        metric.add_sample(name, dict(labels), value)
    return metric
