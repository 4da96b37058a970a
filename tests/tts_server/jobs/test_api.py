"""The async job API over real HTTP: real servers, a real redis-server, the real voice.

Most tests share one server on one Redis (module scope); the restart test has its own
pair of servers on its own Redis, and the in-memory store has its own server.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import io
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import redis
from aiohttp import web

from tests import support
from tests.support import ServerProcess, free_port, merged, shm_segments_of, write_config
from tts_server.cache.redis_server import RedisProcess
from tts_server.config import JobSettings
from tts_server.jobs.models import JobSpec
from tts_server.jobs.stores.redis import RedisJobStore

SECRET = "webhook-secret"
NS = "tts:jobs:v1"
FINISHED = ("done", "failed", "cancelled")
TOKENS = {name: f"{name}-secret-token" for name in ("alice", "bob", "carol", "tiny", "basic")}
TIERS = {
    "standard": {"requests_per_s": 1000.0, "burst": 1000},
    "tiny": {"requests_per_s": 1000.0, "burst": 1000, "chars_per_min": 100,
             "features": ["tts", "jobs"]},
    "basic": {"requests_per_s": 1000.0, "burst": 1000, "features": ["tts"]},
}
TOKEN_TIERS = {"tiny": "tiny", "basic": "basic"}
# Short sentences keep the whole file quick on two cores.
WORDS = ("red", "green", "blue", "small", "quiet", "bright", "old", "warm", "cold", "new")
NOUNS = ("boat", "house", "river", "garden", "window", "train", "letter", "market", "bridge")


def sentence(n: int) -> str:
    return f"The {WORDS[n % 10]} {NOUNS[n // 10 % 9]} waits {n // 90 + 1} times."


def paragraph(start: int, count: int) -> str:
    return " ".join(sentence(start + i) for i in range(count))


def token_entries() -> list[dict[str, str]]:
    return [{"name": name, "tier": TOKEN_TIERS.get(name, "standard"),
             "sha256": hashlib.sha256(token.encode()).hexdigest()}
            for name, token in TOKENS.items()]


def server_overrides(redis_setting: str, **sections: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {"cache": {"redis": redis_setting}, "auth": {"tokens": token_entries()},
            "limits": {"tiers": TIERS}, **sections}


def start_server(folder: Path, name: str, overrides: dict[str, dict[str, Any]],
                 job_settings: dict[str, Any]) -> ServerProcess:
    """A server with these [jobs] settings on top of the test configuration."""
    config = write_config(folder / f"{name}.toml", merged({**overrides, "jobs": job_settings}))
    server = ServerProcess(config, folder / f"{name}.log")
    try:
        server.wait_ready()
    except BaseException:
        server.stop()
        raise
    return server


def auth(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[name]}"}


class Client(support.Client):
    """One named caller of one server, with the job API's calls."""

    def __init__(self, session: aiohttp.ClientSession, url: str, name: str) -> None:
        super().__init__(session, url, TOKENS[name])
        self.url = url

    async def submit(self, body: dict[str, Any], **headers: str) -> tuple[int, Any, Any]:
        status, head, raw = await self.call("POST", "/api/tts/jobs", json=body, headers=headers)
        return status, head, json.loads(raw)

    async def job(self, job_id: str) -> dict[str, Any]:
        status, _, raw = await self.call("GET", f"/api/tts/jobs/{job_id}")
        assert status == 200, raw
        return json.loads(raw)

    async def created(self, body: dict[str, Any]) -> str:
        status, _, doc = await self.submit(body)
        assert status == 202, doc
        return doc["job_id"]

    async def wait(self, job_ids: list[str], timeout_s: float = 120.0) -> dict[str, dict]:
        deadline = time.monotonic() + timeout_s
        while True:
            docs = {job_id: await self.job(job_id) for job_id in job_ids}
            if all(doc["status"] in FINISHED for doc in docs.values()):
                return docs
            assert time.monotonic() < deadline, [d["progress"] for d in docs.values()]
            await asyncio.sleep(0.2)

    async def audio(self, job_id: str) -> bytes:
        status, _, body = await self.call("GET", f"/api/tts/jobs/{job_id}/audio")
        assert status == 200, body
        return body

    async def tts(self, body: dict[str, Any], **headers: str) -> tuple[int, bytes]:
        status, _, raw = await self.call("POST", "/api/tts", json=body, headers=headers)
        return status, raw


def samples(audio: bytes, api_format: str) -> np.ndarray:
    data = audio[44:] if api_format == "wav" else audio
    return np.frombuffer(data, "<i2").astype(np.int32)


def assert_same_audio(job_audio: bytes, tts_audio: bytes, api_format: str) -> None:
    a, b = samples(job_audio, api_format), samples(tts_audio, api_format)
    assert len(a) == len(b) > 0
    # Noise is off in the test config; only thread-count rounding may differ.
    assert np.abs(a - b).max() <= 64


def readyz(server: ServerProcess) -> dict[str, Any]:
    import urllib.request

    with urllib.request.urlopen(server.url + "/readyz", timeout=5) as response:
        return json.load(response)


def units_completed(server: ServerProcess) -> int:
    return int(readyz(server)["pools"]["piper"]["units_completed"])


@pytest.fixture(scope="module")
def redis_module() -> Iterator[RedisProcess]:
    server = RedisProcess(port=free_port()).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def jobs_server(redis_module: RedisProcess,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Big batches and three jobs at once: plenty of background work waits in the pool."""
    folder = tmp_path_factory.mktemp("jobs_server")
    settings = {"lease_ttl_s": 3, "max_concurrent": 3, "batch_units": 40, "poll_interval_s": 0.2,
                "webhook_hosts": ["127.0.0.1"], "webhook_secret": SECRET,
                "webhook_backoff_s": 0.2, "max_queued_per_owner": 30}
    server = start_server(folder, "jobs", server_overrides(redis_module.url), settings)
    yield server
    server.stop()


@pytest.fixture
async def session() -> Any:
    async with aiohttp.ClientSession() as client_session:
        yield client_session


# ---- results --------------------------------------------------------------------------------


async def test_twenty_jobs_of_varied_length_match_api_tts(jobs_server, session):
    alice = Client(session, jobs_server.url, "alice")
    bodies = [{"text": paragraph(i * 7, 1 + i % 6), "format": "pcm" if i % 4 == 3 else "wav"}
              for i in range(20)]
    ids = await asyncio.gather(*(alice.created(body) for body in bodies))
    docs = await alice.wait(ids)
    for job_id, body in zip(ids, bodies, strict=True):
        doc = docs[job_id]
        assert doc["status"] == "done", doc
        total = body["text"].count(".")
        assert doc["progress"]["sentences_done"] == doc["progress"]["sentences_total"] == total
    answers = await asyncio.gather(*(alice.tts(body) for body in bodies))  # fans out
    for job_id, body, (status, tts_audio) in zip(ids, bodies, answers, strict=True):
        doc = docs[job_id]
        job_audio = await alice.audio(job_id)
        assert status == 200
        assert_same_audio(job_audio, tts_audio, body["format"])
        assert doc["audio"]["bytes"] == len(job_audio)
        assert doc["progress"]["audio_seconds"] == pytest.approx(
            len(samples(job_audio, body["format"])) / 22050, abs=0.002)


async def test_progress_moves_monotonically(jobs_server, session):
    alice = Client(session, jobs_server.url, "alice")
    job_id = await alice.created({"text": paragraph(300, 14)})
    seen = []
    while not seen or seen[-1]["status"] not in FINISHED:
        seen.append(await alice.job(job_id))
        await asyncio.sleep(0.03)
    rank = {"queued": 0, "running": 1, "done": 2}
    statuses = [rank[doc["status"]] for doc in seen]
    done = [doc["progress"]["sentences_done"] for doc in seen]
    seconds = [doc["progress"]["audio_seconds"] for doc in seen]
    assert statuses == sorted(statuses) and statuses[-1] == 2
    assert done == sorted(done) and done[-1] == 14
    assert seconds == sorted(seconds) and seconds[-1] > 5
    assert any(0 < n < 14 for n in done), done  # progress shows while it runs
    final = seen[-1]
    assert final["created_at"] <= final["started_at"] <= final["finished_at"] < final["expires_at"]
    assert final["attempts"] == 1 and final["error"] is None


# ---- idempotency, ownership, quota ----------------------------------------------------------


async def test_idempotency_key_returns_the_same_job_per_owner(jobs_server, session):
    alice, bob = Client(session, jobs_server.url, "alice"), Client(session, jobs_server.url, "bob")
    body = {"text": paragraph(400, 2)}
    status, head, first = await alice.submit(body, **{"Idempotency-Key": "order-17"})
    assert status == 202 and first["status"] == "queued"
    assert first["status_url"] == f"/api/tts/jobs/{first['job_id']}"
    assert "Idempotent-Replayed" not in head
    status, head, again = await alice.submit(body, **{"Idempotency-Key": "order-17"})
    assert status == 202 and again["job_id"] == first["job_id"]
    assert head["Idempotent-Replayed"] == "true"
    status, _, other = await bob.submit(body, **{"Idempotency-Key": "order-17"})
    assert status == 202 and other["job_id"] != first["job_id"]  # keys are per owner
    status, _, reused = await alice.submit({"text": "Something else."},
                                           **{"Idempotency-Key": "order-17"})
    assert status == 422 and reused["error"]["code"] == "idempotency_key_reused"
    status, _, plain = await alice.submit(body)
    assert status == 202 and plain["job_id"] != first["job_id"]  # no key: a new job
    await alice.wait([first["job_id"], plain["job_id"]])
    await bob.wait([other["job_id"]])
    _, _, raw = await alice.call("GET", "/api/tts/jobs?limit=100")
    listed = [doc["job_id"] for doc in json.loads(raw)["jobs"]]
    assert listed.count(first["job_id"]) == 1


async def test_jobs_belong_to_their_owner(jobs_server, session):
    alice, bob = Client(session, jobs_server.url, "alice"), Client(session, jobs_server.url, "bob")
    job_id = await alice.created({"text": paragraph(500, 1)})
    await alice.wait([job_id])
    for method, path in (("GET", ""), ("GET", "/audio"), ("DELETE", "")):
        status, _, raw = await bob.call(method, f"/api/tts/jobs/{job_id}{path}")
        assert status == 404 and json.loads(raw)["error"]["code"] == "job_not_found"
    _, _, raw = await bob.call("GET", "/api/tts/jobs")
    assert job_id not in [doc["job_id"] for doc in json.loads(raw)["jobs"]]
    _, _, raw = await alice.call("GET", "/api/tts/jobs?status=done")
    assert job_id in [doc["job_id"] for doc in json.loads(raw)["jobs"]]
    assert (await alice.call("GET", f"/api/tts/jobs/{job_id}/audio"))[0] == 200
    basic = Client(session, jobs_server.url, "basic")  # a tier without the "jobs" feature
    status, _, raw = await basic.call("GET", f"/api/tts/jobs/{job_id}")
    assert status == 403 and json.loads(raw)["error"]["code"] == "feature_not_allowed"
    status, _, _ = await basic.submit({"text": "Hello."})
    assert status == 403
    async with session.get(f"{jobs_server.url}/api/tts/jobs/{job_id}") as response:
        assert response.status == 401  # no token at all


async def test_job_text_counts_against_the_character_quota(jobs_server, session):
    tiny = Client(session, jobs_server.url, "tiny")  # 100 characters per minute
    status, _, doc = await tiny.submit({"text": paragraph(600, 5)})
    assert status == 413 and doc["error"]["code"] == "text_exceeds_quota"
    first = await tiny.created({"text": paragraph(610, 2)})
    status, head, doc = await tiny.submit({"text": paragraph(620, 2)})
    assert status == 429 and doc["error"]["code"] == "char_quota_exceeded"
    assert int(head["Retry-After"]) >= 1
    await tiny.wait([first])


async def test_long_texts_and_bad_bodies(jobs_server, session):
    alice = Client(session, jobs_server.url, "alice")
    status, _, doc = await alice.submit({"text": "word " * 20_001})  # > 100,000 characters
    assert status == 413 and doc["error"]["code"] == "text_too_long"
    long_text = paragraph(0, 200)
    assert len(long_text) > 5000
    status, _ = await alice.tts({"text": long_text})
    assert status == 413  # /api/tts stops at text.max_text_chars ...
    status, _, doc = await alice.submit({"text": long_text})
    assert status == 202, doc  # ... a job does not
    assert doc["progress"]["sentences_total"] == 200
    assert (await alice.call("DELETE", f"/api/tts/jobs/{doc['job_id']}"))[0] in (200, 202)
    assert (await alice.wait([doc["job_id"]]))[doc["job_id"]]["status"] == "cancelled"
    bob = Client(session, jobs_server.url, "bob")
    big = {"text": "你好。" * 15_000}  # JSON-escaped: 270 KB, over server.max_body_bytes
    assert len(json.dumps(big)) > 262_144
    status, _, doc = await bob.submit(big)
    assert status == 202 and doc["progress"]["sentences_total"] == 15_000
    assert (await bob.call("DELETE", f"/api/tts/jobs/{doc['job_id']}"))[0] in (200, 202)
    assert (await bob.wait([doc["job_id"]]))[doc["job_id"]]["status"] == "cancelled"
    huge = io.BytesIO(json.dumps({"text": "你好。" * 60_000}).encode())  # over 1 MiB
    status, _, raw = await bob.call("POST", "/api/tts/jobs", data=huge,
                                    headers={"Content-Type": "application/json"})
    assert status == 413 and json.loads(raw)["error"]["code"] == "body_too_large"
    for body, code in (({"text": "Hi.", "stream": True}, "invalid_stream"),
                       ({"text": "Hi.", "format": "ogg"}, "invalid_format"),
                       ({"text": ""}, "empty_text"), ({}, "missing_text")):
        status, _, doc = await alice.submit(body)
        assert status == 400 and doc["error"]["code"] == code
    status, _, doc = await alice.submit({"text": "Hi."}, **{"Idempotency-Key": "x" * 300})
    assert status == 400 and doc["error"]["code"] == "invalid_idempotency_key"


# ---- cancellation ---------------------------------------------------------------------------


async def test_cancel_queued_and_running_jobs(jobs_server, session):
    carol = Client(session, jobs_server.url, "carol")
    # Three long jobs fill the runner's three slots; the fourth must wait in the queue.
    long_ids = [await carol.created({"text": paragraph(700 + 40 * i, 30)}) for i in range(3)]
    queued = await carol.created({"text": paragraph(900, 3)})
    assert (await carol.job(queued))["status"] == "queued"
    status, _, raw = await carol.call("DELETE", f"/api/tts/jobs/{queued}")
    assert status == 200 and json.loads(raw)["status"] == "cancelled"
    running = long_ids[0]
    while (doc := await carol.job(running))["progress"]["sentences_done"] < 1:
        assert doc["status"] in ("queued", "running")
        await asyncio.sleep(0.05)
    status, _, raw = await carol.call("DELETE", f"/api/tts/jobs/{running}")
    assert status == 202 and json.loads(raw)["cancel_requested"] is True
    docs = await carol.wait(long_ids + [queued])
    stopped = docs[running]
    assert stopped["status"] == "cancelled"
    assert stopped["progress"]["sentences_done"] < 30
    assert [docs[i]["status"] for i in long_ids[1:]] == ["done", "done"]
    never = docs[queued]
    assert never["started_at"] is None and never["attempts"] == 0
    assert never["progress"]["sentences_done"] == 0
    status, _, raw = await carol.call("GET", f"/api/tts/jobs/{running}/audio")
    assert status == 409 and json.loads(raw)["error"]["code"] == "job_not_done"
    status, _, raw = await carol.call("DELETE", f"/api/tts/jobs/{queued}")
    assert status == 409 and json.loads(raw)["error"]["code"] == "job_finished"
    await asyncio.sleep(0.5)
    assert (await carol.job(running))["progress"] == stopped["progress"]  # nothing ran on


# ---- audio and ranges -----------------------------------------------------------------------


async def test_audio_is_409_until_done_then_served_with_ranges(jobs_server, session):
    alice = Client(session, jobs_server.url, "alice")
    job_id = await alice.created({"text": paragraph(1000, 20)})
    status, _, raw = await alice.call("GET", f"/api/tts/jobs/{job_id}/audio")
    assert status == 409 and json.loads(raw)["error"]["code"] == "job_not_done"
    await alice.wait([job_id])
    path = f"/api/tts/jobs/{job_id}/audio"
    status, head, whole = await alice.call("GET", path)
    size = len(whole)
    assert status == 200 and head["Content-Type"] == "audio/wav"
    assert head["Accept-Ranges"] == "bytes"
    assert int(head["Content-Length"]) == size and whole[:4] == b"RIFF"
    etag = head["ETag"]
    cases = {"bytes=0-99": (0, 99), "bytes=-100": (size - 100, size - 1),
             f"bytes={size - 10}-": (size - 10, size - 1), f"bytes=50-{size + 500}": (50, size - 1)}
    for header, (start, end) in cases.items():
        status, head, part = await alice.call("GET", path, headers={"Range": header})
        assert status == 206, header
        assert head["Content-Range"] == f"bytes {start}-{end}/{size}"
        assert part == whole[start:end + 1]
    for header in (f"bytes={size}-", "bytes=10-5", "bytes=abc", "bytes=-0"):
        status, head, _ = await alice.call("GET", path, headers={"Range": header})
        assert status == 416, header
        assert head["Content-Range"] == f"bytes */{size}"
    status, _, body = await alice.call("GET", path, headers={"Range": "bytes=0-1,5-9"})
    assert status == 200 and body == whole  # several ranges: the whole file
    status, _, body = await alice.call("GET", path, headers={"Range": "bytes=0-9",
                                                            "If-Range": '"stale"'})
    assert status == 200 and body == whole
    status, _, body = await alice.call("GET", path, headers={"Range": "bytes=0-9",
                                                            "If-Range": etag})
    assert status == 206 and body == whole[:10]


# ---- interactive traffic under a burst ------------------------------------------------------


async def test_interactive_requests_keep_their_deadline_under_a_job_burst(jobs_server, session):
    alice = Client(session, jobs_server.url, "alice")
    burst = [await alice.created({"text": paragraph(1100 + 40 * i, 40)}) for i in range(12)]
    deadline_ms = 5000
    waiting_lane2 = []
    try:
        for i in range(6):
            await asyncio.sleep(0.3)
            waiting_lane2.append(readyz(jobs_server)["pools"]["piper"]["queued_by_priority"]
                                 .get("2", 0))
            started = time.monotonic()
            status, _ = await alice.tts({"text": f"Interactive request {i} arrives now."},
                                        **{"X-Deadline-Ms": str(deadline_ms)})
            elapsed = time.monotonic() - started
            assert status == 200
            assert elapsed < deadline_ms / 1000, elapsed
        # Background work was waiting in the pool the whole time, ahead in arrival order.
        assert min(waiting_lane2) >= 20, waiting_lane2
        docs = [await alice.job(job_id) for job_id in burst]
        assert sum(doc["status"] != "done" for doc in docs) >= 6
    finally:
        for job_id in burst:
            await alice.call("DELETE", f"/api/tts/jobs/{job_id}")
        await alice.wait(burst)


# ---- webhooks -------------------------------------------------------------------------------


async def test_webhook_is_signed_retried_and_allow_listed(jobs_server, session):
    received: list[tuple[dict[str, str], bytes]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append((dict(request.headers), await request.read()))
        return web.Response(status=500 if len(received) == 1 else 204)  # the first one fails

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    alice = Client(session, jobs_server.url, "alice")
    try:
        job_id = await alice.created({"text": paragraph(1600, 2),
                                      "callback_url": f"http://127.0.0.1:{port}/hook"})
        await alice.wait([job_id])
        for _ in range(100):
            if len(received) >= 2:
                break
            await asyncio.sleep(0.1)
    finally:
        await runner.cleanup()
    assert len(received) == 2
    for attempt, (headers, body) in enumerate(received, start=1):
        expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(headers["X-TTS-Signature"], expected)
        assert headers["X-TTS-Attempt"] == str(attempt)
        document = json.loads(body)
        assert document["event"] == "job.done" and document["job"]["job_id"] == job_id
        assert document["job"]["status"] == "done"
    doc = await alice.job(job_id)
    assert doc["callback"]["status"] == "delivered" and doc["callback"]["attempts"] == 2
    for url, code in ((f"http://localhost:{port}/hook", "callback_not_allowed"),
                      ("http://169.254.169.254/latest", "callback_not_allowed"),
                      ("http://10.0.0.1/hook", "callback_not_allowed"),
                      (f"ftp://127.0.0.1:{port}/hook", "invalid_callback_url"),
                      (f"http://user:pw@127.0.0.1:{port}/hook", "invalid_callback_url")):
        status, _, doc = await alice.submit({"text": "Hello.", "callback_url": url})
        assert status == 400 and doc["error"]["code"] == code, url


# ---- durability -----------------------------------------------------------------------------


def job_fields(store: redis.Redis, job_ids: list[str]) -> dict[str, dict[str, str]]:
    """Each job's hash as stored, read straight from Redis (the servers may be dead)."""
    return {job_id: {k.decode(): v.decode() for k, v in store.hgetall(f"{NS}:job:{job_id}").items()
                     if k != b"units"} for job_id in job_ids}


async def until_reclaimed(store: redis.Redis, job_ids: list[str], instances: set[str],
                          timeout_s: float = 30.0) -> None:
    """Until no job is running under these (dead) instances: their leases lapsed and a live
    instance reclaimed them. Before that they stay "running", and no other instance's
    graceful stop may hand them back (it does not hold them)."""
    deadline = time.monotonic() + timeout_s
    while any(job["status"] == "running" and job.get("instance") in instances
              for job in job_fields(store, job_ids).values()):
        assert time.monotonic() < deadline, job_fields(store, job_ids)
        await asyncio.sleep(0.05)


async def run_until_stored(client: Client, job_ids: list[str], sentences: int) -> None:
    while True:
        docs = [await client.job(job_id) for job_id in job_ids]
        if sum(doc["progress"]["sentences_done"] for doc in docs) >= sentences:
            return
        await asyncio.sleep(0.02)


@pytest.fixture
async def hook_receiver() -> Any:
    """A webhook receiver on 127.0.0.1: (url, list of received job ids)."""
    received: list[str] = []

    async def hook(request: web.Request) -> web.Response:
        received.append(json.loads(await request.read())["job"]["job_id"])
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield port, received
    await runner.cleanup()


async def test_sigkill_then_sigterm_mid_run_and_every_job_finishes_once(
        redis_server, tmp_path, session, hook_receiver):
    hook_port, received = hook_receiver
    settings = {"lease_ttl_s": 2, "max_concurrent": 2, "batch_units": 2, "poll_interval_s": 0.2,
                "webhook_hosts": [f"127.0.0.1:{hook_port}"], "webhook_secret": SECRET}
    overrides = server_overrides(redis_server.url)
    store = redis.Redis.from_url(redis_server.url)
    servers = [start_server(tmp_path, "first", overrides, settings)]
    try:
        alice = Client(session, servers[0].url, "alice")
        texts = [paragraph(2000 + 10 * i, 8) for i in range(6)]
        callback = f"http://127.0.0.1:{hook_port}/hook"
        ids = [await alice.created({"text": text, "callback_url": callback}) for text in texts]
        # 1. SIGKILL mid-run: the jobs it ran keep their lease until it lapses.
        await run_until_stored(alice, ids, 10)
        servers[0].stop(signal.SIGKILL)
        for name in shm_segments_of(servers[0].pid):  # a SIGKILLed front cannot unlink them
            os.unlink(f"/dev/shm/{name}")
        at_kill = job_fields(store, ids)
        assert any(job["status"] == "running" for job in at_kill.values())
        # 2. A new instance reclaims them; SIGTERM it mid-run: it hands its jobs back.
        servers.append(start_server(tmp_path, "second", overrides, settings))
        alice = Client(session, servers[1].url, "alice")
        stored_at_kill = sum(int(job["units_done"]) for job in at_kill.values())
        # The dead instance's leases lapse lease_ttl_s after the kill, and the new one
        # reclaims them at its next check (every lease_ttl_s / 3). A new instance that is
        # ready and stores 10 sentences sooner than that (a fast machine, the INT8 model)
        # would otherwise be stopped while those jobs are still "running" under the dead one.
        dead = {job["instance"] for job in at_kill.values() if job["status"] == "running"}
        await until_reclaimed(store, ids, dead)
        await run_until_stored(alice, ids, stored_at_kill + 10)
        started = time.monotonic()
        # In a thread: the webhook receiver runs on this loop and must keep answering while
        # the server drains (its sender still delivers then; a receiver blocked by a
        # synchronous wait timed the delivery out, and it was sent again later).
        assert await asyncio.to_thread(servers[1].stop, signal.SIGTERM) == 0
        assert time.monotonic() - started < 10
        at_stop = job_fields(store, ids)
        assert {job["status"] for job in at_stop.values()} <= {"queued", "done"}
        assert store.zcard(f"{NS}:leases") == 0
        stored_at_stop = sum(int(job["units_done"]) for job in at_stop.values())
        assert stored_at_stop < 48
        # 3. A third instance finishes everything, synthesizing only what was not stored.
        servers.append(start_server(tmp_path, "third", overrides, settings))
        alice = Client(session, servers[2].url, "alice")
        docs = await alice.wait(ids, timeout_s=90)
        assert [doc["status"] for doc in docs.values()] == ["done"] * 6
        assert units_completed(servers[2]) == 48 - stored_at_stop
        final = job_fields(store, ids)
        for job_id in ids:
            assert final[job_id]["unit_writes"] == "8"  # no sentence was stored twice
            # Only the SIGKILL costs an attempt; the SIGTERM hand-back refunds its own.
            running_at_kill = at_kill[job_id]["status"] == "running"
            assert final[job_id]["attempts"] == ("2" if running_at_kill else "1")
        resumed = next(i for i in ids if at_kill[i]["status"] == "running")
        status, tts_audio = await alice.tts({"text": texts[ids.index(resumed)]})
        assert status == 200
        assert_same_audio(await alice.audio(resumed), tts_audio, "wav")
        for _ in range(50):
            if len(received) >= 6:
                break
            await asyncio.sleep(0.1)
        assert sorted(received) == sorted(ids)  # each job's webhook, exactly once
    finally:
        for server in servers:
            server.stop()
        store.close()


# A Lua script that makes one queued job due, then holds Redis for ARGV[2] ms: commands
# sent meanwhile (the runner's claim) wait in Redis and run after it, in arrival order.
HOLD_REDIS = """
redis.call('ZADD', KEYS[1], 'XX', 0, ARGV[1])
local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local until_us = now_us() + tonumber(ARGV[2]) * 1000
while now_us() < until_us do end
return 1
"""


async def test_a_claim_granted_while_the_runner_stops_goes_back_to_the_queue(
        redis_server, tmp_path):
    """SIGTERM while the runner's claim is in flight: the job it wins is handed back.

    The job waits in the queue, not yet due, before the server starts. A script then makes
    it due and holds Redis for 1.5 s; the idle runner's next poll sends its claim, which
    Redis runs only after the script, while the server is already stopping. The stop
    must not leave that job "running" under a lease nobody renews.
    """
    seed = RedisJobStore.from_url(redis_server.url, JobSettings())
    units = tuple(sentence(2500 + i) for i in range(4))
    spec = JobSpec(owner="alice", units=units, chars=sum(map(len, units)), voice="joe",
                   speed=1.0, speaker_id=None, api_format="wav", audio_format="wav",
                   sample_rate=22050)
    try:
        job_id = (await seed.submit("claimed-while-stopping", spec)).job.id
    finally:
        await seed.close()
    store = redis.Redis.from_url(redis_server.url, socket_timeout=10)
    store.zadd(f"{NS}:queue", {job_id: 2**50}, xx=True)  # queued, due in the far future
    settings = {"lease_ttl_s": 30, "max_concurrent": 1, "poll_interval_s": 0.05}
    server = start_server(tmp_path, "claiming", server_overrides(redis_server.url), settings)
    try:
        hold = asyncio.create_task(asyncio.to_thread(
            store.eval, HOLD_REDIS, 1, f"{NS}:queue", job_id, 1500))
        await asyncio.sleep(0.5)  # the runner polls every 50 ms: its claim now waits
        assert not hold.done()
        assert await asyncio.to_thread(server.stop, signal.SIGTERM) == 0
        await hold
        job = job_fields(store, [job_id])[job_id]
        assert job["status"] == "queued", job
        assert job["attempts"] == "0" and job["lease"] == ""
        assert store.zcard(f"{NS}:leases") == 0
        assert store.zscore(f"{NS}:queue", job_id) is not None
    finally:
        server.stop()
        store.close()


# ---- the in-memory store: bounds, expiry, the degradation pause ----------------------------


@pytest.fixture(scope="module")
def memory_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Path]]:
    """No Redis; a CPU-reading file drives the degradation ladder."""
    folder = tmp_path_factory.mktemp("memory_server")
    cpu_file = folder / "cpu"
    cpu_file.write_text("0")
    degradation = {"enabled": True, "cpu_reading_file": str(cpu_file),
                   "only_with_interactive_load": False, "sample_interval_s": 0.1,
                   "window_s": 0.5, "down_window_s": 0.5}
    settings = {"max_concurrent": 1, "max_queued_per_owner": 2, "max_queued_total": 3,
                "result_ttl_s": 3, "poll_interval_s": 0.1, "batch_units": 2}
    overrides = server_overrides("off", degradation=degradation)
    server = start_server(folder, "memory", overrides, settings)
    yield server, cpu_file
    server.stop()


async def test_queue_bounds_answer_429_per_owner_and_503_in_total(memory_server, session):
    server, _ = memory_server
    alice, bob = Client(session, server.url, "alice"), Client(session, server.url, "bob")
    running = await alice.created({"text": paragraph(3000, 30)})
    while (await alice.job(running))["status"] == "queued":
        await asyncio.sleep(0.05)
    mine = [await alice.created({"text": paragraph(3100 + i, 1)}) for i in range(2)]
    status, head, doc = await alice.submit({"text": "One more."})
    assert status == 429 and doc["error"]["code"] == "too_many_queued_jobs"
    assert int(head["Retry-After"]) >= 1
    theirs = await bob.created({"text": paragraph(3200, 1)})
    status, head, doc = await bob.submit({"text": "One more."})
    assert status == 503 and doc["error"]["code"] == "job_queue_full"
    assert int(head["Retry-After"]) >= 1
    for client, job_id in [(alice, running), *((alice, i) for i in mine), (bob, theirs)]:
        await client.call("DELETE", f"/api/tts/jobs/{job_id}")
    await alice.wait([running, *mine])
    await bob.wait([await bob.created({"text": "Room again."})])


async def test_results_expire_after_the_ttl(memory_server, session):
    server, _ = memory_server
    alice = Client(session, server.url, "alice")
    key = {"Idempotency-Key": "expiring"}
    _, _, doc = await alice.submit({"text": paragraph(3300, 2)}, **key)
    job_id = doc["job_id"]
    done = (await alice.wait([job_id]))[job_id]
    assert done["status"] == "done" and len(await alice.audio(job_id)) > 44
    await asyncio.sleep(3.3)
    for path in ("", "/audio"):
        assert (await alice.call("GET", f"/api/tts/jobs/{job_id}{path}"))[0] == 404
    _, _, raw = await alice.call("GET", "/api/tts/jobs")
    assert job_id not in [d["job_id"] for d in json.loads(raw)["jobs"]]
    _, _, again = await alice.submit({"text": paragraph(3300, 2)}, **key)
    assert again["job_id"] != job_id  # the key expired with its job
    await alice.wait([again["job_id"]])


async def test_jobs_pause_while_the_degradation_ladder_is_up(memory_server, session):
    server, cpu_file = memory_server
    alice = Client(session, server.url, "alice")
    cpu_file.write_text("100")
    try:
        for _ in range(100):
            if readyz(server)["degradation_level"] >= 1:
                break
            await asyncio.sleep(0.1)
        assert readyz(server)["degradation_level"] >= 1
        job_id = await alice.created({"text": paragraph(3400, 2)})
        await asyncio.sleep(1.5)
        assert (await alice.job(job_id))["status"] == "queued"
    finally:
        cpu_file.write_text("0")
    done = (await alice.wait([job_id], timeout_s=30))[job_id]
    assert done["status"] == "done"
    assert readyz(server)["degradation_level"] == 0


# ---- captions -------------------------------------------------------------------------------


async def test_a_done_job_has_captions_beside_its_audio(jobs_server, session):
    alice = Client(session, jobs_server.url, "alice")
    text = "First sentence of the chapter. In 2024 the price was $5.50! Last one, here."
    job_id = await alice.created({"text": text})
    status, _, body = await alice.call("GET", f"/api/tts/jobs/{job_id}/captions")
    if status != 409:  # it may already be done
        assert status == 200, body
    docs = await alice.wait([job_id])
    assert docs[job_id]["status"] == "done"
    status, headers, body = await alice.call("GET", f"/api/tts/jobs/{job_id}/captions?format=vtt")
    assert status == 200, body
    assert headers["Content-Type"] == "text/vtt; charset=utf-8"
    vtt = body.decode()
    assert vtt.startswith("WEBVTT\n\n")
    cues = [block.split("\n") for block in vtt.split("\n\n")[1:] if block.strip()]
    assert [cue[1] for cue in cues] == ["First sentence of the chapter.",
                                        "In 2024 the price was $5.50!", "Last one, here."]
    duration = docs[job_id]["progress"]["audio_seconds"]
    ends = [cue[0].split(" --> ") for cue in cues]
    seconds = [[_clock(a), _clock(b)] for a, b in ends]
    assert all(a < b for a, b in seconds)
    assert all(seconds[i][1] <= seconds[i + 1][0] for i in range(len(seconds) - 1))
    assert seconds[-1][1] <= duration + 0.01 and seconds[-1][1] > 0.7 * duration
    status, headers, body = await alice.call("GET", f"/api/tts/jobs/{job_id}/captions?format=srt")
    assert status == 200 and headers["Content-Type"].startswith("application/x-subrip")
    assert body.decode().startswith("1\n00:00:00,")
    status, _, body = await alice.call("GET", f"/api/tts/jobs/{job_id}/captions?format=ass")
    assert status == 400 and json.loads(body)["error"]["code"] == "invalid_captions"
    bob = Client(session, jobs_server.url, "bob")
    status, _, _ = await bob.call("GET", f"/api/tts/jobs/{job_id}/captions")
    assert status == 404  # someone else's job


def _clock(value: str) -> float:
    hours, minutes, seconds = value.split(":")
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
