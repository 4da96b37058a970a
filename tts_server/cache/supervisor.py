"""Watches the cache's Redis: restarts the private redis-server when it dies, and says whether
Redis answers (/readyz "degraded", the metric tts_redis_up).

Without it, a private redis-server that died stayed a zombie, L2 and the job API never came
back, and nothing reported it. The private server is restarted on the same socket, so every
client (L2, the job store, the limiter) reconnects by itself; its data is gone (it has no
persistence), which a cache tolerates and docs/jobs.md already says of jobs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from tts_server.cache.redis_server import RedisProcess

LOG = logging.getLogger("tts.redis")
# Pings missed in a row before an external Redis counts as down (one slow answer on a busy
# event loop is not an outage). A private server that exited is down at once.
MISSES_BEFORE_DOWN = 2


class RedisWatch:
    def __init__(self, url: str, private: RedisProcess | None, interval_s: float,
                 on_recovered: Callable[[], None] = lambda: None) -> None:
        self.url = url
        self.private = private
        self.interval_s = interval_s
        self.on_recovered = on_recovered
        self.client = aioredis.Redis.from_url(url, socket_timeout=interval_s,
                                              socket_connect_timeout=interval_s)
        self.up = True
        self.restarts = 0
        self.down_since: float | None = None
        self._misses = 0

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self.check()

    async def check(self) -> None:
        if self.private is not None and self.private.exited():
            self._mark_down(f"private redis-server exited ({self.private.process.returncode})"
                            if self.private.process else "private redis-server exited")
            await self._restart()
        if await self._ping():
            self._misses = 0
            self._mark_up()
        else:
            self._misses += 1
            if self._misses >= MISSES_BEFORE_DOWN:
                self._mark_down("redis does not answer")

    async def _restart(self) -> None:
        assert self.private is not None
        try:
            self.private.spawn()  # on the loop's (main) thread: its parent-death signal holds
            await asyncio.get_running_loop().run_in_executor(None, self.private.wait_ready)
        except (OSError, RuntimeError) as exc:
            LOG.error("private redis-server restart failed (%s); trying again in %.1f s",
                      exc, self.interval_s)
            return
        self.restarts += 1
        LOG.warning("private redis-server restarted at %s (its data is gone)", self.url)

    async def _ping(self) -> bool:
        try:
            async with asyncio.timeout(self.interval_s):
                return bool(await self.client.ping())
        except (RedisError, OSError, TimeoutError):
            return False

    def _mark_down(self, why: str) -> None:
        if self.up:
            self.up = False
            self.down_since = time.monotonic()
            LOG.error("redis is down: %s; serving without L2, jobs answer 503", why)

    def _mark_up(self) -> None:
        if not self.up:
            down_s = time.monotonic() - (self.down_since or time.monotonic())
            self.up, self.down_since = True, None
            LOG.warning("redis is back after %.1f s", down_s)
            self.on_recovered()

    def snapshot(self) -> dict[str, Any]:
        down_s = time.monotonic() - self.down_since if self.down_since is not None else None
        return {"up": self.up, "private": self.private is not None, "restarts": self.restarts,
                "down_s": round(down_s, 1) if down_s is not None else None}

    async def close(self) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self.client.aclose()
