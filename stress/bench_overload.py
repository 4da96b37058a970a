"""Goodput under overload: open-loop traffic at 1x, 2x and 3x the measured capacity.

Capacity is measured first (closed loop, unique sentences, as many clients as needed to
keep every worker busy). Then requests arrive on a timetable (no coordinated omission),
20 % from a vip token and 80 % from a standard one, each sentence unique. Goodput is the
rate of successful responses; refused requests (503 at the door) should be answered fast.

    .venv/bin/python -m stress.bench_overload [--seconds 30] [--factors 1,2,3]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import statistics
import sys
import time
from dataclasses import dataclass

import aiohttp

from stress.serverproc import ServerProcess, free_port
from stress.throughput import news_texts, percentile
from stress.throughput import stop as stop_process

VIP, STANDARD = "bench-vip-token", "bench-standard-token"
UNLIMITED = "requests_per_s = 1e6, burst = 1000000, chars_per_min = 1000000000"


def _token(name: str, secret: str, tier: str) -> str:
    digest = hashlib.sha256(secret.encode()).hexdigest()
    return f'{{name = "{name}", tier = "{tier}", sha256 = "{digest}"}}'


def start_server(port: int) -> ServerProcess:
    env = {
        "TTS_SERVER__ACCESS_LOG": "false",
        "TTS_DEGRADATION__ENABLED": "false",  # admission alone: what this measures
        "TTS_CACHE__ENABLED": "false",
        "TTS_AUTH__TOKENS": f"[{_token('vip', VIP, 'vip')}, {_token('std', STANDARD, 'standard')}]",
        "TTS_LIMITS__TIERS": f"{{vip = {{{UNLIMITED}}}, standard = {{{UNLIMITED}}}}}",
    }
    return ServerProcess(env=env, port=port).wait_ready(180)


@dataclass
class Outcome:
    tier: str
    status: int
    seconds: float
    code: str
    finished_at: float


async def one(session: aiohttp.ClientSession, url: str, text: str, tier: str) -> Outcome:
    secret = VIP if tier == "vip" else STANDARD
    started = time.monotonic()
    async with session.post(url, json={"text": text},
                            headers={"Authorization": f"Bearer {secret}"}) as response:
        body = await response.read()
    code = "" if response.status == 200 else json.loads(body)["error"]["code"]
    finished = time.monotonic()
    return Outcome(tier, response.status, finished - started, code, finished)


async def open_loop(
    url: str, rate: float, seconds: float, serial: int
) -> tuple[list[Outcome], float]:
    """The outcomes, and the wall time until the last answer (a backlog drains late)."""
    texts = news_texts(int(rate * seconds), serial, serial * 100_000)
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        started = time.monotonic()
        tasks = []
        for index, text in enumerate(texts):
            await asyncio.sleep(max(0.0, started + index / rate - time.monotonic()))
            tier = "vip" if index % 5 == 0 else "standard"
            tasks.append(asyncio.create_task(one(session, url, text, tier)))
        outcomes = list(await asyncio.gather(*tasks))
    return outcomes, max(o.finished_at for o in outcomes) - started


def summarize(factor: float, rate: float, wall_s: float, outcomes: list[Outcome],
              capacity: float) -> str:
    ok = [o for o in outcomes if o.status == 200]
    refused = [o for o in outcomes if o.status == 503]
    other = [o for o in outcomes if o.status not in (200, 503)]
    vip_ok = [o.seconds for o in ok if o.tier == "vip"]
    goodput = len(ok) / wall_s  # until the last answer, not the end of the arrivals
    refuse_ms = statistics.median([o.seconds for o in refused]) * 1000 if refused else 0.0
    return (f"{factor:>5.1f}x {rate:7.2f} {goodput:8.2f} {goodput / capacity:9.2f}"
            f" {len(refused):8d} {refuse_ms:12.1f} {len(other):6d}"
            f" {percentile(vip_ok, 99) if vip_ok else float('nan'):11.2f}")


async def run(args: argparse.Namespace) -> None:
    port = free_port()
    server = start_server(port)
    url = f"http://127.0.0.1:{port}/api/tts"
    try:
        capacity = await measure_capacity(url)
        print(f"capacity: {capacity:.2f} requests/s (closed loop, 16 clients, unique sentences)")
        print(f"{'load':>6} {'offered':>7} {'goodput':>8} {'/capacity':>9} {'refused':>8}"
              f" {'refusal p50 ms':>12} {'other':>6} {'vip p99 s':>11}")
        for serial, factor in enumerate(args.factors, start=2):
            rate = capacity * factor
            outcomes, wall_s = await open_loop(url, rate, args.seconds, serial)
            print(summarize(factor, rate, wall_s, outcomes, capacity))
    finally:
        stop_process(server)


async def measure_capacity(url: str) -> float:
    bodies = [{"text": t} for t in news_texts(120, 99, 9_900_000)]
    headers = {"Authorization": f"Bearer {STANDARD}"}
    connector = aiohttp.TCPConnector(limit=16)
    pending = iter(bodies)

    async def client(session: aiohttp.ClientSession) -> int:
        done = 0
        for body in pending:
            async with session.post(url, json=body, headers=headers) as response:
                await response.read()
                done += response.status == 200
        return done

    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.monotonic()
        done = sum(await asyncio.gather(*(client(session) for _ in range(16))))
        return done / (time.monotonic() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30.0, help="duration of each level")
    parser.add_argument("--factors", default="1,2,3", help="offered load, times capacity")
    args = parser.parse_args(argv)
    args.factors = [float(f) for f in args.factors.split(",")]
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
