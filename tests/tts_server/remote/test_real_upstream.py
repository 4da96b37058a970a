"""The whole remote path against a real upstream: a second instance of this server, and
faults caused for real (SIGKILL mid-stream, SIGSTOP past the read timeout, a closed port,
a client that leaves, a deadline that passes)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import time

import aiohttp
import numpy as np
import psutil
import pytest

from tests.support import ServerProcess, decode_wav, plausible_duration
from tests.tts_server.remote.conftest import (
    Servers,
    entry,
    get_json,
    metric,
    pcm_of,
    post,
    remote_pool,
)

SENTENCES = ("The remote engine speaks first.", "Then a second sentence follows.",
             "A third one comes after that.", "And the fourth ends the text.")
TEXT = " ".join(SENTENCES)
LONG = ("This sentence is long on purpose, so that the upstream spends several seconds on it at"
        " a quarter of the normal speed, clause after clause about nothing in particular, on"
        " and on, well past any deadline or patience the test has, until its very last word.")


@pytest.fixture(scope="module")
def pair(module_servers: Servers) -> tuple[ServerProcess, ServerProcess]:
    """A real upstream and a front with four entries on it: wav (two at once), raw PCM at
    24 kHz, WAV resampled to 16 kHz, and one whose wait estimate starts pessimistic."""
    upstream = module_servers.start("upstream")
    url = upstream.url
    entries = [
        entry(url, max_concurrent=2),
        entry(url, name="gpu-pcm", voices={"ada-pcm": "alloy"}, response_format="pcm",
              sample_rate=24000),
        entry(url, name="gpu-16k", voices={"ada-16k": "alloy"}, sample_rate=16000),
        entry(url, name="gpu-est", voices={"ada-est": "alloy"}, initial_seconds_per_char=0.4),
    ]
    return upstream, module_servers.start("front", entries=entries)


async def direct(upstream: ServerProcess, text: str, response_format: str = "wav") -> bytes:
    _, _, body = await post(upstream.url, "/v1/audio/speech",
                            {"model": "joe", "voice": "alloy", "input": text,
                             "response_format": response_format})
    return body


async def upstream_calls(upstream: ServerProcess) -> float:
    return await metric(upstream.url, "tts_requests_total", route="/v1/audio/speech",
                        status="200")


async def test_a_long_text_streams_in_order_sentence_by_sentence(pair):
    upstream, front = pair
    voices = {v["name"]: v for v in (await get_json(front.url, "/api/voices"))["voices"]}
    assert (voices["ada"]["engine"], voices["ada"]["quality"]) == ("gpu", "remote")
    calls = await upstream_calls(upstream)
    status, headers, body = await post(front.url, "/api/tts",
                                       {"text": TEXT, "voice": "ada", "stream": True})
    assert (status, headers["X-Engine"], headers["X-Sample-Rate"]) == (200, "gpu", "22050")
    assert await upstream_calls(upstream) == calls + len(SENTENCES)  # one call per sentence
    expected = np.concatenate([pcm_of(await direct(upstream, s)) for s in SENTENCES])
    got = pcm_of(body)
    assert abs(len(got) - len(expected)) <= 4 * len(SENTENCES)
    n = min(len(got), len(expected))
    assert np.corrcoef(got[:n].astype(float), expected[:n].astype(float))[0, 1] > 0.98
    pool = await remote_pool(front.url)
    assert pool["max_in_flight_seen"] == 2 and pool["outcomes"]["ok"] >= len(SENTENCES)
    calls = await upstream_calls(upstream)
    status, headers, _ = await post(front.url, "/api/tts", {"text": TEXT, "voice": "ada"})
    assert (status, headers["X-Cache"]) == (200, "hit-l1")
    assert await upstream_calls(upstream) == calls


async def test_pcm_and_other_rates_become_the_voice_rate_and_never_share_entries(pair):
    upstream, front = pair
    text = "Three upstream identities, one text."
    durations = {}
    calls = await upstream_calls(upstream)
    for voice, rate in (("ada", 22050), ("ada-pcm", 24000), ("ada-16k", 16000)):
        status, headers, body = await post(front.url, "/api/tts", {"text": text, "voice": voice})
        assert (status, headers["X-Cache"], headers["X-Sample-Rate"]) == (200, "miss", str(rate))
        samples, sample_rate, _ = decode_wav(body)
        durations[voice] = len(samples) / sample_rate
    assert await upstream_calls(upstream) == calls + 3
    assert max(durations.values()) - min(durations.values()) < 0.02
    assert plausible_duration(text, durations["ada"])


async def test_the_openai_route_reaches_the_remote_voice(pair):
    _, front = pair
    status, headers, body = await post(front.url, "/v1/audio/speech",
                                       {"model": "ada", "voice": "alloy",
                                        "input": "Through the OpenAI route.",
                                        "response_format": "wav"})
    assert (status, headers["X-Engine"], headers["X-Voice"]) == (200, "gpu", "ada")
    assert len(pcm_of(body)) > 22050 // 2


async def test_the_wait_estimate_learns_the_upstreams_speed(pair):
    _, front = pair
    text = "A text of about a hundred characters, which the first estimate says is far too slow."
    status, _, body = await post(front.url, "/api/tts", {"text": text, "voice": "ada-est"})
    assert status == 503 and b"would_miss_deadline" in body  # 0.4 s/char x 85 chars > 30 s
    for i in range(4):
        status, _, _ = await post(front.url, "/api/tts",
                                  {"text": f"Short {i}.", "voice": "ada-est"})
        assert status == 200
    learned = (await remote_pool(front.url, "gpu-est"))["seconds_per_char"]
    assert learned < 0.4 * 0.9 ** 4 + 0.01  # measured calls pulled the estimate down
    status, headers, _ = await post(front.url, "/api/tts", {"text": text, "voice": "ada-est"})
    assert (status, headers["X-Engine"]) == (200, "gpu-est")


# ---- faults caused for real -------------------------------------------------------------------


def children_of(server: ServerProcess) -> list[psutil.Process]:
    return psutil.Process(server.pid).children(recursive=True)


async def test_upstream_sigkilled_mid_stream_the_rest_comes_from_the_fallback(servers):
    upstream = servers.start("upstream")
    front = servers.start("front", {"breaker": {"failure_threshold": 3, "window_s": 60.0}},
                          [entry(upstream.url)])
    orphans = children_of(upstream)
    text = " ".join(f"Sentence {n} of a text that outlives its upstream." for n in range(6))
    async with aiohttp.ClientSession() as session:
        async with session.post(front.url + "/api/tts",
                                json={"text": text, "voice": "ada", "stream": True}) as response:
            first = await response.content.readany()
            os.kill(upstream.pid, signal.SIGKILL)
            body = first + await response.read()
            assert (response.status, response.headers["X-Engine"]) == (200, "gpu")
    for child in orphans:  # its workers and Redis lose their parent: do not leave them
        with contextlib.suppress(psutil.NoSuchProcess):  # gone on its own
            child.kill()
    assert plausible_duration(text, len(pcm_of(body)) / 22050)
    pool = await remote_pool(front.url)
    out = pool["outcomes"]
    failed = out.get("disconnected", 0) + out.get("refused", 0)
    assert failed == 1 and out["ok"] >= 1 and out["ok"] + failed + out["skipped"] == 6
    breaker = (await get_json(front.url, "/readyz"))["breakers"]["ada"]
    assert (breaker["state"], breaker["recent_failures"]) == ("closed", 1)
    status, headers, _ = await post(front.url, "/api/tts", {"text": text, "voice": "ada"})
    assert (status, headers["X-Cache"], headers["X-Engine"]) == (200, "miss", "piper")
    assert await metric(front.url, "tts_remote_calls_total", engine="gpu",
                        outcome="refused") >= 1
    await post(front.url, "/api/tts", {"text": "One more refusal.", "voice": "ada"})
    assert (await get_json(front.url, "/readyz"))["breakers"]["ada"]["state"] == "open"
    status, headers, _ = await post(front.url, "/api/tts", {"text": "Open now.", "voice": "ada"})
    assert (status, headers["X-Voice"], headers["X-Engine"]) == (200, "joe", "piper")
    assert await metric(front.url, "tts_audio_seconds_total", engine="piper") > 0


async def test_upstream_stopped_past_the_read_timeout_falls_back_once_per_request(servers):
    upstream = servers.start("upstream")
    front = servers.start("front", entries=[entry(upstream.url, read_timeout_s=1.0)])
    text = "The upstream is frozen. So the local voice reads both sentences."
    os.kill(upstream.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        status, headers, body = await post(front.url, "/api/tts", {"text": text, "voice": "ada"})
        elapsed = time.monotonic() - started
    finally:
        os.kill(upstream.pid, signal.SIGCONT)
    assert (status, headers["X-Engine"]) == (200, "piper")
    # One read timeout, not one per sentence: the second sentence was never sent.
    assert 1.0 <= elapsed < 1.9, elapsed
    samples, rate, _ = decode_wav(body)
    assert plausible_duration(text, len(samples) / rate)
    out = (await remote_pool(front.url))["outcomes"]
    assert (out["timeout"], out["skipped"]) == (1, 1)
    status, headers, _ = await post(front.url, "/api/tts", {"text": "Awake again.", "voice": "ada"})
    assert (status, headers["X-Engine"]) == (200, "gpu")


async def test_an_upstream_port_that_closed_is_refused_at_once(servers):
    upstream = servers.start("upstream")
    front = servers.start("front", entries=[entry(upstream.url)])
    status, headers, _ = await post(front.url, "/api/tts", {"text": "Still up.", "voice": "ada"})
    assert (status, headers["X-Engine"]) == (200, "gpu")
    upstream.stop()
    started = time.monotonic()
    status, headers, body = await post(front.url, "/api/tts",
                                       {"text": "The port is closed now.", "voice": "ada"})
    assert (status, headers["X-Engine"]) == (200, "piper")
    assert time.monotonic() - started < 1.5
    assert (await remote_pool(front.url))["outcomes"]["refused"] == 1
    assert plausible_duration("The port is closed now.", len(decode_wav(body)[0]) / 22050)


def access_line(server: ServerProcess, request_id: str) -> dict | None:
    """The server's access-log entry of one request (JSON lines), if written yet."""
    for line in server.log().splitlines():
        if request_id in line and '"tts.access"' in line:
            return json.loads(line)
    return None


def cancelled_unit(front: ServerProcess) -> str:
    found = re.findall(r"unit (gpu-[0-9a-f]+-\d+-\d+) cancelled", front.log())
    assert len(found) == 1, front.log()[-2000:]
    return found[0]


async def wait_for_access_line(server: ServerProcess, request_id: str) -> dict:
    for _ in range(50):
        line = access_line(server, request_id)
        if line is not None:
            return line
        await asyncio.sleep(0.1)
    raise AssertionError(f"no access line for {request_id}:\n{server.log()[-2000:]}")


@pytest.fixture(scope="module")
def slow_upstream(module_servers: Servers) -> ServerProcess:
    """One worker, one thread: LONG at speed 0.25 takes it several seconds. No cache: a
    request an earlier test abandoned may still have finished there, and a hit would
    answer this module's next request at once."""
    return module_servers.start("slow-upstream", {"pool": {"workers": 1, "solo_threads": 1},
                                                  "server": {"log_format": "json"},
                                                  "cache": {"enabled": False},
                                                  "voices": {"precision": "fp32"}})


async def test_a_client_that_leaves_cancels_the_upstream_call(module_servers, slow_upstream):
    front = module_servers.start("front-leave", {"server": {"log_format": "json"}},
                                 [entry(slow_upstream.url)])
    body = {"text": "Hello. " + LONG, "voice": "ada", "stream": True, "speed": 0.25}
    async with aiohttp.ClientSession() as session:
        async with session.post(front.url + "/api/tts", json=body) as response:
            assert response.status == 200
            await response.content.readany()  # the first sentence: now LONG is upstream
            await asyncio.sleep(0.3)
            left = time.monotonic()
    await asyncio.sleep(0.5)
    unit = cancelled_unit(front)
    line = await wait_for_access_line(slow_upstream, unit)
    assert time.monotonic() - left < 2.0  # the upstream's request ended with the client's
    assert line["total_ms"] < 2500  # far less than the sentence would have taken
    assert (await remote_pool(front.url))["outcomes"]["cancelled"] == 1
    assert await metric(slow_upstream.url, "tts_requests_in_flight",
                        route="/v1/audio/speech") == 0


async def test_a_passed_deadline_cancels_the_upstream_call(module_servers, slow_upstream):
    # An idle machine runs LONG at speed 0.25 (49 s of audio) in about 1.3 s INT8, 2 s FP32:
    # the deadline must fall well inside that.
    deadline_s = 0.6
    front = module_servers.start(
        "front-deadline", {"server": {"log_format": "json", "request_timeout_s": deadline_s}},
        [entry(slow_upstream.url)])
    started = time.monotonic()
    status, _, body = await post(front.url, "/api/tts",
                                 {"text": LONG, "voice": "ada", "speed": 0.25})
    assert status == 503 and b"deadline_exceeded" in body
    assert deadline_s - 0.1 < time.monotonic() - started < deadline_s + 1.5
    line = await wait_for_access_line(slow_upstream, cancelled_unit(front))
    # Ended at the front's deadline, not when the synthesis would have.
    assert deadline_s * 1000 * 0.8 < line["total_ms"] < deadline_s * 1000 + 1000
