"""Auth and rate-limiter overhead per request, in-process and Redis-backed.

Two views in one run:
  - HTTP: GET /api/voices on a real server with the gateway's limits off, then with a
    bearer token and the in-process limiter, then with the Redis limiter (private
    redis-server); the difference in time per request is the overhead.
  - direct: Gateway.identify + admit called in a loop, no HTTP (microseconds per call).

    .venv/bin/python -m stress.bench_gateway [--seconds 6] [--connections 32]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import sys
import time

from stress.bench_cache import hammer
from stress.serverproc import ServerProcess
from stress.throughput import stop

TOKEN = "bench-token"
TOKENS = (
    f'[{{name = "bench", tier = "vip", sha256 = "{hashlib.sha256(TOKEN.encode()).hexdigest()}"}}]'
)
HIGH_LIMITS = {"TTS_LIMITS__TIERS": "{vip = {requests_per_s = 1e9, burst = 1000000000}}"}


def start(env_extra: dict[str, str]) -> tuple[ServerProcess, int]:
    env = {"TTS_SERVER__ACCESS_LOG": "false", "TTS_DEGRADATION__ENABLED": "false", **env_extra}
    server = ServerProcess(env=env, args=("--workers", "1")).wait_ready(180, path="/healthz")
    return server, server.port


async def http_rate(env_extra: dict[str, str], token: bool, args: argparse.Namespace) -> float:
    process, port = start(env_extra)
    try:
        headers = {"Authorization": f"Bearer {TOKEN}"} if token else {}
        rate, _ = await hammer(
            f"http://127.0.0.1:{port}/api/voices",
            args.seconds,
            args.connections,
            method="GET",
            headers=headers,
        )
        return rate
    finally:
        stop(process)


def direct_us_per_call(backend: str, calls: int = 20000) -> float:
    """identify + admit on a real Gateway object, no HTTP."""
    from aiohttp.test_utils import make_mocked_request

    from tts_server.cache.redis_server import RedisProcess
    from tts_server.config import load_settings
    from tts_server.gateway import Gateway
    from tts_server.gateway.ratelimit import RedisLimiter

    async def run() -> float:
        settings = load_settings(environ={"TTS_AUTH__TOKENS": TOKENS, **HIGH_LIMITS})
        redis_process = client = limiter = None
        if backend == "redis":
            import redis.asyncio as aioredis

            redis_process = RedisProcess().start()
            client = aioredis.Redis.from_url(redis_process.url)
            limiter = RedisLimiter(client, 1.0)
        gateway = Gateway(settings, limiter)
        request = make_mocked_request(
            "GET", "/api/voices", headers={"Authorization": f"Bearer {TOKEN}"}
        )
        try:
            started = time.perf_counter()
            for _ in range(calls):
                identity = gateway.identify(request)
                decision = await gateway.check_requests(identity)
                if decision is not None:
                    gateway.enforce_requests(identity, decision)
            return (time.perf_counter() - started) / calls * 1e6
        finally:
            if client is not None:
                await client.aclose()
            if redis_process is not None:
                redis_process.stop()

    return asyncio.run(run())


async def run_http(args: argparse.Namespace) -> dict[str, float]:
    token_env = {"TTS_AUTH__TOKENS": TOKENS, **HIGH_LIMITS}
    return {
        "limits off, anonymous": await http_rate({"TTS_LIMITS__ENABLED": "false"}, False, args),
        "token + in-process limiter": await http_rate(token_env, True, args),
        "token + Redis limiter": await http_rate(
            {**token_env, "TTS_LIMITS__BACKEND": '"redis"'}, True, args
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=6.0, help="load duration per config")
    parser.add_argument("--connections", type=int, default=32, help="concurrent connections")
    args = parser.parse_args(argv)
    rates = asyncio.run(run_http(args))
    base = rates["limits off, anonymous"]
    print(f"{'GET /api/voices':<28} {'req/s':>8} {'us/req':>8} {'overhead us':>12}")
    for name, rate in rates.items():
        print(f"{name:<28} {rate:8.0f} {1e6 / rate:8.1f} {1e6 / rate - 1e6 / base:12.1f}")
    for backend in ("memory", "redis"):
        print(f"direct identify+admit, {backend:<6}: {direct_us_per_call(backend):6.1f} us/call")
    return 0


if __name__ == "__main__":
    sys.exit(main())
