"""The micro-batcher in front of the Piper pool: what the Synthesizer calls when batching is on.

`BatchingPool` wraps an `InferencePool` with a `MicroBatcher` and offers the surface the
Synthesizer uses (`submit`, `new_request_key`, `estimated_wait_s`, `reserve`), so the
Synthesizer does not know whether it batches. Each sentence unit becomes one batcher item,
grouped by (voice, speed, speaker, priority lane) and by a length bucket of its characters
(the front has no phonemes; the worker re-buckets by real phoneme ids before each padded
run). A window of two or more units goes to the pool as one `SynthesizeBatch` work item; a
window of one goes the normal single-unit way (so a lone request still gets the solo
session). A unit waiting in a window is reserved in the pool's wait estimate.

Admission stays at the door: `submit` raises PoolClosed, PoolUnavailable or PoolBusy at
once, counting the units still in open windows, so a unit is refused before it waits.
Cancellation: a caller that leaves while its window is open is dropped from it; when every
caller of a dispatched batch (or single) has left, its pool work item is cancelled, so it
never starts if it still waits for a worker. A batch whose audio would overflow the
worker's slab is run again unit by unit.

In mode "auto" the batcher decides per group from costs this module feeds it
(`time_runs=False`): the workers' own synthesis time (never the wall time around the pool,
which includes queueing), per item normalized to 100 characters so that batches and
singles of different lengths within one bucket compare. Units that ran on the solo
(multi-threaded) session are not fed: their wall time hides the second core they used.

With `batching.mode = "off"` this class is not used at all (app.py hands the Synthesizer
the pool itself).
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

from inference import protocol
from inference.pool import InferencePool, PoolClosed, Reservation, UnitRejected, UnitResult
from tts_server.batching.batcher import MicroBatcher
from tts_server.config import BatchingSettings

# Costs fed to the batcher are seconds per item of this many characters.
COST_UNIT_CHARS = 100


@dataclass(eq=False)
class _Item:
    unit: protocol.SynthesizeUnit
    request_key: int
    priority: int
    # The future handed to the Synthesizer (the task waiting in the batcher).
    caller: asyncio.Future[UnitResult] | None = None
    # Its characters in the pool's wait estimate while it waits in a window.
    reservation: Reservation | None = None

    @property
    def key(self) -> Hashable:
        """What must be equal for two units to share a batch (besides the length bucket)."""
        return (self.unit.voice, self.unit.speed, self.unit.speaker_id, self.priority)


class BatchingPool:
    """An InferencePool behind a MicroBatcher, with the pool's submit() shape."""

    def __init__(self, pool: InferencePool, settings: BatchingSettings) -> None:
        self.pool = pool
        self.settings = settings
        edges = tuple(settings.bucket_chars)
        self.batcher: MicroBatcher[_Item, UnitResult] = MicroBatcher(
            self._run_batch,
            max_batch=settings.max_batch,
            max_wait_ms=settings.max_wait_ms,
            bucket=lambda item: bisect.bisect_left(edges, len(item.unit.text)),
            mode=settings.mode,
            alpha=settings.alpha,
            min_samples=settings.min_samples,
            explore_every=settings.explore_every,
            time_runs=False,
        )
        self._closed = False
        # Units accepted but not yet handed to the pool (in open windows or about to be).
        self._held: set[_Item] = set()

    # ---- the pool's surface ------------------------------------------------------------

    def new_request_key(self) -> int:
        return self.pool.new_request_key()

    def estimated_wait_s(self, priority: int, chars: int, units: int) -> float:
        return self.pool.estimated_wait_s(priority, chars, units) + self.settings.max_wait_ms / 1000

    def reserve(self, priority: int, chars: int, units: int) -> Reservation:
        """The pool's reservation: released before submit(), which hands the units over."""
        return self.pool.reserve(priority, chars, units)

    def submit(
        self, request_key: int, units: Sequence[protocol.SynthesizeUnit], priority: int = 1
    ) -> list[asyncio.Future[UnitResult]]:
        """Every unit of one request into the batcher, or none (the pool's errors)."""
        if self._closed:
            raise PoolClosed("server is shutting down")
        self.pool.check_admission(len(units) + len(self._held))
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[UnitResult]] = []
        for unit in units:
            item = _Item(unit, request_key, priority)
            item.reservation = self.pool.reserve(priority, len(unit.text), 1)
            item.caller = loop.create_task(self.batcher.submit(item, item.key))
            item.caller.add_done_callback(lambda _, i=item: self._unhold(i))
            self._held.add(item)
            futures.append(item.caller)
        return futures

    def _unhold(self, item: _Item) -> None:
        self._held.discard(item)
        if item.reservation is not None:
            item.reservation.release()

    def snapshot(self) -> dict[str, object]:
        return {"mode": self.batcher.mode, **self.batcher.stats.as_dict()}

    async def close(self) -> None:
        """Send the open windows now and wait for them; later submits get PoolClosed."""
        self._closed = True
        await self.batcher.close()

    # ---- running a window --------------------------------------------------------------

    async def _run_batch(self, items: list[_Item]) -> list[UnitResult]:
        self._held.difference_update(items)
        for item in items:  # queued in the pool below: counted there from now on
            if item.reservation is not None:
                item.reservation.release()
        if len(items) == 1:
            item = items[0]
            (single,) = self.pool.submit(item.request_key, [item.unit], item.priority,
                                         admitted=True)
            _cancel_when_callers_leave(items, single)
            results = [await single]
        else:
            future = self.pool.submit_batch([i.request_key for i in items], _message(items),
                                            items[0].priority)
            _cancel_when_callers_leave(items, future)
            try:
                results = await future
            except UnitRejected as exc:
                if exc.code != protocol.FAIL_AUDIO_TOO_LONG:
                    raise
                return await self._run_singly(items)  # too much audio for one slab
        self._observe(items, results)
        return results

    async def _run_singly(self, items: list[_Item]) -> list[UnitResult]:
        results = await asyncio.gather(*(self._run_batch([item]) for item in items))
        return [result for (result,) in results]

    def _observe(self, items: list[_Item], results: list[UnitResult]) -> None:
        """Feed the auto mode the workers' synthesis time per 100-character item."""
        if self.batcher.mode != "auto" or (len(items) == 1 and results[0].solo):
            return
        chars = sum(len(item.unit.text) for item in items)
        if chars:
            seconds = sum(r.synthesis_ms for r in results) / 1000
            group = self.batcher.group_of(items[0], items[0].key)
            self.batcher.observe(group, len(items), seconds * COST_UNIT_CHARS * len(items) / chars)


def _message(items: list[_Item]) -> protocol.SynthesizeBatch:
    first = items[0].unit
    texts = tuple(item.unit.text for item in items)
    # One unit that wants word timings gets them for all: they cost little next to the run.
    timings = any(item.unit.timings for item in items)
    return protocol.SynthesizeBatch(0, first.voice, texts, first.speed, first.speaker_id,
                                    timings)


def _cancel_when_callers_leave(items: list[_Item], future: asyncio.Future) -> None:
    """Cancel the pool's work item once every caller of it has gone (it then never starts)."""
    callers = [item.caller for item in items if item.caller is not None]

    def check(_: object) -> None:
        if not future.done() and all(caller.done() for caller in callers):
            future.cancel()

    for caller in callers:
        caller.add_done_callback(check)
