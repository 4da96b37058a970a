"""Cached-response throughput: this server's L1 and L2 hits vs a bare aiohttp handler.

The bare handler returns the very bytes the server returns for the cached text, so the
ratio is the cost of our request path (parsing, validation, key, lookup, headers) over
aiohttp's own floor. Every server runs in its own process; the client is one process too.

    .venv/bin/python -m stress.bench_cache [--rounds 5] [--seconds 3] [--connections 32]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import psutil
from aiohttp import web

from stress.serverproc import REPO, ServerProcess, free_port, wait_http
from stress.throughput import BENCH_ENV, stop

TARGETS = ("bare aiohttp handler", "L1 hit (in-process)", "L2 hit (private Redis)")
TEXT = "Attention please: the train to the airport leaves from platform four in ten minutes."


def serve_bare(port: int, body_file: str) -> None:
    """The floor: an aiohttp handler that reads the request and returns fixed bytes."""
    import uvloop

    body = Path(body_file).read_bytes()

    async def handler(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=body, content_type="audio/wav")

    app = web.Application()
    app.router.add_post("/api/tts", handler)
    app.router.add_get("/readyz", lambda request: web.Response(text="ok"))
    uvloop.install()
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


async def hammer(
    url: str,
    seconds: float,
    connections: int,
    method: str = "POST",
    headers: dict[str, str] | None = None,
) -> tuple[float, float]:
    """Closed loop for `seconds`: requests/s and the client's own CPU % (saturation check)."""
    body = {"text": TEXT} if method == "POST" else None
    count = 0
    deadline = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(limit=connections)
    me = psutil.Process()
    me.cpu_percent(None)

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal count
        while time.monotonic() < deadline:
            async with session.request(method, url, json=body, headers=headers) as response:
                await response.read()
                if response.status == 200:
                    count += 1

    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.monotonic()
        await asyncio.gather(*(client(session) for _ in range(connections)))
        elapsed = time.monotonic() - started
    return count / elapsed, me.cpu_percent(None)


def start_server(
    port: int, cache: dict[str, str], extra_env: dict[str, str] | None = None
) -> ServerProcess:
    env = {
        **BENCH_ENV,
        **(extra_env or {}),
        **{f"TTS_CACHE__{k.upper()}": v for k, v in cache.items()},
    }
    return ServerProcess(env=env, port=port).wait_ready(180)


async def prime(url: str, expected: str) -> bytes:
    async with aiohttp.ClientSession() as session:
        for _ in range(2):
            async with session.post(url, json={"text": TEXT}) as response:
                body, cache = await response.read(), response.headers.get("X-Cache")
    if cache != expected:
        raise RuntimeError(f"expected {expected}, server said {cache}")
    return body


@contextlib.contextmanager
def bare_server(body: bytes) -> Iterator[tuple[str, int]]:
    with tempfile.NamedTemporaryFile(suffix=".wav") as handle:
        handle.write(body)
        handle.flush()
        port = free_port()
        cmd = [sys.executable, "-m", "stress.bench_cache", "--bare-server", str(port), handle.name]
        bare = subprocess.Popen(cmd, cwd=REPO)
        try:
            wait_http(f"http://127.0.0.1:{port}/readyz", bare)
            yield f"http://127.0.0.1:{port}/api/tts", bare.pid
        finally:
            stop(bare)


@contextlib.contextmanager
def tts_server(cache: dict[str, str]) -> Iterator[tuple[str, int]]:
    port = free_port()
    server = start_server(port, cache)
    try:
        yield f"http://127.0.0.1:{port}/api/tts", server.pid
    finally:
        stop(server)


async def measure(url: str, pid: int, args: argparse.Namespace) -> tuple[float, float, float]:
    """requests/s, the client's CPU %, and the server process's CPU microseconds per request:
    the last barely depends on what else runs on the machine, unlike requests/s."""
    server = psutil.Process(pid)
    before = sum(server.cpu_times()[:2])
    started = time.monotonic()
    rate, client_cpu = await hammer(url, args.seconds, args.connections)
    elapsed = time.monotonic() - started
    cpu_us = (sum(server.cpu_times()[:2]) - before) / max(1.0, rate * elapsed) * 1e6
    return rate, client_cpu, cpu_us


async def run(args: argparse.Namespace) -> None:
    """Every target stays up; rounds alternate between them so that a neighbour's load on
    this shared machine hits all of them alike, and each round gives its own ratios."""
    results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in TARGETS}
    with contextlib.ExitStack() as stack:
        l1 = stack.enter_context(tts_server({"redis": '"off"'}))
        l2 = stack.enter_context(tts_server({"l1_max_bytes": "0"}))
        body = await prime(l1[0], "hit-l1")
        await prime(l2[0], "hit-l2")
        bare = stack.enter_context(bare_server(body))
        targets = dict(zip(TARGETS, (bare, l1, l2), strict=True))
        for _ in range(args.rounds):
            for name, (url, pid) in targets.items():
                results[name].append(await measure(url, pid, args))
    report(body, results, args)


def report(body: bytes, results: dict[str, list[tuple[float, float, float]]],
           args: argparse.Namespace) -> None:
    bare = results[TARGETS[0]]
    print(f"response body: {len(body)} bytes; {args.connections} connections; "
          f"{args.rounds} rounds of {args.seconds}s per target, interleaved; medians")
    print(f"{'path':<24} {'req/s':>7} {'/bare':>6} {'server CPU us/req':>18} "
          f"{'bare/this CPU':>14} {'client CPU %':>13}")
    for name in TARGETS:
        rows = results[name]
        rate_ratio = [r[0] / b[0] for r, b in zip(rows, bare, strict=True)]
        cpu_ratio = [b[2] / r[2] for r, b in zip(rows, bare, strict=True)]
        print(f"{name:<24} {statistics.median(r[0] for r in rows):7.0f} "
              f"{statistics.median(rate_ratio):6.2f} {statistics.median(r[2] for r in rows):18.0f} "
              f"{statistics.median(cpu_ratio):14.2f} {statistics.median(r[1] for r in rows):13.0f}")
    print("server CPU: the front process only (an L2 hit also costs Redis CPU, not counted)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=3.0,
                        help="load duration per target and round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds over all targets")
    parser.add_argument("--connections", type=int, default=32, help="concurrent connections")
    parser.add_argument(
        "--bare-server", nargs=2, metavar=("PORT", "BODY_FILE"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.bare_server:
        serve_bare(int(args.bare_server[0]), args.bare_server[1])
        return 0
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
