import asyncio
import os
import signal
import subprocess
import time

import numpy as np
import pytest

from inference import protocol
from inference.pool import PoolBusy, PoolStartError, PoolUnavailable, UnitRejected, WorkerCrashed
from tests.inference.conftest import JOE

LONG_TEXT = (
    "This sentence is long on purpose, so that a worker is still busy synthesizing it when the"
    " test kills that worker, and the pool has to notice the death, retry the unit elsewhere,"
    " and start a fresh process in the same slot without losing the request."
)


def unit(text: str, **kwargs) -> protocol.SynthesizeUnit:
    return protocol.SynthesizeUnit(work_id=0, voice="joe", text=text, **kwargs)


async def wait_until(predicate, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def test_units_of_one_request_complete_in_order_with_real_audio(make_pool):
    pool = await make_pool(workers=2)
    texts = ["One.", "This is the second unit.", "And a third one, a little longer than that."]
    futures = pool.submit(pool.new_request_key(), [unit(t) for t in texts])
    results = [await f for f in futures]
    lengths = [len(r.pcm) // 2 for r in results]
    assert lengths[0] < lengths[1] < lengths[2]
    assert {r.sample_rate for r in results} == {22050}
    assert all(np.abs(np.frombuffer(r.pcm, "<i2")).max() > 10000 for r in results)
    assert pool.snapshot()["units_completed"] == 3


async def test_solo_mode_runs_a_lone_request_one_unit_at_a_time(make_pool):
    pool = await make_pool(workers=2, solo_threads=2)
    futures = pool.submit(pool.new_request_key(), [unit("First."), unit("Second.")])
    assert pool.snapshot()["busy_workers"] == 1  # the second waits: the first uses both cores
    await asyncio.gather(*futures)
    # Two requests at once: each gets its own worker.
    a = pool.submit(pool.new_request_key(), [unit(LONG_TEXT)])
    b = pool.submit(pool.new_request_key(), [unit(LONG_TEXT)])
    assert pool.snapshot()["busy_workers"] == 2
    await asyncio.gather(*a, *b)


async def test_killed_worker_unit_is_retried_and_the_slot_restarts(make_pool):
    pool = await make_pool(workers=2)
    (future,) = pool.submit(pool.new_request_key(), [unit(LONG_TEXT)])
    await wait_until(lambda: any(w["busy"] for w in pool.worker_states()))
    busy = next(w for w in pool.worker_states() if w["busy"])
    os.kill(busy["pid"], signal.SIGKILL)
    result = await asyncio.wait_for(future, 60)
    assert result.attempts == 2
    assert result.worker_index != busy["index"]
    assert len(result.pcm) // 2 / 22050 > 5
    await wait_until(lambda: pool.ready)
    states = pool.worker_states()
    assert states[busy["index"]]["restarts"] == 1
    assert states[busy["index"]]["pid"] != busy["pid"]


async def test_cancelled_units_are_never_started(make_pool):
    pool = await make_pool(workers=1)
    futures = pool.submit(pool.new_request_key(), [unit(f"Sentence number {i}.") for i in range(6)])
    for future in futures[1:]:
        future.cancel()
    await futures[0]
    await asyncio.sleep(0.5)
    assert pool.snapshot()["units_completed"] == 1
    assert pool.snapshot()["queued_units"] == 0


async def test_queue_bound_rejects_whole_requests(make_pool):
    pool = await make_pool(workers=1, max_queued_units=3)
    pool.submit(pool.new_request_key(), [unit("a."), unit("b."), unit("c.")])
    with pytest.raises(PoolBusy):
        pool.submit(pool.new_request_key(), [unit("d."), unit("e."), unit("f.")])


async def test_a_unit_past_its_deadline_kills_the_stuck_worker(make_pool):
    pool = await make_pool(workers=1, unit_timeout_s=0.3, max_unit_retries=0)
    (future,) = pool.submit(pool.new_request_key(), [unit(LONG_TEXT)])
    with pytest.raises(WorkerCrashed):
        await asyncio.wait_for(future, 30)
    await wait_until(lambda: pool.ready)
    assert pool.worker_states()[0]["restarts"] == 1


async def test_bad_speaker_is_rejected_by_the_worker_not_fatal(make_pool):
    pool = await make_pool(workers=1)
    (future,) = pool.submit(pool.new_request_key(), [unit("Hi.", speaker_id=5)])
    with pytest.raises(UnitRejected) as info:
        await future
    assert info.value.code == protocol.FAIL_BAD_INPUT
    (ok,) = pool.submit(pool.new_request_key(), [unit("Still serving.")])
    assert len((await ok).pcm) > 0


async def test_corrupt_model_fails_the_start_with_its_reason(make_pool, tmp_path):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"this is not an onnx model")
    voices = (protocol.VoiceFiles("broken", str(broken), JOE.config_path),)
    with pytest.raises(PoolStartError, match="broken|INVALID|protobuf|Load|corrupt"):
        await make_pool(workers=1, voices=voices, ready_timeout_s=60)


async def test_killed_workers_restart_at_the_base_delay_and_refuse_work_meanwhile(make_pool):
    """Repeated kills of serving workers never grow the restart delay (the report saw a pool
    with no ready worker for 25 s), and while no worker is ready new work is refused at
    once (PoolUnavailable: the synthesizer hands it to the fallback) instead of waiting."""
    pool = await make_pool(workers=1, restart_backoff_s=0.2)
    for _ in range(3):
        pid = pool.worker_states()[0]["pid"]
        os.kill(pid, signal.SIGKILL)
        await wait_until(lambda: pool.worker_states()[0]["state"] != "ready")
        with pytest.raises(PoolUnavailable):
            pool.submit(pool.new_request_key(), [unit("Anyone there?")])
        killed_at = time.monotonic()
        await wait_until(lambda: pool.worker_states()[0]["state"] == "ready", timeout_s=60)
        assert pool._slots[0].backoff_s == 0.2  # not doubled: the worker had been serving
        assert time.monotonic() - killed_at < 30
    (future,) = pool.submit(pool.new_request_key(), [unit("Back again.")])
    assert len((await future).pcm) > 0


def test_a_worker_that_dies_before_ready_backs_off_harder():
    from inference.supervisor import MAX_RESTART_BACKOFF_S, WorkerSlot

    slot = WorkerSlot(0, None, None)  # type: ignore[arg-type]
    delays = [slot.next_backoff(0.5) for _ in range(8)]  # never became ready
    assert delays[:4] == [0.5, 1.0, 2.0, 4.0] and delays[-1] == MAX_RESTART_BACKOFF_S
    slot.was_ready = True
    assert slot.next_backoff(0.5) == 0.5


def test_slabs_of_dead_fronts_are_swept_and_live_ones_kept(tmp_path):
    from inference.pool import sweep_stale_slabs

    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid that no longer runs
    names = [protocol.slab_name(dead.pid, "piper", 0), protocol.slab_name(dead.pid, "espeak", 0),
             protocol.slab_name(os.getppid(), "piper", 0), "tts-redis-1-x", "other"]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    removed = sweep_stale_slabs(str(tmp_path))
    assert sorted(removed) == sorted(names[:2])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[2:])
