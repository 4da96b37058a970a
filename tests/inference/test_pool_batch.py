"""Batches through the real pool: real workers with a batch engine, real shared memory."""

from __future__ import annotations

import asyncio
import os
import signal

import numpy as np
import pytest

from inference import protocol
from inference.pool import UnitRejected, WorkerCrashed
from inference.quantize import ensure_variant
from inference.wer import mel_distance_db
from tests.inference.conftest import JOE
from tests.inference.test_pool import LONG_TEXT, unit, wait_until
from tts_server.config import VoiceSettings

TEXTS = (
    "Good morning. The meeting starts soon.",
    "Thank you.",
    "Please keep your belongings with you at all times.",
    "Do you know when the ferry to Austin leaves?",
)
# Similar lengths: these share a phoneme bucket in the worker, so they really run padded.
SIMILAR = tuple(
    f"Announcement number {n}: the train to the airport leaves soon." for n in range(11, 17)
)
# Batched vs alone, same text, noise fixed. Lengths are always equal (exact split).
# FP32: they differ only by float reduction order: max |diff| <= 64 of 32767 (measured <= 8,
# SNR > 80 dB). INT8 (QDQ): a float difference of 1e-5 (padding, kernel choice for a batch)
# flips int8 roundings, so a batched item differs from its solo run at the level of the
# quantization noise itself: mostly in the last ~80 ms of a shorter item (the decoder's
# receptive field over the padding), for some items in their first frames too. Measured on
# 126 sentences (the six below + 120 corpus ones) with voices.int8_recipe: SNR >= 21.0 dB
# (median 35.6), log-mel distance <= 0.41 dB (median 0.05); INT8 vs FP32 itself is
# SNR 10-16 dB, log-mel ~11 dB. Tolerance: SNR >= 18 dB and log-mel distance <= 1 dB.
MAX_SAMPLE_DIFF = 64
MIN_INT8_SNR_DB = 18.0
MAX_INT8_MEL_DB = 1.0


def assert_same_audio(batched: np.ndarray, alone: np.ndarray, int8: bool) -> None:
    """int16 audio of one text, batched and alone, within the tolerance stated above."""
    assert len(batched) == len(alone)
    diff = batched.astype(np.float64) - alone
    if not int8:
        assert np.abs(diff).max() <= MAX_SAMPLE_DIFF
        return
    snr = 10 * np.log10(np.sum(alone.astype(np.float64) ** 2) / max(np.sum(diff**2), 1e-9))
    assert snr >= MIN_INT8_SNR_DB
    assert mel_distance_db(batched / 32767, alone / 32767, 22050) <= MAX_INT8_MEL_DB


def batch(texts, **kwargs) -> protocol.SynthesizeBatch:
    return protocol.SynthesizeBatch(0, "joe", tuple(texts), **kwargs)


def pcm(result) -> np.ndarray:
    return np.frombuffer(result.pcm, "<i2")


async def test_a_batch_matches_the_same_texts_one_by_one(make_pool):
    pool = await make_pool(workers=2, max_batch=8)
    texts = TEXTS + SIMILAR
    batched = await pool.submit_batch([pool.new_request_key()], batch(texts))
    singles = await asyncio.gather(*pool.submit(pool.new_request_key(), [unit(t) for t in texts]))
    assert [r.batch_size for r in batched] == [len(texts)] * len(texts)
    for one, alone in zip(batched, singles, strict=True):
        assert one.sample_rate == alone.sample_rate == 22050
        assert_same_audio(pcm(one), pcm(alone), int8=False)
    snap = pool.snapshot()
    assert (snap["batches_completed"], snap["units_completed"]) == (1, 2 * len(texts))
    # The batch's synthesis time is shared by samples, so the items' times add up to it.
    assert sum(r.synthesis_ms for r in batched) > 0


async def test_the_default_int8_model_serves_batches(make_pool):
    """The server's default precision: the QDQ model patched for durations still splits."""
    int8 = ensure_variant(JOE, VoiceSettings().int8_recipe, None)
    voices = (protocol.VoiceFiles("joe", int8.model_path, int8.config_path),)
    pool = await make_pool(workers=1, voices=voices, max_batch=8)
    batched = await pool.submit_batch([1], batch(SIMILAR))
    singles = await asyncio.gather(*pool.submit(2, [unit(t) for t in SIMILAR]))
    for one, alone in zip(batched, singles, strict=True):
        assert_same_audio(pcm(one), pcm(alone), int8=True)


async def test_a_batch_lost_with_its_worker_is_retried_whole(make_pool):
    pool = await make_pool(workers=2, max_batch=8)
    future = pool.submit_batch([1], batch([LONG_TEXT, LONG_TEXT, "Short."]))
    await wait_until(lambda: any(w["busy"] for w in pool.worker_states()))
    busy = next(w for w in pool.worker_states() if w["busy"])
    os.kill(busy["pid"], signal.SIGKILL)
    results = await asyncio.wait_for(future, 120)
    assert [r.attempts for r in results] == [2, 2, 2]
    assert results[0].worker_index != busy["index"]
    assert len(results[0].pcm) == len(results[1].pcm) > len(results[2].pcm) > 0


async def test_a_batch_out_of_retries_fails_clearly_and_never_hangs(make_pool):
    pool = await make_pool(workers=1, max_batch=8, max_unit_retries=0)
    future = pool.submit_batch([1], batch([LONG_TEXT, LONG_TEXT]))
    await wait_until(lambda: pool.worker_states()[0]["busy"])
    os.kill(pool.worker_states()[0]["pid"], signal.SIGKILL)
    with pytest.raises(WorkerCrashed, match="died"):
        await asyncio.wait_for(future, 30)
    await wait_until(lambda: pool.ready)


async def test_a_batch_past_the_deadline_kills_the_stuck_worker(make_pool):
    pool = await make_pool(workers=1, max_batch=8, unit_timeout_s=0.3, max_unit_retries=0)
    future = pool.submit_batch([1], batch([LONG_TEXT, LONG_TEXT]))
    with pytest.raises(WorkerCrashed):
        await asyncio.wait_for(future, 30)


async def test_a_cancelled_batch_is_never_started(make_pool):
    pool = await make_pool(workers=1, max_batch=8)
    (running,) = pool.submit(1, [unit(LONG_TEXT)])
    queued = pool.submit_batch([2, 3], batch(TEXTS), priority=1)
    assert pool.snapshot()["queued_units"] == len(TEXTS)  # a batch counts its units
    # Its characters (all texts) count in the wait of what queues behind it in its lane.
    behind = pool.estimated_wait_s(1, 0, 1) - pool.estimated_wait_s(0, 0, 1)
    assert behind == pytest.approx(sum(map(len, TEXTS)) * pool.seconds_per_char)
    queued.cancel()
    await running
    await asyncio.sleep(0.5)
    snap = pool.snapshot()
    assert (snap["batches_completed"], snap["units_completed"], snap["queued_units"]) == (0, 1, 0)


async def test_a_worker_without_batching_refuses_a_batch_clearly(make_pool):
    pool = await make_pool(workers=1)  # max_batch 0: no batch engine loaded
    with pytest.raises(UnitRejected, match="no batch engine") as info:
        await pool.submit_batch([1], batch(TEXTS[:2]))
    assert info.value.code == protocol.FAIL_BAD_INPUT
    (ok,) = pool.submit(2, [unit("Still serving.")])
    assert len((await ok).pcm) > 0


async def test_a_bad_speaker_fails_the_whole_batch_as_bad_input(make_pool):
    pool = await make_pool(workers=1, max_batch=8)
    with pytest.raises(UnitRejected) as info:
        await pool.submit_batch([1], batch(TEXTS[:2], speaker_id=3))
    assert info.value.code == protocol.FAIL_BAD_INPUT
