"""Three instances behind a real nginx, sharing a real redis-server (AOF), on loopback.

One cluster for the whole module (pool.workers = 1 per instance, degradation off, short
leases); only the kill, restart and Redis-outage tests change it, and they leave it as
they found it: three ready instances and a running Redis.
"""

from __future__ import annotations

import asyncio
import hashlib
import statistics
import time
from collections.abc import Iterator

import aiohttp
import pytest
import redis

from tests.cluster.conftest import needs_nginx
from tests.cluster.helpers import (
    TOKENS,
    LoadResult,
    auth,
    get_json,
    retried_requests,
    same_audio,
    steady_load,
    tts_requests,
    units_completed,
)
from tests.support import merged, write_config
from tts_server.cluster import Cluster, ClusterOptions, Instance
from tts_server.cluster.cluster import shm_segments_of
from tts_server.cluster.processes import consecutive_free_ports

pytestmark = needs_nginx
JOBS_NS = "tts:jobs:v1"
METERED_RATE, METERED_BURST = 20.0, 10
ANONYMOUS_BURST = 5


def token(name: str, tier: str) -> dict[str, str]:
    return {"name": name, "tier": tier, "sha256": hashlib.sha256(TOKENS[name].encode()).hexdigest()}


UNLIMITED = {"requests_per_s": 1000.0, "burst": 1000, "chars_per_min": 100_000_000}
OVERRIDES = {
    "server": {"request_timeout_s": 30.0, "drain_timeout_s": 10.0},
    # 250 ms, not 50: on this shared 2-core machine a loaded event loop answers late, and
    # three slow L2 answers in a row put L2 in backoff, where a peer waiting for another
    # instance's synthesis cannot see it arrive. Back from backoff within a second.
    "cache": {"redis_timeout_ms": 250, "redis_backoff_max_s": 1.0},
    "limits": {"tiers": {
        "standard": UNLIMITED,
        "metered": {"requests_per_s": METERED_RATE, "burst": METERED_BURST,
                    "chars_per_min": 100_000_000, "features": ["tts"]},
        "anonymous": {"requests_per_s": 0.1, "burst": ANONYMOUS_BURST},
    }},
    "auth": {"allow_anonymous": True,
             "tokens": [token("alice", "standard"), token("metered", "metered")]},
    "jobs": {"lease_ttl_s": 3.0, "poll_interval_s": 0.2, "retry_delay_s": 0.5},
    "pool": {"restart_backoff_s": 0.2, "stop_timeout_s": 3.0},
}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    folder = tmp_path_factory.mktemp("cluster")
    config = write_config(folder / "config.toml", merged(OVERRIDES))
    options = ClusterOptions(instances=3, port=consecutive_free_ports(4), config=config,
                             workers=1, run_dir=folder / "run", redis_dir=folder / "redis",
                             cross_instance_wait_ms=15_000, ready_timeout_s=240)
    started = Cluster(options)
    pids: list[int] = []
    try:
        started.start()
        pids = [i.pid for i in started.instances]
        yield started
    finally:
        pids += [i.pid for i in started.instances if i.child.process is not None]
        started.stop()
    assert not started.leftovers()
    assert not [name for pid in pids for name in shm_segments_of(pid)]


@pytest.fixture
async def session() -> aiohttp.ClientSession:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=90)) as client:
        yield client


async def post_tts(session: aiohttp.ClientSession, url: str, text: str,
                   **headers: str) -> tuple[int, dict[str, str], bytes]:
    async with session.post(url + "/api/tts", json={"text": text},
                            headers={**auth(), **headers}) as response:
        return response.status, dict(response.headers), await response.read()


def l2_stores(instance: Instance) -> int:
    return int(get_json(instance.url + "/api/cache/stats")["l2"]["stores"])


async def wait_ready(instance: Instance, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while (await asyncio.to_thread(instance.readyz))[0] != 200:
        assert instance.child.running(), instance.child.log_tail()
        assert time.monotonic() < deadline, f"{instance.child.name} not ready"
        await asyncio.sleep(0.2)


async def restart(instance: Instance, timeout_s: float = 60.0) -> float:
    """SIGTERM, wait for the exit, start again (from this, the main, thread: the child's
    parent-death signal follows the thread that forked it), wait for /readyz."""
    started = time.monotonic()
    instance.terminate()
    while instance.child.running():
        assert time.monotonic() - started < timeout_s, f"{instance.child.name} did not exit"
        await asyncio.sleep(0.05)
    assert instance.child.process.returncode == 0, instance.child.log_tail()
    instance.force_stop()  # nothing left of it: reaped, group empty, no shared memory
    instance.start()
    await wait_ready(instance)
    return time.monotonic() - started


async def crash(instance: Instance) -> None:
    """SIGKILL the front; its workers exit on their own; then check nothing is left."""
    pid = instance.pid
    instance.kill()
    await asyncio.to_thread(instance.force_stop)
    assert not instance.child.leftovers()
    assert not shm_segments_of(pid)


async def load_while(cluster: Cluster, action, clients: int = 8, tag: str = "Load",
                     pool: list[str] | None = None, before_s: float = 3.0,
                     after_s: float = 3.0) -> tuple[LoadResult, object]:
    """Steady load through the proxy; `action` runs once it is going; the load goes on
    for after_s more, then stops."""
    stop = asyncio.Event()
    load = asyncio.create_task(steady_load(cluster.url, clients, stop, tag, pool))
    try:
        await asyncio.sleep(before_s)
        outcome = await action()
        await asyncio.sleep(after_s)
    finally:
        stop.set()
        result = await load
    return result, outcome


# ---- cache and coalescing -------------------------------------------------------------------


async def test_a_text_synthesized_on_one_instance_is_a_hit_on_the_others(cluster, session):
    text = "The shared cache answers this sentence on every instance."
    first, *others = cluster.instances
    stores = l2_stores(first)
    status, headers, audio = await post_tts(session, first.url, text)
    assert status == 200 and headers["X-Cache"] == "miss"
    # The L2 write runs in the background after the response (and after the cross-instance
    # marker is released: a peer asking in between synthesizes again; see docs/cluster.md).
    deadline = time.monotonic() + 5
    while l2_stores(first) == stores:
        assert time.monotonic() < deadline, "instance 1 never stored the audio in Redis"
        await asyncio.sleep(0.02)
    for other in others:
        status, headers, again = await post_tts(session, other.url, text)
        assert (status, headers["X-Cache"]) == (200, "hit-l2")
        assert again == audio


async def test_twenty_identical_requests_over_the_instances_cost_one_synthesis(cluster,
                                                                               session):
    text = "Twenty callers ask for this one sentence at the very same moment."
    before = [units_completed(i) for i in cluster.instances]
    served_before = [tts_requests(i) for i in cluster.instances]
    answers = await asyncio.gather(*(post_tts(session, cluster.url, text) for _ in range(20)))
    assert [status for status, _, _ in answers] == [200] * 20
    assert len({audio for _, _, audio in answers}) == 1
    served = [tts_requests(i) - b for i, b in zip(cluster.instances, served_before, strict=True)]
    assert sum(served) == 20 and sum(1 for n in served if n) >= 2, served  # spread by nginx
    spent = [units_completed(i) - b for i, b in zip(cluster.instances, before, strict=True)]
    assert sum(spent) == 1, spent
    origins = sorted(headers["X-Cache"] for _, headers, _ in answers)
    assert origins.count("miss") == 1, origins


# ---- limits ---------------------------------------------------------------------------------


async def test_a_token_rate_limit_holds_for_the_cluster_not_per_instance(cluster, session):
    text = "Metered callers all ask for this cached sentence."
    assert (await post_tts(session, cluster.url, text))[0] == 200  # cached from now on
    served_before = [tts_requests(i) for i in cluster.instances]
    statuses: list[int] = []
    retry_after: set[str | None] = set()
    duration_s = 5.0
    started = time.monotonic()

    async def client(http: aiohttp.ClientSession) -> None:
        while time.monotonic() - started < duration_s:
            async with http.post(cluster.url + "/api/tts", json={"text": text},
                                 headers=auth("metered")) as response:
                await response.read()
                statuses.append(response.status)
                if response.status == 429:
                    retry_after.add(response.headers.get("Retry-After"))
            await asyncio.sleep(0.05)

    connector = aiohttp.TCPConnector(limit=100)
    async with aiohttp.ClientSession(connector=connector) as http:
        await asyncio.gather(*(client(http) for _ in range(100)))
    elapsed = time.monotonic() - started
    allowed = statuses.count(200)
    expected = METERED_BURST + METERED_RATE * elapsed
    served = [tts_requests(i) - b for i, b in zip(cluster.instances, served_before, strict=True)]
    print(f"\nrate limit: {allowed} allowed of {len(statuses)} in {elapsed:.2f} s, "
          f"expected {expected:.1f} (x{allowed / expected:.3f}); per instance {served}")
    assert set(statuses) == {200, 429}
    assert min(served) > len(statuses) / 6  # every instance took its share
    assert 0.9 * expected <= allowed <= 1.1 * expected
    assert retry_after == {"1"}


async def test_anonymous_limits_count_real_clients_behind_the_proxy(cluster):
    """X-Forwarded-For from nginx is believed (auth.trusted_proxies = nginx's address);
    one a client sends is replaced by nginx, and is ignored when sent to an instance."""

    async def allowed(source: str, url: str, spoof: bool) -> int:
        connector = aiohttp.TCPConnector(local_addr=(source, 0))
        ok = 0
        async with aiohttp.ClientSession(connector=connector) as http:
            for n in range(ANONYMOUS_BURST + 3):
                headers = {"X-Forwarded-For": f"10.9.8.{n}"} if spoof else {}
                async with http.get(url + "/api/voices", headers=headers) as response:
                    ok += response.status == 200
        return ok

    proxy, direct = cluster.url, cluster.instances[0].url
    assert await allowed("127.0.0.3", proxy, spoof=False) == ANONYMOUS_BURST
    assert await allowed("127.0.0.4", proxy, spoof=False) == ANONYMOUS_BURST  # its own bucket
    assert await allowed("127.0.0.5", proxy, spoof=True) == ANONYMOUS_BURST
    assert await allowed("127.0.0.1", direct, spoof=True) == ANONYMOUS_BURST


async def test_a_shed_request_reaches_the_client_with_its_retry_after(cluster, session):
    """Every instance refuses it (the client gives 1 ms); nginx tries each once and passes
    the last answer on: the server's 503, code and Retry-After included."""
    text = "A request that no instance can answer within one millisecond of waiting."
    async with session.post(cluster.url + "/api/tts", json={"text": text},
                            headers={**auth(), "X-Deadline-Ms": "1"}) as response:
        body = await response.json()
        assert response.status == 503
        assert response.headers["Retry-After"] == "2"
        assert body["error"]["code"] == "would_miss_deadline"


# ---- jobs -----------------------------------------------------------------------------------


async def job(session: aiohttp.ClientSession, url: str, job_id: str) -> dict:
    async with session.get(f"{url}/api/tts/jobs/{job_id}", headers=auth()) as response:
        assert response.status == 200
        return await response.json()


async def wait_job(session, url: str, job_id: str, timeout_s: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while (doc := await job(session, url, job_id))["status"] not in ("done", "failed",
                                                                     "cancelled"):
        assert time.monotonic() < deadline, doc
        await asyncio.sleep(0.2)
    return doc


async def submit(session, url: str, text: str, key: str) -> str:
    async with session.post(url + "/api/tts/jobs", json={"text": text},
                            headers={**auth(), "Idempotency-Key": key}) as response:
        assert response.status == 202, await response.text()
        return (await response.json())["job_id"]


async def audio_of(session, url: str, job_id: str) -> bytes:
    async with session.get(f"{url}/api/tts/jobs/{job_id}/audio", headers=auth()) as response:
        assert response.status == 200
        return await response.read()


def sentences(start: int, count: int) -> str:
    nouns = ("boat", "house", "river", "garden", "window", "train", "letter", "market")
    return " ".join(f"The {nouns[(start + i) % 8]} number {start + i} waits quietly."
                    for i in range(count))


async def test_a_job_is_visible_cancellable_and_downloadable_through_any_instance(cluster,
                                                                                  session):
    urls = [i.url for i in cluster.instances]
    text = sentences(100, 4)
    job_id = await submit(session, cluster.url, text, "cluster-job-1")
    assert await submit(session, urls[2], text, "cluster-job-1") == job_id  # idempotent
    docs = [await wait_job(session, url, job_id) for url in urls]
    assert {doc["status"] for doc in docs} == {"done"}
    files = [await audio_of(session, url, job_id) for url in [cluster.url, *urls]]
    assert len(set(files)) == 1
    status, _, reference = await post_tts(session, cluster.url, text)
    assert status == 200 and same_audio(files[0], reference)

    long_id = await submit(session, urls[0], sentences(200, 60), "cluster-job-2")
    async with session.delete(f"{urls[1]}/api/tts/jobs/{long_id}", headers=auth()) as response:
        assert response.status in (200, 202), await response.text()
    cancelled = await wait_job(session, urls[2], long_id)
    assert cancelled["status"] == "cancelled"
    async with session.get(cluster.url + "/api/tts/jobs", headers=auth()) as response:
        listed = [j["job_id"] for j in (await response.json())["jobs"]]
    assert {job_id, long_id} <= set(listed) and len(listed) == len(set(listed))


async def test_a_job_whose_instance_is_killed_is_finished_by_another(cluster, session):
    store = redis.Redis.from_url(cluster.redis_url)
    text = sentences(300, 24)
    job_id = await submit(session, cluster.url, text, "cluster-job-killed")
    try:
        deadline = time.monotonic() + 60
        while True:
            fields = {k.decode(): v.decode() for k, v in
                      store.hgetall(f"{JOBS_NS}:job:{job_id}").items() if k != b"units"}
            if fields.get("status") == "running" and int(fields.get("units_done", 0)) >= 3:
                break
            assert time.monotonic() < deadline, fields
            await asyncio.sleep(0.05)
        pid = int(fields["instance"].split(":")[1])
        runner = next(i for i in cluster.instances if i.pid == pid)
        await crash(runner)
        survivor = next(i for i in cluster.instances if i is not runner)
        doc = await wait_job(session, survivor.url, job_id)
        runner.start()
        final = {k.decode(): v.decode() for k, v in
                 store.hgetall(f"{JOBS_NS}:job:{job_id}").items() if k != b"units"}
    finally:
        store.close()
    assert doc["status"] == "done" and doc["attempts"] == 2
    assert doc["progress"]["sentences_done"] == doc["progress"]["sentences_total"] == 24
    assert final["unit_writes"] == "24"  # no sentence stored twice
    assert int(final["instance"].split(":")[1]) != pid
    audio = await audio_of(session, cluster.url, job_id)
    status, _, reference = await post_tts(session, survivor.url, text)
    assert status == 200 and same_audio(audio, reference)  # complete, nothing duplicated
    await wait_ready(runner)


# ---- failover -------------------------------------------------------------------------------


async def test_an_instance_killed_under_load_costs_no_client_request(cluster):
    retried_before = retried_requests(cluster)
    victim = cluster.instances[1]

    async def kill_then_restart() -> None:
        await crash(victim)
        await asyncio.sleep(3.0)  # requests keep coming while it is down
        victim.start()
        await wait_ready(victim)

    result, _ = await load_while(cluster, kill_then_restart, tag="Killed")
    retried = retried_requests(cluster) - retried_before
    print(f"\nkill under load: {result.ok} ok, {result.failed} failed, {retried} retried")
    assert result.failed == 0, result.errors[:5]
    assert result.ok > 20
    assert retried >= 1  # the requests the dead instance held went elsewhere


async def test_a_rolling_restart_under_load_costs_no_client_request(cluster):
    retried_before = retried_requests(cluster)

    async def roll() -> list[float]:
        return [await restart(instance) for instance in cluster.instances]

    result, took = await load_while(cluster, roll, tag="Rolling")
    retried = retried_requests(cluster) - retried_before
    print(f"\nrolling restart: {result.ok} ok, {result.failed} failed, {retried} retried, "
          f"restarts took {[round(t, 1) for t in took]} s")
    assert result.failed == 0, result.errors[:5]
    assert result.ok > 20


async def test_redis_stopped_for_ten_seconds_under_load_costs_no_request(cluster, session):
    """Cache and limiter fail open while Redis is away; its AOF brings the entries back,
    and an instance that never saw a text finds it in Redis again."""
    first, _, last = cluster.instances
    stored = [f"Stored before the outage, sentence {n}." for n in range(4)]
    for text in stored:
        assert (await post_tts(session, first.url, text))[0] == 200
    await asyncio.sleep(1.5)  # appendfsync everysec
    assert cluster.redis is not None

    async def outage() -> None:
        cluster.redis.stop()
        await asyncio.sleep(10.0)
        cluster.redis.start()

    pool = [f"A popular sentence, number {n}." for n in range(6)]
    result, _ = await load_while(cluster, outage, clients=4, tag="Outage", pool=pool,
                                 after_s=2.0)
    print(f"\nredis outage: {result.ok} ok, {result.failed} failed, cache {dict(result.cache)}")
    assert result.failed == 0, result.errors[:5]
    deadline = time.monotonic() + 15
    while not get_json(last.url + "/api/cache/stats")["l2"]["available"]:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.2)
    origins = [(await post_tts(session, last.url, text))[1]["X-Cache"] for text in stored]
    assert origins == ["hit-l2"] * len(stored)


# ---- streaming ------------------------------------------------------------------------------


async def first_audio(session, url: str, text: str) -> tuple[float, float, int]:
    """Seconds to the first audio samples (past the 44-byte WAV header), to the end, and
    the number of reads that brought audio."""
    started = time.monotonic()
    first = None
    received = reads = 0
    async with session.post(url + "/api/tts", json={"text": text, "stream": True},
                            headers=auth()) as response:
        assert response.status == 200
        async for chunk in response.content.iter_any():
            received += len(chunk)
            if received > 44:
                reads += 1
                first = first if first is not None else time.monotonic() - started
    return first, time.monotonic() - started, reads


async def test_streaming_through_nginx_starts_before_the_text_is_synthesized(cluster,
                                                                              session):
    """Each instance in turn, direct and through nginx alternately, on unique texts."""
    direct: list[tuple[float, float, int]] = []
    proxied: list[tuple[float, float, int]] = []
    for n in range(6):
        text = " ".join(f"Stream test {n} sentence {k} has a few more words in it."
                        for k in range(6))
        target = cluster.instances[n % 3].url if n % 2 == 0 else cluster.url
        (direct if n % 2 == 0 else proxied).append(await first_audio(session, target, text))
    ttfb_direct = statistics.median(d[0] for d in direct)
    ttfb_proxy = statistics.median(p[0] for p in proxied)
    total_proxy = statistics.median(p[1] for p in proxied)
    print(f"\nstream: TTFB direct {ttfb_direct * 1000:.0f} ms, through nginx "
          f"{ttfb_proxy * 1000:.0f} ms (x{ttfb_proxy / ttfb_direct:.2f}); whole text "
          f"through nginx {total_proxy * 1000:.0f} ms")
    for first, total, reads in proxied:
        assert first < 0.5 * total and reads >= 2
    assert ttfb_proxy < 2 * ttfb_direct + 0.5  # the hop is ~1 ms; the rest is a shared CPU
