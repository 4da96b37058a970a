"""An adaptive micro-batcher for an asyncio event loop, shaped like Ray Serve's `serve.batch`.

    batcher = MicroBatcher(run_batch, max_batch=8, max_wait_ms=5, bucket=length_bucket)
    result = await batcher.submit(item, key="joe")

Items with the same batch key and the same length bucket (`bucket(item)`, a function the
caller provides) collect in one group. The first arrival opens the group's window; the
group is sent as one `await run_batch(items)` after `max_wait_ms` or as soon as it holds
`max_batch` items, whichever comes first. A caller cancelled while waiting leaves the
batch: its item is not sent (a group whose every caller left is not run at all). The batch
function must return exactly one result per item, in order; any other count fails every
item of that batch with `BatchResultMismatch`, and an exception from it fails every item.

Adaptive: per group the batcher keeps an exponentially weighted cost per item of batched
runs (two or more items) and of single runs (`run_batch([item])`), timed around
`run_batch` or fed by the caller through `observe()`. Wall time around `run_batch` includes
any queueing behind it (a busy pool), which inflates whichever side is dispatched more
often; a caller that has the service time (the worker's own synthesis time) should pass
`time_runs=False` and feed `observe()` with it. In mode "auto" it batches a group only
while batching has been measured cheaper per item; otherwise items go alone at once,
without waiting. Until both costs have
`min_samples` measurements it alternates (a quiet group that never forms a batch stops
trying after a few windows, since each costs max_wait_ms), and after that it still tries
the losing side every `explore_every` dispatches (a batching exploration opens up to
`EXPLORE_ATTEMPTS` windows until one holds two or more items), so a change in conditions
(load, model) can switch it back. Unproven batching counts as slower. Mode "on" always
batches, "off" never does.

It knows nothing about ONNX or the pool: only `run_batch`. Counters and histograms are plain
attributes (`stats`), no metrics library.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import time
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

MODES = ("auto", "on", "off")
# Upper edges (ms) of the wait-time histogram; the last bin counts everything above.
WAIT_EDGES_MS = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 250.0, 1000.0)


class BatcherError(RuntimeError):
    pass


class BatcherClosed(BatcherError):
    pass


class BatchResultMismatch(BatcherError):
    """run_batch returned a number of results different from the number of items."""


@dataclass
class BatcherStats:
    submitted: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0  # callers that left before their item was sent
    batches: int = 0  # run_batch calls with two or more items
    singles: int = 0  # run_batch calls with one item
    explorations: int = 0  # dispatches that went against the current best choice
    mismatches: int = 0
    batch_sizes: collections.Counter[int] = field(default_factory=collections.Counter)
    wait_ms_counts: list[int] = field(default_factory=lambda: [0] * (len(WAIT_EDGES_MS) + 1))
    wait_ms_sum: float = 0.0
    wait_ms_max: float = 0.0

    def record_wait(self, ms: float) -> None:
        self.wait_ms_counts[bisect.bisect_left(WAIT_EDGES_MS, ms)] += 1
        self.wait_ms_sum += ms
        self.wait_ms_max = max(self.wait_ms_max, ms)

    def as_dict(self) -> dict[str, Any]:
        waits = sum(self.wait_ms_counts)
        return {
            "submitted": self.submitted,
            "completed": self.completed,
            "failed": self.failed,
            "cancelled": self.cancelled,
            "batches": self.batches,
            "singles": self.singles,
            "explorations": self.explorations,
            "mismatches": self.mismatches,
            "batch_sizes": dict(sorted(self.batch_sizes.items())),
            "wait_ms_edges": list(WAIT_EDGES_MS),
            "wait_ms_counts": list(self.wait_ms_counts),
            "wait_ms_mean": self.wait_ms_sum / waits if waits else 0.0,
            "wait_ms_max": self.wait_ms_max,
        }


@dataclass
class CostModel:
    """EWMA cost per item (seconds) of batched and of single runs for one group."""

    alpha: float = 0.2
    batch_cost: float | None = None
    single_cost: float | None = None
    batch_samples: int = 0
    single_samples: int = 0
    dispatches: int = 0
    windows: int = 0  # windows opened while learning the batch cost
    explore_left: int = 0  # dispatches left in the current exploration

    def observe(self, size: int, seconds: float) -> None:
        per_item = seconds / size
        if size > 1:
            self.batch_cost = _ewma(self.batch_cost, per_item, self.alpha)
            self.batch_samples += 1
            self.explore_left = 0
        else:
            self.single_cost = _ewma(self.single_cost, per_item, self.alpha)
            self.single_samples += 1

    def batching_faster(self) -> bool | None:
        """True/False once both sides are measured, None before."""
        if self.batch_cost is None or self.single_cost is None:
            return None
        return self.batch_cost < self.single_cost


def _ewma(old: float | None, new: float, alpha: float) -> float:
    return new if old is None else (1.0 - alpha) * old + alpha * new


@dataclass(eq=False)
class _Pending(Generic[T, R]):
    item: T
    future: asyncio.Future[R]
    arrived: float


@dataclass(eq=False)
class _Group(Generic[T, R]):
    items: list[_Pending[T, R]] = field(default_factory=list)
    timer: asyncio.TimerHandle | None = None


class MicroBatcher(Generic[T, R]):
    # While learning, give up on measuring batches after this many windows per sample
    # wanted (a quiet group never forms a batch, and each window costs max_wait_ms).
    LEARNING_WINDOWS = 3
    # Windows an exploration of batching may open before it waits for the next cycle.
    EXPLORE_ATTEMPTS = 3

    def __init__(
        self,
        run_batch: Callable[[list[T]], Awaitable[Sequence[R]]],
        *,
        max_batch: int = 8,
        max_wait_ms: float = 5.0,
        bucket: Callable[[T], Hashable] | None = None,
        mode: str = "auto",
        alpha: float = 0.2,
        min_samples: int = 3,
        explore_every: int = 20,
        time_runs: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        if max_wait_ms < 0:
            raise ValueError("max_wait_ms must be >= 0")
        if explore_every < 2:
            raise ValueError("explore_every must be >= 2")
        self._run_batch = run_batch
        self.max_batch = max_batch
        self.max_wait_ms = max_wait_ms
        self._bucket = bucket or (lambda item: 0)
        self.mode = mode
        self.alpha = alpha
        self.min_samples = min_samples
        self.explore_every = explore_every
        self.time_runs = time_runs
        self._clock = clock
        self._groups: dict[Hashable, _Group[T, R]] = {}
        self.costs: dict[Hashable, CostModel] = {}
        self.stats = BatcherStats()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    # ---- configuration ------------------------------------------------------------------

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        if value not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {value!r}")
        self._mode = value

    def group_of(self, item: T, key: Hashable = None) -> Hashable:
        return (key, self._bucket(item))

    def cost(self, group: Hashable) -> CostModel:
        model = self.costs.get(group)
        if model is None:
            model = self.costs[group] = CostModel(alpha=self.alpha)
        return model

    def observe(self, group: Hashable, size: int, seconds: float) -> None:
        """Record that a run of `size` items of `group` cost `seconds` (any source)."""
        self.cost(group).observe(size, seconds)

    # ---- decisions ------------------------------------------------------------------------

    def should_batch(self, group: Hashable) -> bool:
        """Batch this group's next dispatch (open a window) or send the item alone?"""
        if self._mode != "auto":
            return self._mode == "on"
        model = self.cost(group)
        model.dispatches += 1
        learning_batch = (
            model.batch_samples < self.min_samples
            and model.windows < self.LEARNING_WINDOWS * self.min_samples
        )
        learning_single = model.single_samples < self.min_samples
        if learning_batch and (not learning_single or model.windows <= model.single_samples):
            model.windows += 1
            return True
        if learning_single:
            return False
        best = bool(model.batching_faster())  # unproven batching counts as slower
        if model.dispatches % self.explore_every == 0:
            model.explore_left = self.EXPLORE_ATTEMPTS if not best else 1
        if model.explore_left > 0:
            # A window may close with one item (no concurrency): then it is tried again, a
            # few times, until a real batch has been measured (observe() ends the search).
            model.explore_left -= 1
            self.stats.explorations += 1
            return not best
        return best

    # ---- submitting -----------------------------------------------------------------------

    async def submit(self, item: T, key: Hashable = None) -> R:
        if self._closed:
            raise BatcherClosed("the batcher is closed")
        loop = asyncio.get_running_loop()
        pending: _Pending[T, R] = _Pending(item, loop.create_future(), self._clock())
        self.stats.submitted += 1
        group_key = self.group_of(item, key)
        group = self._groups.get(group_key)
        if group is None:
            # The first arrival opens the window: it decides whether this group batches.
            if not self.should_batch(group_key):
                self._dispatch(group_key, [pending])
                return await pending.future
            group = self._groups[group_key] = _Group()
            group.timer = loop.call_later(self.max_wait_ms / 1000.0, self._flush, group_key)
        group.items.append(pending)
        if len(group.items) >= self.max_batch:
            self._flush(group_key)
        return await pending.future

    def _flush(self, group_key: Hashable) -> None:
        group = self._groups.pop(group_key, None)
        if group is None:
            return
        if group.timer is not None:
            group.timer.cancel()
        self._dispatch(group_key, group.items)

    def _dispatch(self, group_key: Hashable, items: list[_Pending[T, R]]) -> None:
        now = self._clock()
        live = []
        for pending in items:
            if pending.future.done():  # the caller was cancelled while waiting
                self.stats.cancelled += 1
                continue
            self.stats.record_wait((now - pending.arrived) * 1000.0)
            live.append(pending)
        if not live:
            return
        task = asyncio.get_running_loop().create_task(self._run(group_key, live))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, group_key: Hashable, items: list[_Pending[T, R]]) -> None:
        size = len(items)
        self.stats.batch_sizes[size] += 1
        if size > 1:
            self.stats.batches += 1
        else:
            self.stats.singles += 1
        started = self._clock()
        try:
            results = list(await self._run_batch([p.item for p in items]))
        except asyncio.CancelledError:
            for pending in items:
                pending.future.cancel()
            raise
        except Exception as exc:  # every caller of the batch gets the failure
            self._fail(items, exc)
            return
        if self.time_runs:
            self.observe(group_key, size, self._clock() - started)
        if len(results) != size:
            self.stats.mismatches += 1
            self._fail(
                items,
                BatchResultMismatch(f"run_batch returned {len(results)} results for {size} items"),
            )
            return
        for pending, result in zip(items, results, strict=True):
            if not pending.future.done():
                pending.future.set_result(result)
                self.stats.completed += 1

    def _fail(self, items: list[_Pending[T, R]], exc: BaseException) -> None:
        for pending in items:
            if not pending.future.done():
                pending.future.set_exception(exc)
                self.stats.failed += 1

    # ---- lifecycle --------------------------------------------------------------------------

    def pending(self) -> int:
        return sum(len(g.items) for g in self._groups.values())

    async def close(self) -> None:
        """Send every open group now, refuse new items, wait for running batches."""
        self._closed = True
        for group_key in list(self._groups):
            self._flush(group_key)
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
