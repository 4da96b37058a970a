"""The private redis-server is supervised (RELIABILITY.md B10): a stalled one shows as
degraded in /readyz and tts_redis_up, a killed one is reaped and restarted on the same socket,
and L2 and the job API come back by themselves; a SIGKILLed front's folder goes next start."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest

WATCH = {"cache": {"redis_check_interval_s": 0.2, "l1_max_bytes": 0}, "pool": {"workers": 1}}


def private_redis(server_pid: int) -> psutil.Process:
    children = psutil.Process(server_pid).children()
    return next(p for p in children if "redis-server" in p.name())


def socket_folder(redis: psutil.Process) -> Path:
    """redis-server rewrites its title to "redis-server unixsocket:PATH"."""
    found = re.search(r"unixsocket[: ](\S+)", " ".join(redis.cmdline()))
    assert found, redis.cmdline()
    return Path(found.group(1)).parent


async def get_json(url: str, path: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session:
        async with session.get(url + path) as response:
            return response.status, await response.json()


async def tts(url: str, text: str) -> str:
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{url}/api/tts", json={"text": text}) as response:
            assert response.status == 200
            await response.read()
            return response.headers["X-Cache"]


async def until(predicate, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await predicate():
        assert time.monotonic() < deadline, "not reached in time"
        await asyncio.sleep(0.1)


async def redis_state(url: str) -> tuple[int, list[str], dict[str, Any]]:
    status, body = await get_json(url, "/readyz")
    return status, body["degraded"], body["redis"]


async def metric(url: str, name: str) -> str:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{url}/metrics") as response:
            lines = (await response.text()).splitlines()
    return next(line.split()[-1] for line in lines if line.startswith(name + " "))


async def job_done(url: str) -> bool:
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{url}/api/tts/jobs", json={"text": "Jobs are back."}) as r:
            if r.status != 202:
                return False
            job_id = (await r.json())["job_id"]
        for _ in range(100):
            async with session.get(f"{url}/api/tts/jobs/{job_id}") as r:
                if (await r.json())["status"] == "done":
                    return True
            await asyncio.sleep(0.1)
    return False


@pytest.mark.timeout(120)
async def test_a_stalled_then_killed_private_redis_is_reported_restarted_and_reused(
        running_server):
    server = running_server(WATCH)
    redis = private_redis(server.pid)
    folder = socket_folder(redis)
    assert folder.name.startswith(f"tts-redis-{server.pid}-")
    assert await tts(server.url, "Stored in the second tier.") == "miss"
    assert await tts(server.url, "Stored in the second tier.") == "hit-l2"
    assert await metric(server.url, "tts_redis_up") == "1.0"

    os.kill(redis.pid, signal.SIGSTOP)  # down without exiting: only pings notice
    try:
        await until(lambda: _degraded(server.url))
        status, degraded, state = await redis_state(server.url)
        assert status == 200 and degraded == ["redis"] and state["up"] is False
        assert await metric(server.url, "tts_redis_up") == "0.0"
        assert await tts(server.url, "Served without the second tier.") == "miss"
    finally:
        os.kill(redis.pid, signal.SIGCONT)
    await until(lambda: _healthy(server.url))

    os.kill(redis.pid, signal.SIGKILL)
    await until(lambda: _restarted(server.url))
    replacement = private_redis(server.pid)
    assert replacement.pid != redis.pid and socket_folder(replacement) == folder
    assert not psutil.pid_exists(redis.pid)  # reaped: no zombie left behind
    assert await tts(server.url, "After the restart.") == "miss"
    assert await tts(server.url, "After the restart.") == "hit-l2"  # L2 back by itself
    await until(lambda: job_done(server.url), 30)  # and the job API
    assert await metric(server.url, "tts_redis_restarts_total") == "1.0"


async def _degraded(url: str) -> bool:
    return (await redis_state(url))[1] == ["redis"]


async def _healthy(url: str) -> bool:
    return (await redis_state(url))[1] == []


async def _restarted(url: str) -> bool:
    _, degraded, state = await redis_state(url)
    return state["restarts"] == 1 and not degraded


@pytest.mark.timeout(120)
async def test_the_folder_of_a_sigkilled_front_is_removed_at_the_next_start(running_server):
    first = running_server({"pool": {"workers": 1}})
    redis = private_redis(first.pid)
    folder = socket_folder(redis)
    first.process.kill()
    first.process.wait()
    redis.wait(10)  # its parent-death signal
    assert folder.is_dir()  # what the report found left behind
    second = running_server({"pool": {"workers": 1}})
    assert not folder.exists()
    assert socket_folder(private_redis(second.pid)).is_dir()
