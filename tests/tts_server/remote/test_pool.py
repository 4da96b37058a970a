"""RemotePool on its own against a real HTTP upstream of the test's: lanes, bounds, stop."""

from __future__ import annotations

import asyncio

import pytest

from inference import protocol
from inference.pool import PoolBusy, PoolClosed
from tests.support import free_port
from tests.tts_server.remote.conftest import FaultUpstream
from tts_server.config import settings_from_dict
from tts_server.remote.pool import RemotePool


@pytest.fixture
async def upstream():
    server = await FaultUpstream(free_port(), mode="gated").start()
    yield server
    server.gate.set()
    await server.stop()


async def started_pool(url: str, **fields: object) -> RemotePool:
    remote = {"name": "gpu", "base_url": url, "voices": {"ada": "alloy"}, **fields}
    pool = RemotePool(settings_from_dict({"engines": {"remote": [remote]}}).engines.remote[0])
    await pool.start()
    return pool


def units(*texts: str) -> list[protocol.SynthesizeUnit]:
    return [protocol.SynthesizeUnit(work_id=0, voice="ada", text=t, speed=1.0) for t in texts]


async def until(condition, timeout_s: float = 5.0) -> None:
    for _ in range(int(timeout_s / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


async def test_vip_units_overtake_queued_standard_ones(upstream):
    pool = await started_pool(upstream.url)
    try:
        first = pool.submit(pool.new_request_key(), units("Running first, standard."), 1)
        await until(lambda: len(upstream.calls) == 1)
        standard = pool.submit(pool.new_request_key(), units("Queued standard unit."), 1)
        vip = pool.submit(pool.new_request_key(), units("Queued vip unit, later."), 0)
        assert pool.estimated_wait_s(0, 10, 1) < pool.estimated_wait_s(1, 10, 1)
        upstream.gate.set()
        await asyncio.gather(*first, *standard, *vip)
        order = [call.body["input"] for call in upstream.calls]
        assert order == ["Running first, standard.", "Queued vip unit, later.",
                         "Queued standard unit."]
    finally:
        await pool.stop()


async def test_the_queue_bound_refuses_a_whole_request(upstream):
    pool = await started_pool(upstream.url, max_queued_units=2)
    try:
        with pytest.raises(PoolBusy):
            pool.submit(pool.new_request_key(), units("One.", "Two.", "Three."))
        assert pool.snapshot()["queued_units"] == 0 and not upstream.calls
    finally:
        await pool.stop()


async def test_a_cancelled_queued_unit_is_never_sent(upstream):
    pool = await started_pool(upstream.url)
    try:
        running = pool.submit(pool.new_request_key(), units("This one runs."))
        await until(lambda: len(upstream.calls) == 1)
        (queued,) = pool.submit(pool.new_request_key(), units("This one is dropped."))
        assert pool.snapshot()["queued_units"] == 1
        queued.cancel()
        await asyncio.sleep(0)  # done callbacks run on the next turn of the loop
        assert pool.snapshot()["queued_units"] == 0
        upstream.gate.set()
        await asyncio.gather(*running)
        await asyncio.sleep(0.1)
        assert [c.body["input"] for c in upstream.calls] == ["This one runs."]
    finally:
        await pool.stop()


async def test_stop_fails_running_and_queued_units_and_ends_the_calls(upstream):
    pool = await started_pool(upstream.url)
    running = pool.submit(pool.new_request_key(), units("In flight at stop."))
    await until(lambda: len(upstream.calls) == 1)
    queued = pool.submit(pool.new_request_key(), units("Still queued at stop."))
    await pool.stop()
    for future in (*running, *queued):
        with pytest.raises(PoolClosed):
            await future
    await until(lambda: upstream.abandoned == 1)  # the upstream saw its client leave
    with pytest.raises(PoolClosed):
        pool.submit(pool.new_request_key(), units("After stop."))
