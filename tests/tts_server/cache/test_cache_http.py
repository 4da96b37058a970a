"""The cache seen through HTTP: X-Cache, coalescing, Redis failures, several instances."""

import asyncio

import aiohttp
import pytest
import redis

from tests.support import decode_wav

SENTENCE = "The cache should remember this sentence for a long while."


async def tts(url: str, body: dict) -> tuple[int, str | None, bytes]:
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{url}/api/tts", json=body) as response:
            return response.status, response.headers.get("X-Cache"), await response.read()


async def get_json(url: str, path: str) -> dict:
    async with aiohttp.ClientSession() as session:
        async with session.get(url + path) as response:
            return await response.json()


async def units_synthesized(url: str) -> int:
    return (await get_json(url, "/readyz"))["pools"]["piper"]["units_completed"]


async def test_repeat_is_an_l1_hit_with_identical_audio(running_server):
    server = running_server({"cache": {"redis": "off"}})
    status, cache, first = await tts(server.url, {"text": SENTENCE})
    assert (status, cache) == (200, "miss")
    status, cache, again = await tts(server.url, {"text": "  " + SENTENCE.replace(" ", "   ")})
    assert (status, cache) == (200, "hit-l1")
    assert again == first
    # The very same body again: its parse is remembered, the answer is the same file.
    assert await tts(server.url, {"text": SENTENCE}) == (200, "hit-l1", first)
    _, cache, pcm = await tts(server.url, {"text": SENTENCE, "format": "pcm"})
    assert cache == "hit-l1" and pcm == first[44:]
    _, cache, _ = await tts(server.url, {"text": SENTENCE, "speed": 1.25})
    assert cache == "miss"
    stats = await get_json(server.url, "/api/cache/stats")
    assert stats["l1"]["hits"] == 3 and stats["l1"]["entries"] == 2 and stats["l2"] is None


async def test_streamed_synthesis_is_stored_and_a_hit_streams(running_server):
    server = running_server({"cache": {"redis": "off"}})
    status, cache, streamed = await tts(server.url, {"text": SENTENCE, "stream": True})
    assert (status, cache) == (200, "miss")
    status, cache, hit = await tts(server.url, {"text": SENTENCE, "stream": True})
    assert (status, cache) == (200, "hit-l1")
    assert hit == streamed
    _, cache, whole = await tts(server.url, {"text": SENTENCE})
    assert cache == "hit-l1" and whole[44:] == streamed[44:]


async def test_20_identical_concurrent_requests_synthesize_once(running_server):
    server = running_server({"cache": {"redis": "off"}})
    before = await units_synthesized(server.url)
    results = await asyncio.gather(
        *(tts(server.url, {"text": SENTENCE, "stream": i % 2 == 0}) for i in range(20))
    )
    assert [status for status, _, _ in results] == [200] * 20
    statuses = sorted(cache for _, cache, _ in results)
    assert statuses.count("miss") == 1
    assert set(statuses) <= {"miss", "coalesced", "hit-l1"}
    assert await units_synthesized(server.url) - before == 1
    pcm = {body[44:] for _, _, body in results}
    assert len(pcm) == 1


async def test_redis_killed_then_restarted_without_restarting_the_server(
    running_server, redis_server
):
    server = running_server(
        {"cache": {"redis": redis_server.url, "l1_max_bytes": 0, "redis_backoff_max_s": 0.3}}
    )
    assert (await tts(server.url, {"text": SENTENCE}))[1] == "miss"
    assert (await tts(server.url, {"text": SENTENCE}))[1] == "hit-l2"
    redis_server.kill()
    for text in (SENTENCE, "Redis is down but we still speak."):
        status, cache, body = await tts(server.url, {"text": text})
        assert (status, cache) == (200, "miss")
        assert len(decode_wav(body)[0]) > 0
    assert (await get_json(server.url, "/api/cache/stats"))["l2"]["errors"] >= 1
    redis_server.start()
    await asyncio.sleep(0.5)  # past the backoff
    assert (await tts(server.url, {"text": "Back again."}))[1] == "miss"
    await asyncio.sleep(0.1)
    assert (await tts(server.url, {"text": "Back again."}))[1] == "hit-l2"


async def test_two_instances_share_l2(running_server, redis_server):
    cache = {"redis": redis_server.url}
    first = running_server({"cache": cache})
    second = running_server({"cache": cache})
    assert (await tts(first.url, {"text": SENTENCE}))[1] == "miss"
    await asyncio.sleep(0.1)
    status, hit, _ = await tts(second.url, {"text": SENTENCE})
    assert (status, hit) == (200, "hit-l2")


async def test_instances_coalesce_through_a_redis_marker(running_server, redis_server):
    cache = {"redis": redis_server.url, "cross_instance_wait_ms": 10000}
    servers = [running_server({"cache": cache}), running_server({"cache": cache})]
    before = sum([await units_synthesized(s.url) for s in servers])
    results = await asyncio.gather(*(tts(s.url, {"text": SENTENCE}) for s in servers * 3))
    assert [status for status, _, _ in results] == [200] * 6
    after = sum([await units_synthesized(s.url) for s in servers])
    assert after - before == 1


async def test_an_instance_releases_only_the_marker_it_claimed(running_server, redis_server):
    """A peer's in-flight marker outlives this instance's wait for it: deleting it would let
    a third instance start the same synthesis while the peer is still at work."""
    cache = {"redis": redis_server.url, "cross_instance_wait_ms": 300}
    first = running_server({"cache": cache})
    assert (await tts(first.url, {"text": SENTENCE}))[1] == "miss"
    client = redis.Redis.from_url(redis_server.url)
    for _ in range(100):  # the L2 write follows the response
        if keys := [k for k in client.keys("tts:v1:audio:*") if not k.endswith(b":inflight")]:
            break
        await asyncio.sleep(0.05)
    (audio_key,) = keys
    for _ in range(100):  # its own marker, released just after the write it waits for
        if not client.exists(audio_key + b":inflight"):
            break
        await asyncio.sleep(0.05)
    assert client.exists(audio_key + b":inflight") == 0
    client.delete(audio_key)
    client.set(audio_key + b":inflight", b"1", px=30_000)  # a peer is synthesizing it
    second = running_server({"cache": cache})
    assert (await tts(second.url, {"text": SENTENCE}))[1] == "miss"  # waited, then made it
    assert client.exists(audio_key + b":inflight") == 1
    client.close()


async def test_warmup_texts_are_cached_at_start(running_server):
    server = running_server({"cache": {"redis": "off", "warmup_texts": [SENTENCE, "Gate two."]}})
    for _ in range(100):
        if (await get_json(server.url, "/api/cache/stats"))["l1"]["entries"] == 2:
            break
        await asyncio.sleep(0.1)
    assert (await tts(server.url, {"text": "Gate two."}))[1] == "hit-l1"


@pytest.mark.parametrize("redis_setting", ["off", "private"])
async def test_cache_stats_report_both_tiers(running_server, redis_setting):
    server = running_server({"cache": {"redis": redis_setting}})
    await tts(server.url, {"text": SENTENCE})
    stats = await get_json(server.url, "/api/cache/stats")
    assert stats["enabled"] is True
    assert {"hits", "misses", "bytes", "evictions", "entries"} <= set(stats["l1"])
    if redis_setting == "private":
        assert {"hits", "misses", "errors", "available"} <= set(stats["l2"])
