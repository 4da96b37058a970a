"""The micro-batcher under fake async work (asyncio sleeps and a fake cost clock)."""

from __future__ import annotations

import asyncio
import contextvars
import time

import pytest

from tts_server.batching.batcher import (
    WAIT_EDGES_MS,
    BatcherClosed,
    BatchResultMismatch,
    MicroBatcher,
)


class FakeWork:
    """An async batch function that records each batch and echoes item * 10."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.batches: list[list[int]] = []
        self.delay_s = delay_s
        self.started: list[float] = []

    async def __call__(self, items: list[int]) -> list[int]:
        self.started.append(time.monotonic())
        self.batches.append(list(items))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        return [i * 10 for i in items]


class CostClock:
    """A per-task clock the fake work advances by its own cost only: concurrent fake runs do
    not inflate each other's measured time, as if each ran on its own worker."""

    def __init__(self) -> None:
        self._now: contextvars.ContextVar[float] = contextvars.ContextVar("now", default=0.0)

    def __call__(self) -> float:
        return self._now.get()

    def advance(self, seconds: float) -> None:
        self._now.set(self._now.get() + seconds)


async def test_max_batch_flushes_without_waiting_for_the_window():
    work = FakeWork()
    batcher = MicroBatcher(work, max_batch=3, max_wait_ms=5000, mode="on")
    started = time.monotonic()
    results = await asyncio.gather(*(batcher.submit(i) for i in range(6)))
    assert time.monotonic() - started < 2.0  # far below the 5 s window
    assert results == [i * 10 for i in range(6)]
    assert work.batches == [[0, 1, 2], [3, 4, 5]]
    assert batcher.stats.batch_sizes == {3: 2}


async def test_max_wait_ms_sends_a_partial_batch_after_the_window():
    work = FakeWork()
    batcher = MicroBatcher(work, max_batch=8, max_wait_ms=150, mode="on")
    started = time.monotonic()
    assert await asyncio.gather(batcher.submit(1), batcher.submit(2)) == [10, 20]
    elapsed = time.monotonic() - started
    assert 0.14 <= elapsed < 1.5
    assert work.batches == [[1, 2]]
    assert batcher.stats.wait_ms_max >= 140


async def test_first_arrival_opens_the_window():
    work = FakeWork()
    batcher = MicroBatcher(work, max_batch=8, max_wait_ms=300, mode="on")
    started = time.monotonic()
    first = asyncio.ensure_future(batcher.submit(1))
    await asyncio.sleep(0.15)
    second = asyncio.ensure_future(batcher.submit(2))
    await asyncio.gather(first, second)
    # Both left when the first arrival's window closed (~0.3 s), not 0.3 s after the second.
    assert work.batches == [[1, 2]]
    assert 0.28 <= work.started[0] - started < 0.44
    # A later arrival opens a new window of its own.
    await batcher.submit(3)
    assert work.batches == [[1, 2], [3]]


async def test_cancelled_callers_leave_the_batch_before_it_runs():
    work = FakeWork()
    batcher = MicroBatcher(work, max_batch=8, max_wait_ms=100, mode="on")
    tasks = [asyncio.ensure_future(batcher.submit(i)) for i in range(3)]
    await asyncio.sleep(0.02)
    tasks[1].cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(results[1], asyncio.CancelledError)
    assert results[0] == 0 and results[2] == 20
    assert work.batches == [[0, 2]]
    assert batcher.stats.cancelled == 1


async def test_a_batch_whose_callers_all_left_is_not_run():
    work = FakeWork()
    batcher = MicroBatcher(work, max_batch=8, max_wait_ms=50, mode="on")
    tasks = [asyncio.ensure_future(batcher.submit(i)) for i in range(2)]
    await asyncio.sleep(0.01)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.sleep(0.1)
    assert work.batches == []
    assert batcher.stats.cancelled == 2


async def test_wrong_result_count_fails_every_item_clearly():
    async def short(items):
        return items[:-1]

    batcher = MicroBatcher(short, max_batch=3, max_wait_ms=50, mode="on")
    results = await asyncio.gather(*(batcher.submit(i) for i in range(3)), return_exceptions=True)
    assert all(isinstance(r, BatchResultMismatch) for r in results)
    assert "returned 2 results for 3 items" in str(results[0])
    assert batcher.stats.mismatches == 1 and batcher.stats.failed == 3


async def test_an_exception_in_the_batch_reaches_every_caller():
    async def broken(items):
        raise RuntimeError("engine down")

    batcher = MicroBatcher(broken, max_batch=2, max_wait_ms=50, mode="on")
    results = await asyncio.gather(batcher.submit(1), batcher.submit(2), return_exceptions=True)
    assert [str(r) for r in results] == ["engine down", "engine down"]


async def test_buckets_and_keys_never_share_a_batch():
    work = FakeWork()
    batcher = MicroBatcher(
        work, max_batch=8, max_wait_ms=50, mode="on", bucket=lambda item: item // 100
    )
    await asyncio.gather(
        batcher.submit(1, key="a"),
        batcher.submit(2, key="a"),
        batcher.submit(150, key="a"),
        batcher.submit(3, key="b"),
    )
    assert sorted(sorted(b) for b in work.batches) == [[1, 2], [3], [150]]


async def test_forced_off_never_batches_and_does_not_wait():
    work = FakeWork()
    batcher = MicroBatcher(work, max_batch=8, max_wait_ms=5000, mode="off")
    started = time.monotonic()
    await asyncio.gather(*(batcher.submit(i) for i in range(4)))
    assert time.monotonic() - started < 2.0
    assert work.batches == [[0], [1], [2], [3]]
    assert batcher.stats.singles == 4 and batcher.stats.batches == 0


async def test_forced_on_batches_even_when_measured_slower():
    work = FakeWork()
    batcher = MicroBatcher(work, max_batch=4, max_wait_ms=50, mode="on", min_samples=1)
    batcher.observe((None, 0), 4, 4.0)  # 1 s per item batched
    batcher.observe((None, 0), 1, 0.1)  # 0.1 s single
    assert batcher.cost((None, 0)).batching_faster() is False
    await asyncio.gather(*(batcher.submit(i) for i in range(4)))
    assert work.batches == [[0, 1, 2, 3]]


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="mode must be one of"):
        MicroBatcher(FakeWork(), mode="sometimes")


async def _rounds(batcher: MicroBatcher, rounds: int, size: int = 4) -> None:
    for _ in range(rounds):
        await asyncio.gather(*(batcher.submit(i) for i in range(size)))


async def test_auto_mode_switches_to_single_when_batching_is_slower_and_back():
    clock = CostClock()
    costs = {"single": 0.010, "per_item_batched": 0.020}
    sizes: list[int] = []

    async def work(items):
        sizes.append(len(items))
        per_item = costs["single"] if len(items) == 1 else costs["per_item_batched"]
        clock.advance(per_item * len(items))
        await asyncio.sleep(0)
        return items

    batcher = MicroBatcher(
        work, max_batch=4, max_wait_ms=2, mode="auto", min_samples=3, explore_every=4, clock=clock
    )
    group = (None, 0)
    await _rounds(batcher, 12)
    model = batcher.cost(group)
    assert model.batch_samples >= 3 and model.single_samples >= 3
    assert model.batching_faster() is False
    # Exploit: with explorations disabled, concurrent items now go one by one.
    batcher.explore_every = 10_000
    await _rounds(batcher, 1)  # an exploration under way finishes
    sizes.clear()
    await _rounds(batcher, 3)
    assert sizes == [1] * 12

    # Batching becomes cheaper; exploration notices and the batcher switches back.
    costs["per_item_batched"] = 0.002
    batcher.explore_every = 4
    await _rounds(batcher, 12)
    assert model.batching_faster() is True
    batcher.explore_every = 10_000
    await _rounds(batcher, 1)  # an exploration under way finishes
    sizes.clear()
    await _rounds(batcher, 3)
    assert sizes == [4, 4, 4]
    assert batcher.stats.explorations >= 2


async def test_observe_feeds_costs_from_outside_the_batcher():
    work = FakeWork()
    batcher = MicroBatcher(
        work, max_batch=4, max_wait_ms=2, mode="auto", min_samples=1, time_runs=False
    )
    batcher.observe((None, 0), 4, 0.4)  # 0.1 s per item batched
    batcher.observe((None, 0), 1, 0.05)  # 0.05 s single: cheaper
    await asyncio.gather(*(batcher.submit(i) for i in range(4)))
    assert work.batches == [[0], [1], [2], [3]]
    assert batcher.cost((None, 0)).batch_samples == 1  # its own runs were not timed


async def test_stats_histograms_count_every_dispatched_item():
    work = FakeWork()
    batcher = MicroBatcher(work, max_batch=2, max_wait_ms=30, mode="on")
    await asyncio.gather(*(batcher.submit(i) for i in range(5)))
    stats = batcher.stats.as_dict()
    assert sum(stats["wait_ms_counts"]) == 5
    assert len(stats["wait_ms_counts"]) == len(WAIT_EDGES_MS) + 1
    assert stats["batch_sizes"] == {1: 1, 2: 2}
    assert stats["submitted"] == stats["completed"] == 5
    assert stats["wait_ms_max"] >= 25  # the fifth waited out its window


async def test_close_sends_open_groups_and_refuses_new_items():
    work = FakeWork(delay_s=0.05)
    batcher = MicroBatcher(work, max_batch=8, max_wait_ms=10_000, mode="on")
    waiting = asyncio.ensure_future(batcher.submit(7))
    await asyncio.sleep(0.01)
    assert batcher.pending() == 1
    await batcher.close()
    assert await waiting == 70
    with pytest.raises(BatcherClosed):
        await batcher.submit(8)


async def test_a_quiet_group_stops_opening_windows_it_cannot_fill():
    work = FakeWork()
    batcher = MicroBatcher(
        work, max_batch=4, max_wait_ms=30, mode="auto", min_samples=2, explore_every=10_000
    )
    for i in range(20):  # one at a time: a window never holds two items
        await batcher.submit(i)
    model = batcher.cost((None, 0))
    assert model.batch_samples == 0
    assert model.windows == MicroBatcher.LEARNING_WINDOWS * 2
    waited = sum(batcher.stats.wait_ms_counts[WAIT_EDGES_MS.index(20.0) + 1 :])
    assert waited == model.windows  # only the learning windows waited out max_wait_ms
    assert batcher.stats.singles == 20
