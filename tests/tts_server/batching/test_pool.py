"""The micro-batcher wired into the server: the front facade on a real pool, then real servers.

Noise is fixed (tests/support.py TEST_SECTIONS), so a text's audio is the same whether it
ran alone or inside a padded batch, up to float reduction order: the tolerance below.
"""

from __future__ import annotations

import asyncio
import os
import signal

import aiohttp
import numpy as np
import pytest

from inference import protocol
from inference.pool import PoolBusy
from tests.inference.conftest import make_pool  # noqa: F401  (the real-pool fixture)
from tests.inference.test_pool_batch import SIMILAR as TEXTS
from tests.inference.test_pool_batch import assert_same_audio
from tests.support import Client, decode_wav, plausible_duration
from tts_server.app import batching_front
from tts_server.batching.pool import BatchingPool
from tts_server.config import BatchingSettings

LONG_TEXT = (
    "This sentence is long on purpose, so that a worker is still busy synthesizing the batch"
    " it belongs to when the test kills that worker, and the pool has to notice the death,"
    " run the whole batch again elsewhere, and answer every one of its callers in full."
)
# TEXTS: one length bucket (49-80 characters), distinct: they batch, nothing is cached.


def unit(text: str) -> protocol.SynthesizeUnit:
    return protocol.SynthesizeUnit(work_id=0, voice="joe", text=text)


def settings(**values) -> BatchingSettings:
    return BatchingSettings(**{"mode": "on", "max_wait_ms": 100.0, **values})


async def wait_until(predicate, timeout_s: float = 30.0) -> None:
    for _ in range(int(timeout_s / 0.02)):
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached in time")


# ---- the facade on a real pool ------------------------------------------------------------


async def test_one_window_becomes_one_batch_with_the_audio_of_singles(make_pool):  # noqa: F811
    pool = await make_pool(workers=2, max_batch=8)
    front = BatchingPool(pool, settings())
    futures = front.submit(front.new_request_key(), [unit(t) for t in TEXTS[:3]])  # fp32
    batched = await asyncio.gather(*futures)
    assert pool.snapshot()["batches_completed"] == 1
    assert [r.batch_size for r in batched] == [3, 3, 3]
    singles = await asyncio.gather(*pool.submit(1, [unit(t) for t in TEXTS[:3]]))
    for one, alone in zip(batched, singles, strict=True):
        pcm = (np.frombuffer(r.pcm, "<i2") for r in (one, alone))
        assert_same_audio(*pcm, int8=False)


async def test_callers_cancelled_in_the_window_leave_it(make_pool):  # noqa: F811
    pool = await make_pool(workers=1, max_batch=8)
    front = BatchingPool(pool, settings(max_wait_ms=300.0))
    futures = front.submit(1, [unit(t) for t in TEXTS[:3]])
    await asyncio.sleep(0.05)  # inside the window
    futures[0].cancel()
    futures[2].cancel()
    result = await futures[1]
    assert result.batch_size == 1  # what was left ran alone
    await asyncio.sleep(0.3)
    assert front.batcher.stats.cancelled == 2
    snap = pool.snapshot()
    assert (snap["units_completed"], snap["batches_completed"]) == (1, 0)


async def test_a_dispatched_batch_whose_callers_all_left_never_starts(make_pool):  # noqa: F811
    pool = await make_pool(workers=1, max_batch=8)
    (running,) = pool.submit(1, [unit(LONG_TEXT)])  # keeps the only worker busy
    front = BatchingPool(pool, settings(max_wait_ms=10.0))
    futures = front.submit(2, [unit(t) for t in TEXTS[:2]])
    await wait_until(lambda: pool.snapshot()["queued_units"] == 2)  # the batch waits in the pool
    for future in futures:
        future.cancel()
    await running
    await asyncio.sleep(0.5)
    snap = pool.snapshot()
    assert (snap["units_completed"], snap["batches_completed"], snap["queued_units"]) == (1, 0, 0)


async def test_admission_counts_the_units_still_in_open_windows(make_pool):  # noqa: F811
    pool = await make_pool(workers=1, max_batch=8, max_queued_units=3)
    front = BatchingPool(pool, settings(max_wait_ms=500.0))
    kept = front.submit(1, [unit(t) for t in TEXTS[:2]])
    with pytest.raises(PoolBusy):
        front.submit(2, [unit(t) for t in TEXTS[2:4]])  # 2 waiting + 2 > 3
    await asyncio.gather(*kept)


async def test_auto_mode_learns_from_the_workers_synthesis_time(make_pool):  # noqa: F811
    pool = await make_pool(workers=2, max_batch=8)
    front = BatchingPool(pool, settings(mode="auto", min_samples=1))
    await asyncio.gather(*front.submit(1, [unit(t) for t in TEXTS[:3]]))  # learning: a batch
    await asyncio.gather(*front.submit(2, [unit(TEXTS[3])]))  # then a single
    (cost,) = front.batcher.costs.values()
    assert (cost.batch_samples, cost.single_samples) == (1, 1)
    # seconds per 100 characters of one worker's synthesis: a few tenths on this voice
    assert 0.01 < cost.single_cost < 5 and 0.01 < cost.batch_cost < 5
    assert front.snapshot()["batches"] == 1


def test_batching_off_hands_the_synthesizer_the_pools_themselves():
    pools = {"piper": object(), "espeak": object()}
    assert batching_front(pools, BatchingSettings(mode="off")) == pools  # type: ignore[arg-type]
    front = batching_front(pools, BatchingSettings(mode="auto"))  # type: ignore[arg-type]
    assert isinstance(front["piper"], BatchingPool) and front["espeak"] is pools["espeak"]


# ---- real servers over HTTP ---------------------------------------------------------------


async def post(session: aiohttp.ClientSession, url: str, text: str):
    return await Client.at(session, url).post_tts({"text": text})


async def post_all(url: str, texts: list[str]):
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        return await asyncio.gather(*(post(session, url, t) for t in texts))


async def pool_state(url: str) -> dict:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{url}/readyz") as response:
            return (await response.json())["pools"]["piper"]


BATCHED = {"batching": {"mode": "on", "max_wait_ms": 50.0}, "cache": {"enabled": False}}


async def test_batched_server_answers_with_the_unbatched_servers_audio(running_server):
    batched = running_server(BATCHED, wait=False)
    plain = running_server({"cache": {"enabled": False}}, wait=False)
    batched.wait_ready()
    plain.wait_ready()
    results = await post_all(batched.url, list(TEXTS))
    assert (await pool_state(batched.url))["batches_completed"] >= 1
    references = await post_all(plain.url, list(TEXTS))
    assert (await pool_state(plain.url))["batches_completed"] == 0
    for text, (status, headers, body), (_, _, reference) in zip(
        TEXTS, results, references, strict=True
    ):
        assert (status, headers["X-Engine"]) == (200, "piper")
        samples, rate, _ = decode_wav(body)
        expected, expected_rate, _ = decode_wav(reference)
        assert rate == expected_rate == 22050
        assert plausible_duration(text, len(samples) / rate)
        assert_same_audio(samples, expected, int8=True)  # the served default: INT8


async def test_a_batch_whose_worker_is_killed_is_answered_in_full(running_server):
    server = running_server(BATCHED)
    texts = [LONG_TEXT.replace("purpose", f"purpose {n}") for n in range(4)]
    answers = asyncio.ensure_future(post_all(server.url, texts))
    for _ in range(250):  # until a worker holds the batch
        busy = [w for w in (await pool_state(server.url))["workers"] if w["busy"]]
        if busy:
            break
        await asyncio.sleep(0.02)
    os.kill(busy[0]["pid"], signal.SIGKILL)
    results = await asyncio.wait_for(answers, 120)
    assert [status for status, _, _ in results] == [200] * len(texts)
    for text, (_, headers, body) in zip(texts, results, strict=True):
        samples, rate, _ = decode_wav(body)
        assert headers["X-Engine"] == "piper"  # retried on the other worker, not the fallback
        assert plausible_duration(text, len(samples) / rate)
    assert "retrying unit" in server.log()
    assert (await pool_state(server.url))["batches_completed"] >= 1
