"""The job store contract, kept alike by the Redis store (a real redis-server) and memory.

No model, no server: leases, fencing, attempts, cancellation, bounds, idempotency,
expiry and the webhook outbox, state transition by state transition.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from tts_server.config import JobSettings
from tts_server.jobs.models import JobSpec, Status
from tts_server.jobs.stores.base import CancelAction, JobStore, Lease, QueueFull
from tts_server.jobs.stores.memory import MemoryJobStore
from tts_server.jobs.stores.redis import RedisJobStore

StoreFactory = Callable[..., JobStore]


def spec(owner: str = "token:alice", units: int = 3, key: str = "", callback: str = "") -> JobSpec:
    texts = tuple(f"Sentence {i}." for i in range(units))
    return JobSpec(owner=owner, units=texts, chars=sum(map(len, texts)), voice="joe", speed=1.0,
                   speaker_id=None, api_format="wav", audio_format="wav", sample_rate=22050,
                   callback_url=callback, idempotency_key=key, fingerprint="f")


@pytest.fixture(params=["memory", "redis"])
async def make_store(request: pytest.FixtureRequest) -> AsyncIterator[StoreFactory]:
    stores: list[JobStore] = []

    def make(**overrides: object) -> JobStore:
        settings = JobSettings(**{"lease_ttl_s": 1.0, **overrides})  # type: ignore[arg-type]
        if request.param == "memory":
            store: JobStore = MemoryJobStore(settings)
        else:
            redis_server = request.getfixturevalue("redis_server")
            store = RedisJobStore.from_url(redis_server.url, settings)
        stores.append(store)
        return store

    yield make
    for store in stores:
        await store.close()


async def test_claim_store_and_finish(make_store: StoreFactory) -> None:
    store = make_store()
    first = (await store.submit("a", spec(units=2))).job
    await store.submit("b", spec())
    assert first.status is Status.QUEUED and first.units_total == 2
    claim = await store.claim("token-1", "me")
    assert claim is not None and claim.job.id == "a"  # oldest first
    assert claim.units == ["Sentence 0.", "Sentence 1."]
    assert claim.job.attempts == 1 and claim.job.status is Status.RUNNING
    assert await store.store_unit(claim, 1, b"\x01\x00" * 10) is Lease.OK
    assert await store.store_unit(claim, 1, b"\x01\x00" * 10) is Lease.OK  # ignored
    assert await store.done_units("a") == {1}
    assert await store.store_unit(claim, 0, b"\x02\x00" * 5) is Lease.OK
    assert await store.unit_sizes("a", 2) == [10, 20]
    job = await store.get("a")
    assert job is not None
    assert (job.units_done, job.audio_samples, job.unit_writes) == (2, 15, 3)
    assert await store.append_result(claim, b"abc") is Lease.OK
    assert await store.append_result(claim, b"def") is Lease.OK
    assert await store.finish(claim, Status.DONE) is Lease.OK
    done = await store.get("a")
    assert done is not None and done.status is Status.DONE and done.result_bytes == 6
    assert done.finished_ms >= done.started_ms >= done.created_ms > 0
    assert done.expires_ms > done.finished_ms
    assert await store.result_size("a") == 6
    assert await store.result_range("a", 2, 4) == b"cde"
    assert await store.done_units("a") == set()  # sentences are dropped once the file exists


async def test_a_lapsed_lease_is_reclaimed_and_the_old_runner_is_fenced_off(
    make_store: StoreFactory,
) -> None:
    store = make_store(max_attempts=2)
    await store.submit("a", spec())
    old = await store.claim("old", "dead-instance")
    assert old is not None
    assert await store.store_unit(old, 0, b"\0\0") is Lease.OK
    assert await store.reclaim_expired() == []  # the lease still runs
    await asyncio.sleep(1.2)
    assert await store.reclaim_expired() == ["a"]
    job = await store.get("a")
    assert job is not None and job.status is Status.QUEUED and job.units_done == 1
    new = await store.claim("new", "live-instance")
    assert new is not None and new.job.attempts == 2
    for write in (store.store_unit(old, 1, b"\0\0"), store.heartbeat(old),
                  store.append_result(old, b"x"), store.finish(old, Status.DONE)):
        assert await write is Lease.LOST
    assert await store.requeue(old, 0, True, "", "") is None
    assert await store.done_units("a") == {0}  # the finished sentence survived
    await asyncio.sleep(1.2)
    assert await store.reclaim_expired() == ["a"]  # second lapse: attempts used up
    failed = await store.get("a")
    assert failed is not None and failed.status is Status.FAILED
    assert failed.error_code == "abandoned"


async def test_heartbeat_keeps_the_lease(make_store: StoreFactory) -> None:
    store = make_store()
    await store.submit("a", spec())
    claim = await store.claim("t", "me")
    assert claim is not None
    for _ in range(4):
        await asyncio.sleep(0.4)
        assert await store.heartbeat(claim) is Lease.OK
        assert await store.reclaim_expired() == []


async def test_cancel_queued_and_running(make_store: StoreFactory) -> None:
    store = make_store()
    await store.submit("queued", spec())
    await store.submit("running", spec())
    claim = await store.claim("t", "me")
    assert claim is not None and claim.job.id == "queued"
    # Cancel the other, still queued: it is cancelled at once and can never be claimed.
    cancelled = await store.cancel("running")
    assert cancelled is not None and cancelled.action is CancelAction.CANCELLED
    assert cancelled.job.status is Status.CANCELLED
    assert await store.claim("u", "me") is None
    # Cancel the running one: its runner hears of it at its next write or heartbeat.
    pending = await store.cancel("queued")
    assert pending is not None and pending.action is CancelAction.REQUESTED
    assert pending.job.status is Status.RUNNING and pending.job.cancel_requested
    assert await store.store_unit(claim, 0, b"\0\0") is Lease.CANCEL
    assert await store.heartbeat(claim) is Lease.CANCEL
    assert await store.finish(claim, Status.CANCELLED) is Lease.OK
    job = await store.get("queued")
    assert job is not None and job.status is Status.CANCELLED and job.units_done == 1
    again = await store.cancel("queued")
    assert again is not None and again.action is CancelAction.FINISHED
    assert again.job.status is Status.CANCELLED
    assert await store.cancel("missing") is None


async def test_a_cancel_says_what_it_did_when_the_runner_stops_the_job_first(
    redis_server,
) -> None:
    """Redis: a running job's runner can hear of the cancel and stop the job between the
    cancel script and the read of the job; the answer still says it was a request (202),
    not that the job was cancelled while queued (200). Memory cancels in one step."""
    store = RedisJobStore.from_url(redis_server.url, JobSettings(lease_ttl_s=1.0))
    try:
        await store.submit("a", spec())
        claim = await store.claim("t", "me")
        assert claim is not None
        read_job = store.get

        async def runner_lands_first(job_id: str):  # type: ignore[no-untyped-def]
            assert await store.store_unit(claim, 0, b"\0\0") is Lease.CANCEL
            assert await store.finish(claim, Status.CANCELLED) is Lease.OK
            return await read_job(job_id)

        store.get = runner_lands_first  # type: ignore[method-assign]
        outcome = await store.cancel("a")
        assert outcome is not None and outcome.action is CancelAction.REQUESTED
        assert outcome.job.status is Status.CANCELLED and outcome.job.units_done == 1
    finally:
        await store.close()


async def test_requeue_refund_delay_and_failure(make_store: StoreFactory) -> None:
    store = make_store(max_attempts=2)
    await store.submit("a", spec())
    claim = await store.claim("t1", "me")
    assert claim is not None
    assert await store.requeue(claim, 0.6, True, "overloaded", "busy") is Status.QUEUED
    assert await store.claim("t2", "me") is None  # not before its delay
    await asyncio.sleep(0.7)
    again = await store.claim("t2", "me")
    assert again is not None and again.job.attempts == 1  # the attempt was refunded
    assert await store.requeue(again, 0, False, "engine_unavailable", "down") is Status.QUEUED
    third = await store.claim("t3", "me")
    assert third is not None and third.job.attempts == 2
    assert await store.requeue(third, 0, False, "engine_unavailable", "down") is Status.FAILED
    job = await store.get("a")
    assert job is not None and job.error_code == "engine_unavailable"


async def test_queue_bounds_per_owner_and_in_total(make_store: StoreFactory) -> None:
    store = make_store(max_queued_per_owner=2, max_queued_total=3)
    await store.submit("a1", spec("alice"))
    await store.submit("a2", spec("alice"))
    with pytest.raises(QueueFull) as owner_full:
        await store.submit("a3", spec("alice"))
    assert owner_full.value.scope == "owner"
    await store.submit("b1", spec("bob"))
    with pytest.raises(QueueFull) as total_full:
        await store.submit("b2", spec("bob"))
    assert total_full.value.scope == "total"
    assert await store.claim("t", "me") is not None  # a1 leaves the queue
    await store.submit("a3", spec("alice"))  # room again, for alice too


async def test_idempotency_key_is_per_owner(make_store: StoreFactory) -> None:
    store = make_store()
    first = await store.submit("a", spec("alice", key="k"))
    again = await store.submit("b", spec("alice", key="k"))
    other = await store.submit("c", spec("bob", key="k"))
    assert first.created and not again.created and again.job.id == "a"
    assert other.created and other.job.id == "c"
    found = await store.find_idempotent("alice", "k")
    assert found is not None and found.id == "a"
    assert [job.id for job in await store.list_jobs("alice", 10)] == ["a"]


async def test_finished_jobs_expire(make_store: StoreFactory) -> None:
    store = make_store(result_ttl_s=1)
    await store.submit("a", spec(key="k"))
    claim = await store.claim("t", "me")
    assert claim is not None
    await store.append_result(claim, b"audio")
    await store.finish(claim, Status.DONE)
    assert await store.get("a") is not None
    await asyncio.sleep(1.3)
    assert await store.get("a") is None
    assert await store.result_size("a") == 0
    assert await store.find_idempotent("token:alice", "k") is None
    assert await store.list_jobs("token:alice", 10) == []


async def test_webhook_outbox(make_store: StoreFactory) -> None:
    store = make_store()
    await store.submit("a", spec(callback="http://127.0.0.1/hook"))
    await store.submit("b", spec())
    for _ in range(2):
        claim = await store.claim("t", "me")
        assert claim is not None
        await store.finish(claim, Status.FAILED, "bad_input", "no")
    due = await store.due_callbacks(lease_s=0.5, limit=10)
    assert [job.id for job in due] == ["a"]  # b has no callback
    assert await store.due_callbacks(lease_s=0.5, limit=10) == []  # hidden while tried
    await store.record_callback("a", "pending", 1, retry_in_s=0.3)
    assert await store.due_callbacks(lease_s=0.5, limit=10) == []
    await asyncio.sleep(0.4)
    (retry,) = await store.due_callbacks(lease_s=0.5, limit=10)
    assert retry.callback_attempts == 1 and retry.callback_status == "pending"
    await store.record_callback("a", "delivered", 2, retry_in_s=None)
    await asyncio.sleep(0.6)
    assert await store.due_callbacks(lease_s=0.5, limit=10) == []
    job = await store.get("a")
    assert job is not None and (job.callback_status, job.callback_attempts) == ("delivered", 2)


async def test_word_timings_outlive_the_sentences_of_a_done_job(make_store: StoreFactory) -> None:
    store = make_store()
    await store.submit("a", spec(units=2))
    await store.submit("b", spec(units=1))
    claim = await store.claim("token-1", "me")
    assert claim is not None
    assert await store.store_unit(claim, 0, b"\x01\x00" * 4, b"first") is Lease.OK
    assert await store.store_unit(claim, 0, b"\x01\x00" * 4, b"again") is Lease.OK  # ignored
    assert await store.store_unit(claim, 1, b"\x01\x00" * 4, b"second") is Lease.OK
    assert await store.unit_words("a") == {0: b"first", 1: b"second"}
    assert await store.finish(claim, Status.DONE) is Lease.OK
    assert await store.done_units("a") == set()
    assert await store.unit_words("a") == {0: b"first", 1: b"second"}
    assert await store.units("a") == ["Sentence 0.", "Sentence 1."]
    # A job that does not finish keeps none.
    other = await store.claim("token-2", "me")
    assert other is not None and other.job.id == "b"
    assert await store.store_unit(other, 0, b"\x01\x00", b"x") is Lease.OK
    assert await store.finish(other, Status.FAILED, "engine", "broken") is Lease.OK
    assert await store.unit_words("b") == {}
    assert await store.units("missing") == []
