"""Answers a real server will not give on demand, from a small upstream of the test's own:
each one sends the unit to the fallback voice, is counted, and is never cached."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import pytest

from tests.support import ServerProcess, decode_wav, free_port, plausible_duration
from tests.tts_server.remote.conftest import (
    API_KEY,
    FaultUpstream,
    Servers,
    entry,
    get_json,
    metric,
    post,
    remote_pool,
    speech_seconds,
)

EXTRA = {"extra_params": {"top_k": 30}, "ref_text": "A reference sentence."}


@pytest.fixture(scope="module")
def fault_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def front(module_servers: Servers, fault_port: int) -> ServerProcess:
    """In front of the fault upstream; a breaker that never opens, a 1 s read timeout."""
    remote = entry(f"http://127.0.0.1:{fault_port}", model="index-tts-2",
                   voices={"ada": "refs/ada.wav"}, voice_field="ref_audio",
                   api_key_env="TTS_TEST_UPSTREAM_KEY", extra=EXTRA, read_timeout_s=1.0)
    return module_servers.start("front", {"breaker": {"failure_threshold": 1000}}, [remote])


@pytest.fixture
async def upstream(fault_port: int) -> AsyncIterator[FaultUpstream]:
    server = await FaultUpstream(fault_port).start()
    yield server
    await server.stop()


async def outcomes(front: ServerProcess) -> dict[str, int]:
    return (await remote_pool(front.url))["outcomes"]


async def tts(front: ServerProcess, text: str, **fields: object):
    return await post(front.url, "/api/tts", {"text": text, "voice": "ada", **fields})


async def test_the_upstream_gets_the_openai_shape_with_key_and_extra_fields(front, upstream):
    text = "The upstream hears exactly this."
    status, headers, body = await tts(front, text, speed=1.5)
    assert (status, headers["X-Engine"], headers["X-Voice"]) == (200, "gpu", "ada")
    (call,) = upstream.calls
    assert call.body == {"model": "index-tts-2", "input": text, "ref_audio": "refs/ada.wav",
                         "response_format": "wav", "speed": 1.5, **EXTRA}
    assert call.headers["Authorization"] == f"Bearer {API_KEY}"
    assert call.headers["X-Request-Id"].startswith("gpu-")
    samples, rate, _ = decode_wav(body)
    assert rate == 22050
    assert abs(len(samples) / rate - speech_seconds(text)) < 0.01  # the upstream's audio


FAULTS = [
    ("500", "http_5xx"), ("503", "http_5xx"), ("400", "http_4xx"), ("garbage", "bad_audio"),
    ("json", "bad_audio"), ("truncated", "bad_audio"), ("short", "too_short"),
    ("stalled", "timeout"),
]


@pytest.mark.parametrize(("mode", "outcome"), FAULTS)
async def test_a_fault_falls_back_is_counted_and_never_cached(front, upstream, mode, outcome):
    upstream.mode = mode
    text = f"When the upstream answers {mode}, the local voice speaks instead."
    before = await outcomes(front)
    started = time.monotonic()
    status, headers, body = await tts(front, text)
    elapsed = time.monotonic() - started
    assert (status, headers["X-Voice"], headers["X-Engine"]) == (200, "ada", "piper")
    samples, rate, _ = decode_wav(body)
    assert rate == 22050 and plausible_duration(text, len(samples) / rate)
    after = await outcomes(front)
    assert after.get(outcome, 0) == before.get(outcome, 0) + 1
    assert len(upstream.calls) == 1
    if mode == "stalled":
        assert 1.0 <= elapsed < 4.0  # read_timeout_s, then the fallback
    status, headers, _ = await tts(front, text)  # the fallback's audio was not stored
    assert (status, headers["X-Cache"], headers["X-Engine"]) == (200, "miss", "piper")
    assert len(upstream.calls) == 2
    assert await metric(front.url, "tts_remote_calls_total", engine="gpu",
                        outcome=outcome) == after[outcome] + 1


async def test_429_pauses_the_upstream_for_its_retry_after(front, upstream):
    upstream.mode, upstream.retry_after = "429", "2"
    before = await outcomes(front)
    first = time.monotonic()
    status, headers, _ = await tts(front, "Slow down, says the upstream.")
    assert (status, headers["X-Engine"]) == (200, "piper")
    status, headers, _ = await tts(front, "During the pause nothing is sent.")
    assert (status, headers["X-Engine"]) == (200, "piper")
    assert len(upstream.calls) == 1  # the second unit was never sent
    after = await outcomes(front)
    assert after["rate_limited"] == before.get("rate_limited", 0) + 1
    assert after["skipped"] == before.get("skipped", 0) + 1
    assert (await remote_pool(front.url))["paused_s"] > 0
    upstream.mode = "ok"
    await asyncio.sleep(max(0.0, first + 2.1 - time.monotonic()))
    status, headers, _ = await tts(front, "After the pause the upstream speaks again.")
    assert (status, headers["X-Engine"]) == (200, "gpu")
    assert len(upstream.calls) == 2


async def test_a_failure_mid_request_sends_the_rest_to_the_fallback_at_once(front, upstream):
    upstream.ok_first, upstream.mode = 1, "500"
    text = ("The first sentence comes from the upstream. The second one fails there. "
            "The third is never sent. Nor is the fourth.")
    before = await outcomes(front)
    breaker_before = (await get_json(front.url, "/readyz"))["breakers"]["ada"]
    status, headers, body = await tts(front, text, stream=True)
    assert (status, headers["X-Engine"]) == (200, "gpu")  # the first unit's engine
    samples, rate, _ = decode_wav(body)
    first = "The first sentence comes from the upstream."
    assert len(samples) / rate > speech_seconds(first) + 2  # three more sentences spoken
    assert len(upstream.calls) == 2
    after = await outcomes(front)
    assert after["http_5xx"] == before.get("http_5xx", 0) + 1
    assert after["skipped"] == before.get("skipped", 0) + 2
    breaker = (await get_json(front.url, "/readyz"))["breakers"]["ada"]
    # Only the unit the upstream really failed counts against it.
    assert breaker["recent_failures"] == breaker_before["recent_failures"] + 1
    status, headers, _ = await tts(front, text)
    assert headers["X-Cache"] == "miss"


async def test_the_breaker_opens_on_failures_and_a_probe_closes_it(servers):
    port = free_port()
    front = servers.start("breaker", {"breaker": {"failure_threshold": 2, "window_s": 60.0,
                                                  "open_s": 2.0}},
                          [entry(f"http://127.0.0.1:{port}")])
    upstream = await FaultUpstream(port, mode="500").start()
    try:
        for i in range(2):
            status, headers, _ = await tts(front, f"Failure number {i} of the upstream.")
            assert (status, headers["X-Voice"], headers["X-Engine"]) == (200, "ada", "piper")
        assert (await get_json(front.url, "/readyz"))["breakers"]["ada"]["state"] == "open"
        assert await metric(front.url, "tts_breaker_state", voice="ada") == 2
        opened = time.monotonic()
        status, headers, _ = await tts(front, "While open, the fallback voice answers.")
        assert (status, headers["X-Voice"], headers["X-Engine"]) == (200, "joe", "piper")
        assert len(upstream.calls) == 2  # not even tried
        upstream.mode = "ok"
        await asyncio.sleep(max(0.0, opened + 2.1 - time.monotonic()))
        status, headers, _ = await tts(front, "The probe finds the upstream well again.")
        assert (status, headers["X-Voice"], headers["X-Engine"]) == (200, "ada", "gpu")
        assert (await get_json(front.url, "/readyz"))["breakers"]["ada"]["state"] == "closed"
    finally:
        await upstream.stop()


async def test_timings_of_a_remote_voice_are_estimated_and_its_fallback_units_timed(front,
                                                                                     upstream):
    upstream.ok_first, upstream.mode = 1, "500"
    text = ("The first sentence comes from the upstream with timings asked. The second one "
            "fails there and goes local.")
    status, headers, body = await tts(front, text, timestamps="words")
    assert status == 200, body
    assert headers["X-Timings"] == "estimated"  # the upstream gives none: spread by length
    doc = json.loads(body)
    words = doc["words"]
    assert [w["text"] for w in words] == [w.strip(".") for w in text.split()]
    assert all(text[w["start_char"]:w["end_char"]] == w["text"] for w in words)
    starts = [w["start_s"] for w in words]
    assert starts == sorted(starts) and words[-1]["end_s"] <= doc["duration_s"] + 1e-3
    second = next(w for w in words if w["text"] == "second")
    first_unit_end = max(w["end_s"] for w in words if w["start_char"] < second["start_char"])
    assert second["start_s"] >= first_unit_end - 1e-3


async def test_estimated_timings_stay_marked_as_estimated_when_cached(front, upstream):
    text = "An upstream sentence whose estimated timings are cached."
    for expected_cache in ("miss", "hit-l1"):
        status, headers, body = await tts(front, text, timestamps="words")
        assert status == 200, body
        assert (headers["X-Cache"], headers["X-Timings"]) == (expected_cache, "estimated")
        assert json.loads(body)["timings"] == "estimated"
    assert len(upstream.calls) == 1
