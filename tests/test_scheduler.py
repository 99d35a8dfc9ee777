"""The batch scheduler's policy: batching, priorities, superseded partials, saturation."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import pytest

from asr_stream.inference.scheduler import BatchScheduler, Priority, SchedulerSettings, Shed


def _recording_engine(calls: list[list[str]], seconds_per_batch: float = 0.0):
    """An engine stand-in is the unit's own input here: the scheduler is tested for its policy."""

    def run(batch):
        calls.append(list(batch))
        time.sleep(seconds_per_batch)
        return [item.upper() for item in batch]

    return run


async def test_batches_requests_and_returns_each_result():
    calls: list[list[str]] = []
    scheduler = BatchScheduler(_recording_engine(calls), SchedulerSettings(max_batch=4, max_wait_s=0.05))
    await scheduler.start()
    try:
        results = await asyncio.gather(*(scheduler.submit(f"k{i}", f"item{i}", Priority.FINAL) for i in range(10)))
    finally:
        await scheduler.stop()
    assert results == [f"ITEM{i}" for i in range(10)]
    assert all(len(batch) <= 4 for batch in calls)
    assert len(calls) <= 4, calls  # batched, not one call per item


async def test_each_request_reports_its_queue_wait_as_its_batch_starts():
    """The second batch's requests waited for the first (0.6 s): `on_wait` tells which, and how long."""
    calls: list[list[str]] = []
    waits: list[tuple[Priority, float]] = []
    settings = SchedulerSettings(max_batch=2, max_wait_s=0.0, final_lane=False)
    scheduler = BatchScheduler(_recording_engine(calls, 0.6), settings, on_wait=lambda priority, s: waits.append((priority, s)))
    await scheduler.start()
    try:
        first = [asyncio.create_task(scheduler.submit(f"f{i}", f"final{i}", Priority.FINAL)) for i in range(2)]
        await asyncio.sleep(0.05)  # the first batch is running
        later = [scheduler.submit("f2", "final2", Priority.FINAL), scheduler.submit("p", "partial", Priority.PARTIAL)]
        await asyncio.gather(*first, *later)
    finally:
        await scheduler.stop()
    assert calls == [["final0", "final1"], ["final2", "partial"]]
    assert [priority for priority, _ in waits] == [Priority.FINAL, Priority.FINAL, Priority.FINAL, Priority.PARTIAL]
    assert all(wait < 0.1 for _, wait in waits[:2]) and all(wait >= 0.1 for _, wait in waits[2:])


async def test_finals_go_before_partials():
    calls: list[list[str]] = []
    scheduler = BatchScheduler(_recording_engine(calls), SchedulerSettings(max_batch=2, max_wait_s=0.05, final_lane=False))
    await scheduler.start()
    try:
        partials = [asyncio.create_task(scheduler.submit(f"p{i}", f"partial{i}", Priority.PARTIAL)) for i in range(2)]
        finals = [asyncio.create_task(scheduler.submit(f"f{i}", f"final{i}", Priority.FINAL)) for i in range(2)]
        await asyncio.gather(*partials, *finals)
    finally:
        await scheduler.stop()
    assert calls[0] == ["final0", "final1"]


async def test_newer_partial_supersedes_queued_one():
    calls: list[list[str]] = []
    scheduler = BatchScheduler(_recording_engine(calls), SchedulerSettings(max_batch=8, max_wait_s=0.1))
    await scheduler.start()
    try:
        first = asyncio.create_task(scheduler.submit("seg", "old", Priority.PARTIAL))
        await asyncio.sleep(0)
        second = asyncio.create_task(scheduler.submit("seg", "new", Priority.PARTIAL))
        with pytest.raises(Shed):
            await first
        assert await second == "NEW"
    finally:
        await scheduler.stop()
    assert ["old"] not in calls and all("old" not in batch for batch in calls)


async def test_batches_never_mix_buckets():
    calls: list[list[str]] = []
    scheduler = BatchScheduler(_recording_engine(calls), SchedulerSettings(max_batch=8, max_wait_s=0.05), bucket=len)
    await scheduler.start()
    try:
        await asyncio.gather(*(scheduler.submit(i, "x" * (1 + i % 2), Priority.FINAL) for i in range(6)))
    finally:
        await scheduler.stop()
    assert all(len({len(item) for item in batch}) == 1 for batch in calls)


async def test_slow_engine_saturates_and_sheds_partials():
    calls: list[list[str]] = []
    settings = SchedulerSettings(max_batch=1, max_wait_s=0.0, final_deadline_s=0.5, final_lane=False)  # one lane for both
    scheduler = BatchScheduler(_recording_engine(calls, 0.2), settings)
    await scheduler.start()
    try:
        finals = [asyncio.create_task(scheduler.submit(f"f{i}", f"f{i}", Priority.FINAL)) for i in range(4)]
        await asyncio.sleep(0.5)  # two batches done: the scheduler now knows a batch takes ~0.2 s
        assert scheduler.saturated
        with pytest.raises(Shed):
            await scheduler.submit("p", "partial", Priority.PARTIAL)
        assert await asyncio.gather(*finals) == ["F0", "F1", "F2", "F3"]  # finals are never shed
    finally:
        await scheduler.stop()
    assert not scheduler.saturated


async def test_engine_failure_reaches_every_caller_in_the_batch():
    def broken(batch):
        raise RuntimeError("engine fell over")

    scheduler = BatchScheduler(broken, SchedulerSettings(max_batch=4, max_wait_s=0.02))
    await scheduler.start()
    try:
        outcomes = await asyncio.gather(*(scheduler.submit(i, i, Priority.FINAL) for i in range(3)), return_exceptions=True)
    finally:
        await scheduler.stop()
    assert all(isinstance(o, RuntimeError) for o in outcomes)


async def test_saturation_clears_once_the_backlog_is_gone_even_if_batches_are_slow():
    """A batch slower than the deadline must not refuse calls forever once the queue is empty."""
    calls: list[list[str]] = []
    scheduler = BatchScheduler(_recording_engine(calls, 0.3), SchedulerSettings(max_batch=1, max_wait_s=0.0, final_deadline_s=0.2))
    await scheduler.start()
    try:
        await asyncio.gather(*(scheduler.submit(f"f{i}", f"f{i}", Priority.FINAL) for i in range(3)))
        await asyncio.sleep(0.05)
        assert scheduler.stats.ema_batch_s > scheduler.final_deadline_s
        assert not scheduler.saturated
    finally:
        await scheduler.stop()


async def test_a_final_does_not_wait_for_a_running_partial_batch():
    """With a final lane, a final submitted while a slow partial batch runs is answered before it ends."""
    started = asyncio.Event()
    loop = asyncio.get_running_loop()

    def engine(batch):
        if batch[0].startswith("partial"):
            loop.call_soon_threadsafe(started.set)
            time.sleep(0.5)
        return [item.upper() for item in batch]

    scheduler = BatchScheduler(engine, SchedulerSettings(max_batch=4, max_wait_s=0.0, final_lane=True))
    await scheduler.start()
    try:
        partial = asyncio.create_task(scheduler.submit("p", "partial", Priority.PARTIAL))
        await started.wait()
        assert await scheduler.submit("f", "final", Priority.FINAL) == "FINAL"
        assert not partial.done(), "the final waited for the partial batch"
        assert await partial == "PARTIAL"
    finally:
        await scheduler.stop()


PAIRS = (("final", Priority.FINAL), ("partial", Priority.PARTIAL))


async def test_finals_wait_for_company_as_long_as_their_lane_is_told_and_partials_do_not():
    """`final_max_wait_s` holds the finals' lane only: two finals 0.1 s apart share one batch, while
    two partials as far apart run as two (their lane keeps `max_wait_s`, here 0)."""
    calls: list[list[str]] = []
    settings = SchedulerSettings(max_batch=8, max_wait_s=0.0, final_max_wait_s=0.5)
    scheduler = BatchScheduler(_recording_engine(calls), settings)
    await scheduler.start()
    try:
        first = [asyncio.create_task(scheduler.submit(f"{kind}0", f"{kind}0", priority)) for kind, priority in PAIRS]
        await asyncio.sleep(0.1)
        second = [asyncio.create_task(scheduler.submit(f"{kind}1", f"{kind}1", priority)) for kind, priority in PAIRS]
        await asyncio.gather(*first, *second)
    finally:
        await scheduler.stop()
    assert ["final0", "final1"] in calls
    assert ["partial0"] in calls and ["partial1"] in calls


async def test_in_their_own_lane_partials_are_not_shed_for_slow_finals():
    """A slow final lane saturates admission, but partials (which cannot delay it) still run."""
    calls: list[list[str]] = []
    scheduler = BatchScheduler(_recording_engine(calls, 0.2), SchedulerSettings(max_batch=1, max_wait_s=0.0, final_deadline_s=0.5))
    await scheduler.start()
    try:
        finals = [asyncio.create_task(scheduler.submit(f"f{i}", f"f{i}", Priority.FINAL)) for i in range(4)]
        await asyncio.sleep(0.5)
        assert scheduler.saturated
        assert await scheduler.submit("p", "partial", Priority.PARTIAL) == "PARTIAL"
        assert await asyncio.gather(*finals) == ["F0", "F1", "F2", "F3"]
    finally:
        await scheduler.stop()


async def test_a_request_whose_caller_stopped_waiting_never_runs():
    """A cancelled submit leaves the queue unrun, and a later partial of the same key is served as usual."""
    calls: list[list[str]] = []
    scheduler = BatchScheduler(_recording_engine(calls, 1.0), SchedulerSettings(max_batch=1, max_wait_s=0.0))
    await scheduler.start()
    try:
        running = asyncio.create_task(scheduler.submit("p0", "busy", Priority.PARTIAL))
        running_final = asyncio.create_task(scheduler.submit("f0", "busy-final", Priority.FINAL))
        await asyncio.sleep(0.05)  # both lanes are busy
        withdrawn = asyncio.create_task(scheduler.submit("p1", "withdrawn", Priority.PARTIAL))
        final = asyncio.create_task(scheduler.submit("f1", "called-off", Priority.FINAL))
        await asyncio.sleep(0.01)
        withdrawn.cancel()
        final.cancel()
        assert (await running, await running_final) == ("BUSY", "BUSY-FINAL")
        assert await scheduler.submit("p1", "again", Priority.PARTIAL) == "AGAIN"
    finally:
        await scheduler.stop()
    assert ["called-off"] not in calls and ["withdrawn"] not in calls
    assert calls[-1] == ["again"]


@pytest.mark.parametrize("nice", [0, 5])
async def test_partial_threads_run_as_nice_as_configured_and_finals_never_nicer(nice: int):
    """`partial_nice` (0 by default since early finals, docs/benchmarks.md) lowers only the partial lane's threads."""
    priorities: dict[str, int] = {}

    def run(batch):
        priorities[batch[0]] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        return list(batch)

    scheduler = BatchScheduler(run, SchedulerSettings(partial_nice=nice))
    await scheduler.start()
    try:
        await asyncio.gather(scheduler.submit("p", "partial", Priority.PARTIAL), scheduler.submit("f", "final", Priority.FINAL))
    finally:
        await scheduler.stop()
    base = os.getpriority(os.PRIO_PROCESS, 0)
    assert priorities == {"partial": min(19, base + nice), "final": base}
    assert SchedulerSettings().partial_nice == 0
