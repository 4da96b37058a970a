"""Overhead of metrics and access logging: requests/s with them on vs off, same run.

Cached path: L1 hits of one text (the request path itself is all there is to measure).
Uncached path: unique sentences at 4 concurrent clients (synthesis dominates).

    .venv/bin/python -m stress.bench_metrics [--seconds 6]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys

from stress.bench_cache import hammer, prime, start_server
from stress.serverproc import free_port
from stress.throughput import closed_loop, news_texts, stop

SWITCHES = {"on": {"TTS_SERVER__METRICS": "true"}, "off": {"TTS_SERVER__METRICS": "false"}}


def start(metrics: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = start_server(port, {"redis": '"off"'}, SWITCHES[metrics])
    return process, f"http://127.0.0.1:{port}/api/tts"


async def cached_rate(metrics: str, seconds: float) -> float:
    process, url = start(metrics)
    try:
        await prime(url, "hit-l1")
        return (await hammer(url, seconds, 32))[0]
    finally:
        stop(process)


async def uncached_rate(metrics: str, seed: int) -> float:
    process, url = start(metrics)
    try:
        bodies = [{"text": t} for t in news_texts(40, seed, 100_000 * seed)]
        return (await closed_loop(url, bodies, 4)).audio_s_per_s
    finally:
        stop(process)


async def run(args: argparse.Namespace) -> None:
    cached = {m: await cached_rate(m, args.seconds) for m in ("off", "on")}
    uncached = {m: await uncached_rate(m, i + 1) for i, m in enumerate(("off", "on"))}
    print(f"{'path':<28} {'metrics off':>12} {'metrics on':>12} {'on/off':>7}")
    print(
        f"{'cached (L1 hits), req/s':<28} {cached['off']:12.0f} {cached['on']:12.0f}"
        f" {cached['on'] / cached['off']:7.3f}"
    )
    print(
        f"{'uncached, audio-s/s':<28} {uncached['off']:12.2f} {uncached['on']:12.2f}"
        f" {uncached['on'] / uncached['off']:7.3f}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=6.0, help="cached-path load duration")
    asyncio.run(run(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
