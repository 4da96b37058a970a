"""Our own rate limiter: GCRA in-process, or shared by every instance through a Redis Lua script.

GCRA keeps one number per key, the theoretical arrival time (TAT). A request costing c
units at rate r moves it to max(TAT, now) + c/r, and is allowed if that lands no more
than burst/r ahead of now. Requests per second use c = 1; characters per minute use
c = len(text) at r = chars_per_min / 60.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError

PRUNE_EVERY = 10_000


@dataclass(frozen=True)
class Rate:
    per_s: float
    burst: float

    @property
    def interval_s(self) -> float:
        return 1.0 / self.per_s


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    # Seconds until the key is back to its full burst.
    reset_s: float
    # Seconds until a request of the same cost would pass (0 when allowed).
    retry_after_s: float


def decide(rate: Rate, ahead_s: float, allowed: bool, retry_after_s: float) -> Decision:
    """A Decision from how far the key's TAT is ahead of now after this request."""
    capacity = rate.burst * rate.interval_s
    remaining = math.floor(max(capacity - ahead_s, 0.0) / rate.interval_s + 1e-9)
    return Decision(allowed, int(rate.burst), remaining, max(ahead_s, 0.0), retry_after_s)


class LocalLimiter:
    """Per-instance GCRA; stale keys are pruned now and then."""

    def __init__(self) -> None:
        self._tat: dict[str, float] = {}
        self._checks = 0

    def check(self, key: str, rate: Rate, cost: float = 1.0) -> Decision:
        now = time.monotonic()
        self._prune(now)
        tat = max(self._tat.get(key, now), now)
        new_tat = tat + cost * rate.interval_s
        allow_at = new_tat - rate.burst * rate.interval_s
        if allow_at > now:
            return decide(rate, tat - now, False, allow_at - now)
        self._tat[key] = new_tat
        return decide(rate, new_tat - now, True, 0.0)

    def _prune(self, now: float) -> None:
        self._checks += 1
        if self._checks % PRUNE_EVERY == 0:
            self._tat = {k: v for k, v in self._tat.items() if v > now}


# KEYS[1] = limiter key; ARGV = interval_ms, burst, cost. Redis's own clock keeps every
# instance on one time base. Returns {allowed, ms TAT is ahead of now, retry-after ms}.
GCRA_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local new_tat = tat + cost * interval
local allow_at = new_tat - burst * interval
if allow_at > now then
  return {0, math.ceil(tat - now), math.ceil(allow_at - now)}
end
redis.call('SET', KEYS[1], tostring(new_tat), 'PX', math.max(1, math.ceil(new_tat - now)))
return {1, math.ceil(new_tat - now), 0}
"""


class RedisLimiter:
    """GCRA in one atomic script: one limit across every instance sharing this Redis."""

    def __init__(self, client: aioredis.Redis, timeout_s: float, prefix: str = "tts:rl:"):
        self.client = client
        self.timeout_s = timeout_s
        self.prefix = prefix
        self._script = client.register_script(GCRA_LUA)

    async def check(self, key: str, rate: Rate, cost: float = 1.0) -> Decision:
        """Raise ConnectionError when Redis cannot answer in time."""
        args = [rate.interval_s * 1000, rate.burst, cost]
        try:
            allowed, ahead_ms, retry_ms = await asyncio.wait_for(
                self._script(keys=[self.prefix + key], args=args), self.timeout_s
            )
        except (RedisError, OSError, TimeoutError) as exc:
            raise ConnectionError(str(exc)) from exc
        return decide(rate, ahead_ms / 1000, bool(allowed), retry_ms / 1000)
