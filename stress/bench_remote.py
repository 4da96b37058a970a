"""The remote engine's cost and its fallback, measured in one run.

  - overhead: this server in front of an upstream (a second instance of this server, as a
    GPU box would be) vs the upstream alone, the same texts through POST /v1/audio/speech
    (wav), closed loop at each client count, direct and front rounds interleaved; the ratio
    of requests per second and of median latency, medians over the repeats.
  - paired: one client, each text to the upstream and then through the front, alternating:
    the added latency per request, immune to the machine's load drifting between rounds.
  - goodput: clients on the front while the upstream is SIGKILLed mid-run; requests
    answered (and by which engine) before and after, errors, audio seconds per second.

Both run on this machine, so the front's work takes CPU from the upstream's synthesis: the
ratio is an upper bound of what the front costs next to a real GPU box.

    .venv/bin/python -m stress.bench_remote [--seconds 8] [--repeats 5] [--clients 1,8]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import random
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import psutil

from stress.serverproc import ServerProcess
from stress.stats import percentile_or_nan
from stress.texts import news_sentence

QUIET = {"TTS_SERVER__ACCESS_LOG": "false", "TTS_DEGRADATION__ENABLED": "false",
         "TTS_CACHE__ENABLED": "false"}
WAV_HEADER_BYTES = 44
RATE = 22050


@dataclass(frozen=True)
class Result:
    """One answered (or failed) request."""

    started: float
    latency_s: float
    status: int
    engine: str
    audio_s: float


def start_pair(folder: Path, concurrent: int) -> tuple[ServerProcess, ServerProcess]:
    upstream = ServerProcess(log_path=folder / "upstream.log", env=QUIET).wait_ready()
    remote = (f'[{{name = "gpu", base_url = "{upstream.url}", model = "joe", gender = "male",'
              f' voices = {{ada = "alloy"}}, max_concurrent = {concurrent}}}]')
    # Once the upstream is dead the breaker keeps its traffic on the fallback for good.
    env = {**QUIET, "TTS_ENGINES__REMOTE": remote, "TTS_BREAKER__FAILURE_THRESHOLD": "3",
           "TTS_BREAKER__OPEN_S": "600.0"}
    front = ServerProcess(log_path=folder / "front.log", env=env).wait_ready()
    return upstream, front


async def one(session: aiohttp.ClientSession, url: str, model: str, text: str) -> Result:
    body = {"model": model, "voice": "alloy", "input": text, "response_format": "wav"}
    started = time.monotonic()
    try:
        async with session.post(url + "/v1/audio/speech", json=body) as response:
            data = await response.read()
            status, engine = response.status, response.headers.get("X-Engine", "")
    except aiohttp.ClientError:
        status, engine, data = 0, "", b""
    audio_s = max(0, len(data) - WAV_HEADER_BYTES) / 2 / RATE if status == 200 else 0.0
    return Result(started, time.monotonic() - started, status, engine, audio_s)


async def closed_loop(url: str, model: str, texts: list[str], clients: int,
                      seconds: float) -> list[Result]:
    """`clients` loops, each sending the next text as soon as its last answer arrived."""
    results: list[Result] = []
    deadline = time.monotonic() + seconds
    cursor = itertools.count()

    async def client(session: aiohttp.ClientSession) -> None:
        while time.monotonic() < deadline:
            results.append(await one(session, url, model, texts[next(cursor) % len(texts)]))

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(client(session) for _ in range(clients)))
    return results


def rate_and_p50(results: list[Result]) -> tuple[float, float]:
    """Requests per second over the round's real length (its last answers arrive after the
    deadline), and the median latency in ms."""
    ok = [r for r in results if r.status == 200]
    if not ok:
        return 0.0, float("nan")
    elapsed = max(r.started + r.latency_s for r in ok) - min(r.started for r in ok)
    return len(ok) / elapsed, percentile_or_nan([r.latency_s * 1000 for r in ok], 50)


async def paired(upstream: ServerProcess, front: ServerProcess, texts: list[str]
                 ) -> tuple[float, float]:
    """One client, each text to the upstream then through the front: the median of the
    per-pair latency ratio and of the added milliseconds (immune to the machine's load
    drifting between rounds)."""
    ratios, added = [], []
    async with aiohttp.ClientSession() as session:
        for text in texts:
            alone = await one(session, upstream.url, "joe", text)
            fronted = await one(session, front.url, "ada", text)
            if alone.status == fronted.status == 200:
                ratios.append(fronted.latency_s / alone.latency_s)
                added.append((fronted.latency_s - alone.latency_s) * 1000)
    return statistics.median(ratios), statistics.median(added)


async def overhead(upstream: ServerProcess, front: ServerProcess, args: argparse.Namespace
                   ) -> list[tuple[int, float, float, float, float, float, float]]:
    texts = [news_sentence(random.Random(i), f"Item {i}") for i in range(200)]
    rows = []
    for clients in args.clients:
        direct_rates, front_rates, direct_p50, front_p50 = [], [], [], []
        for url, model in ((upstream.url, "joe"), (front.url, "ada")):  # warm-up, not counted
            await closed_loop(url, model, texts, clients, min(args.seconds, 3.0))
        for _ in range(args.repeats):
            for url, model, rates, p50s in ((upstream.url, "joe", direct_rates, direct_p50),
                                            (front.url, "ada", front_rates, front_p50)):
                rate, p50 = rate_and_p50(
                    await closed_loop(url, model, texts, clients, args.seconds))
                rates.append(rate)
                p50s.append(p50)
        ratios = [f / d for f, d in zip(front_rates, direct_rates, strict=True)]
        latency = [f / d for f, d in zip(front_p50, direct_p50, strict=True)]
        rows.append((clients, statistics.median(direct_rates), statistics.median(front_rates),
                     statistics.median(ratios), statistics.median(direct_p50),
                     statistics.median(front_p50), statistics.median(latency)))
    return rows


async def goodput(upstream: ServerProcess, front: ServerProcess, args: argparse.Namespace
                  ) -> tuple[list[Result], float]:
    """Clients on the front; the upstream (and its workers) SIGKILLed at args.kill_at_s."""
    texts = [news_sentence(random.Random(10_000 + i), f"Story {i}") for i in range(400)]
    started = time.monotonic()

    async def killer() -> None:
        await asyncio.sleep(args.kill_at_s)
        family = psutil.Process(upstream.pid).children(recursive=True)
        os.kill(upstream.pid, signal.SIGKILL)
        for child in family:
            with contextlib.suppress(psutil.NoSuchProcess):  # gone on its own
                child.kill()

    results, _ = await asyncio.gather(
        closed_loop(front.url, "ada", texts, args.goodput_clients, args.goodput_seconds),
        killer())
    return results, started + args.kill_at_s


def print_overhead(rows: list[tuple[int, float, float, float, float, float, float]]) -> None:
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    print(f"overhead: the upstream alone vs this server in front of it (medians; load {load})")
    print(f"{'clients':>7} {'direct req/s':>12} {'front req/s':>11} {'front/direct':>12} "
          f"{'direct p50 ms':>13} {'front p50 ms':>12} {'p50 ratio':>9}")
    for clients, d_rate, f_rate, ratio, d_p50, f_p50, lat in rows:
        print(f"{clients:>7} {d_rate:>12.2f} {f_rate:>11.2f} {ratio:>12.3f} "
              f"{d_p50:>13.0f} {f_p50:>12.0f} {lat:>9.3f}")


def print_goodput(results: list[Result], killed_at: float, args: argparse.Namespace) -> None:
    """Requests by when they ran: done before the kill, in flight at it, started after."""
    spans = {
        "done before the kill": [r for r in results if r.started + r.latency_s < killed_at],
        "in flight at the kill": [r for r in results
                                  if r.started < killed_at <= r.started + r.latency_s],
        "started after": [r for r in results if r.started >= killed_at],
    }
    after_s = args.goodput_seconds - args.kill_at_s
    print(f"\ngoodput: {args.goodput_clients} clients for {args.goodput_seconds:g} s, upstream "
          f"SIGKILLed at {args.kill_at_s:g} s")
    for label, part in spans.items():
        ok = [r for r in part if r.status == 200]
        engines = dict(Counter(r.engine for r in ok))
        p50 = percentile_or_nan([r.latency_s * 1000 for r in ok], 50)
        print(f"  {label:<22} {len(ok):>4} ok, {len(part) - len(ok)} failed, p50 {p50:6.0f} ms,"
              f" engines {engines}")
    for label, seconds, part in (("before", args.kill_at_s, spans["done before the kill"]),
                                 ("after", after_s, spans["started after"])):
        ok = [r for r in part if r.status == 200]
        print(f"  goodput {label:<6} {len(ok) / seconds:5.2f} req/s, "
              f"{sum(r.audio_s for r in ok) / seconds:5.1f} audio-s/s")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0, help="per round and target")
    parser.add_argument("--repeats", type=int, default=5, help="rounds per client count")
    parser.add_argument("--clients", default="1,8", help="client counts, comma-separated")
    parser.add_argument("--concurrent", type=int, default=8, help="max_concurrent of the entry")
    parser.add_argument("--pairs", type=int, default=40, help="texts of the paired check")
    parser.add_argument("--goodput-seconds", type=float, default=20.0)
    parser.add_argument("--goodput-clients", type=int, default=8)
    parser.add_argument("--kill-at-s", type=float, default=8.0)
    args = parser.parse_args(argv)
    args.clients = [int(c) for c in args.clients.split(",")]
    if not 0 < args.kill_at_s < args.goodput_seconds:
        parser.error("--kill-at-s must fall within --goodput-seconds")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-remote-") as folder:
        upstream, front = start_pair(Path(folder), args.concurrent)
        try:
            print_overhead(asyncio.run(overhead(upstream, front, args)))
            texts = [news_sentence(random.Random(20_000 + i), f"Pair {i}")
                     for i in range(args.pairs)]
            ratio, added_ms = asyncio.run(paired(upstream, front, texts))
            print(f"paired, 1 client, {args.pairs} texts: front/direct latency {ratio:.3f}, "
                  f"+{added_ms:.1f} ms per request (medians)")
            results, killed_at = asyncio.run(goodput(upstream, front, args))
            print_goodput(results, killed_at, args)
        finally:
            front.stop()
            upstream.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
