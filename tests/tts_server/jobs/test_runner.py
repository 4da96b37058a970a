"""The runner's graceful stop: every claimed job ends it done or back in the queue.

A real JobRunner on the memory store, with a stand-in synthesizer (no model). The store
yields to the event loop before and after every operation, as a Redis round trip does,
so stop() can land on either side of each one: the tests stop the runner at every such
point of a job's life, from its claim to its final write, and check that no job is left
"running" (a lease nobody renews until it lapses, and an attempt charged for nothing).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from types import SimpleNamespace
from typing import Any

from tests.tts_server.jobs.test_store import spec
from tts_server.config import JobSettings
from tts_server.jobs.models import Status
from tts_server.jobs.runner import JobRunner
from tts_server.jobs.stores.base import Claim, Lease
from tts_server.jobs.stores.memory import MemoryJobStore
from tts_server.resilience.state import RunState
from tts_server.speech.synthesizer import UnitAudio

UNITS = 3
PCM = b"\x01\x00" * 100


class YieldingStore(MemoryJobStore):
    """The memory store, with a suspension point before and after every runner operation.

    At each point it records the operation and calls on_point(n) (n counts from 1).
    """

    def __init__(self, settings: JobSettings,
                 on_point: Callable[[int], None] = lambda n: None) -> None:
        super().__init__(settings)
        self.points: list[str] = []
        self.on_point = on_point

    async def _point(self, name: str) -> None:
        self.points.append(name)
        self.on_point(len(self.points))
        await asyncio.sleep(0)

    async def _around(self, name: str, operation: Callable[[], Awaitable[Any]]) -> Any:
        await self._point(name)
        result = await operation()
        await self._point(name)
        return result

    async def claim(self, token: str, instance: str) -> Claim | None:
        return await self._around("claim", lambda: super(YieldingStore, self).claim(
            token, instance))

    async def done_units(self, job_id: str) -> set[int]:
        return await self._around("done_units", lambda: super(YieldingStore, self).done_units(
            job_id))

    async def store_unit(self, claim: Claim, index: int, pcm: bytes, words: bytes = b""
                         ) -> Lease:
        return await self._around("store_unit", lambda: super(YieldingStore, self).store_unit(
            claim, index, pcm, words))

    async def unit_sizes(self, job_id: str, count: int) -> list[int]:
        return await self._around("unit_sizes", lambda: super(YieldingStore, self).unit_sizes(
            job_id, count))

    async def unit_pcm(self, job_id: str, index: int) -> bytes:
        return await self._around("unit_pcm", lambda: super(YieldingStore, self).unit_pcm(
            job_id, index))

    async def append_result(self, claim: Claim, data: bytes) -> Lease:
        return await self._around("append_result", lambda: super(
            YieldingStore, self).append_result(claim, data))

    async def finish(self, claim: Claim, status: Status, error_code: str = "",
                     error_message: str = "") -> Lease:
        return await self._around("finish", lambda: super(YieldingStore, self).finish(
            claim, status, error_code, error_message))


# A job's store operations from its claim to its final write, each with two points.
JOB_OPERATIONS = ["claim", "done_units", *["store_unit"] * UNITS, "unit_sizes",
                  *["unit_pcm"] * UNITS, "append_result", "finish"]


class Synthesizer:
    """Yields each unit's PCM after a suspension point, as a pool future would."""

    def __init__(self, swallow_cancel: bool = False) -> None:
        # Python 3.11's asyncio.wait_for returns the result and drops the cancellation
        # when the awaited unit completes in the same step as the cancel: the job goes on.
        self.swallow_cancel = swallow_cancel

    async def stream(self, request: Any, trace: Any, priority: int) -> AsyncIterator[UnitAudio]:
        for _ in request.units:
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                if not self.swallow_cancel:
                    raise
            yield UnitAudio(PCM)


def make_runner(store: MemoryJobStore, settings: JobSettings,
                synthesizer: Synthesizer | None = None, batch_units: int = UNITS) -> JobRunner:
    registry = SimpleNamespace(voices={"joe": SimpleNamespace(name="joe")})
    return JobRunner(store, settings, synthesizer or Synthesizer(),  # type: ignore[arg-type]
                     registry, None, RunState(), batch_units, lambda: None)  # type: ignore[arg-type]


async def until(check: Callable[[], Awaitable[bool]], timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not await check():
            await asyncio.sleep(0.005)


def job_is(store: MemoryJobStore, status: Status | None = None,
           units_done: int = 0) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        job = await store.get("job")
        assert job is not None
        return (status is None or job.status is status) and job.units_done >= units_done

    return check


def stop_requested(stops: list[asyncio.Task[None]]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return bool(stops)

    return check


async def assert_settled(store: MemoryJobStore) -> str:
    """Done with its audio, or queued again with the attempt refunded; never running."""
    job = await store.get("job")
    assert job is not None
    if job.status is Status.DONE:
        assert await store.result_size("job") == 44 + UNITS * len(PCM)
    else:
        assert job.status is Status.QUEUED, job
        assert job.attempts == 0
        assert await store.claim("next", "next-instance") is not None  # it can run again
    return job.status.value


async def test_a_stop_at_any_point_of_a_job_leaves_it_done_or_queued() -> None:
    # One job at a time: the claim loop waits for the slot, so the job's points come in order.
    settings = JobSettings(lease_ttl_s=30.0, poll_interval_s=0.05, max_concurrent=1)
    store = YieldingStore(settings)
    await store.submit("job", spec(units=UNITS))
    runner = make_runner(store, settings)
    runner.start()
    await until(job_is(store, Status.DONE))
    await runner.stop()
    expected = [name for name in JOB_OPERATIONS for _ in range(2)]
    assert store.points[:len(expected)] == expected

    outcomes: dict[tuple[int, str], str] = {}
    for stop_at in range(1, len(expected) + 1):
        stops: list[asyncio.Task[None]] = []
        store = YieldingStore(settings)
        await store.submit("job", spec(units=UNITS))
        runner = make_runner(store, settings)

        def stop(n: int, at: int = stop_at, runner: JobRunner = runner,
                 stops: list[asyncio.Task[None]] = stops) -> None:
            if n == at:  # in a new task, as the server's shutdown calls it
                stops.append(asyncio.get_running_loop().create_task(runner.stop()))

        store.on_point = stop
        runner.start()
        await until(stop_requested(stops))
        await stops[0]
        side = "before" if stop_at % 2 else "after"
        outcomes[stop_at, f"{side} {expected[stop_at - 1]}"] = await assert_settled(store)
    # Stopped before the final write: queued; once it is written: done.
    assert list(outcomes.values()) == ["queued"] * (len(expected) - 1) + ["done"], outcomes


async def test_a_job_task_cancelled_before_its_first_step_is_handed_back() -> None:
    settings = JobSettings(lease_ttl_s=30.0, poll_interval_s=0.01)
    store = MemoryJobStore(settings)
    await store.submit("job", spec(units=UNITS))
    runner = make_runner(store, settings)
    hold = runner._hold
    stops: list[asyncio.Task[None]] = []

    def hold_after_stop(claim: Claim) -> Any:
        # Scheduled before the job's task: stop() cancels that task before it ever runs,
        # so the job's own hand-back (in the task) never runs either.
        stops.append(asyncio.get_running_loop().create_task(runner.stop()))
        return hold(claim)

    runner._hold = hold_after_stop  # type: ignore[method-assign]
    runner.start()
    await until(stop_requested(stops))
    await stops[0]
    assert await assert_settled(store) == "queued"


async def test_a_job_that_loses_its_cancellation_stops_at_its_next_batch() -> None:
    settings = JobSettings(lease_ttl_s=30.0, poll_interval_s=0.01)
    store = MemoryJobStore(settings)
    await store.submit("job", spec(units=UNITS))
    runner = make_runner(store, settings, Synthesizer(swallow_cancel=True), batch_units=1)
    runner.start()
    await until(job_is(store, units_done=1))
    async with asyncio.timeout(1.0):  # well under STOP_TIMEOUT_S
        await runner.stop()
    job = await store.get("job")
    assert job is not None and job.status is Status.QUEUED and job.units_done < UNITS
    assert job.attempts == 0
