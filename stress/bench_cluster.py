"""The seed's cluster table (1 instance vs 3 behind nginx, 500 users), on this machine.

One run starts, one after another, on loopback:
  standalone  one server as ./run.sh starts it (private Redis on a Unix socket, in-process
              limiter), no nginx: the reference for what the cluster's parts cost
  cluster x1  `tts_server.cluster` with 1 instance (all cores' workers) behind nginx
  cluster x3  the same with 3 instances (the cores shared among them)
and drives each with `python -m stress` (the seed's user model at 500 users; unique
texts at 8 clients), then, on the clusters, SIGKILLs an instance and does a rolling
restart under unique load, counting the requests that failed at the client. Last, it
measures the price of the parts one request at a time: a cached request straight to the
standalone server, straight to a cluster instance (its Redis over TCP, the limiter in
Redis) and through nginx; and a synthesis (miss) the same three ways.

On a 2-core machine 3 instances cannot add compute: the comparison shows what the
cluster adds (failover, rolling restarts) and what it costs (the proxy hop, Redis round
trips), as ratios measured in the same run.

    .venv/bin/python -m stress.bench_cluster                 # about 8 minutes
    .venv/bin/python -m stress.bench_cluster --seconds 20 --json bench.json
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aiohttp
import psutil

from stress.texts import SEED_TEXTS, news_sentence
from tts_server.cluster import Cluster, ClusterOptions
from tts_server.cluster.processes import Child, consecutive_free_ports, group_members, wait_port

REPO = Path(__file__).resolve().parent.parent
TOKEN = "test-token"  # stress's default; the seed's script sends it too
UNLIMITED = "requests_per_s = 1e6, burst = 1000000, chars_per_min = 1000000000"
BENCH_ENV = {
    "TTS_SERVER__ACCESS_LOG": "false",
    "TTS_DEGRADATION__ENABLED": "false",  # the machine's CPU is the benchmark's own business
    "TTS_AUTH__TOKENS": "[{name = \"seed\", tier = \"vip\", sha256 = \"%s\"}]"
                        % hashlib.sha256(TOKEN.encode()).hexdigest(),
    "TTS_LIMITS__TIERS": f"{{vip = {{{UNLIMITED}}}}}",  # the limiter runs, never refuses
}


@dataclass
class Load:
    """One `python -m stress` level as its JSON reports it, plus the servers' CPU."""

    qps: float = 0.0
    p50_ms: float = 0.0
    p95_ms: float = 0.0
    error_pct: float = 0.0
    failed: int = 0
    requests: int = 0
    audio_per_s: float = 0.0
    server_cpu_pct: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)


@dataclass
class Target:
    name: str
    url: str
    groups: Callable[[], list[int]]  # process groups whose CPU counts as the server's
    cluster: Cluster | None = None
    results: dict[str, Load] = field(default_factory=dict)


def cpu_seconds(groups: list[int]) -> float:
    total = 0.0
    for pgid in groups:
        for pid in group_members(pgid):
            try:
                times = psutil.Process(pid).cpu_times()
            except psutil.Error:
                continue
            total += times.user + times.system + times.children_user + times.children_system
    return total


def stress(target: Target, scenario: list[str], seconds: float, seed: int,
           during: Callable[[], None] | None = None) -> Load:
    """Run `python -m stress SCENARIO` against the target; `during` runs meanwhile."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        command = [sys.executable, "-m", "stress", *scenario, "--url", target.url,
                   "--token", TOKEN, "--duration", str(seconds), "--seed", str(seed),
                   "--timeout", "60", "--quiet", "--no-raw", "--json", out.name]
        cpu_before, started = cpu_seconds(target.groups()), time.monotonic()
        process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL)
        try:
            if during is not None:
                during()
            process.wait(seconds + 120)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        cpu = (cpu_seconds(target.groups()) - cpu_before) / (time.monotonic() - started)
        level = json.load(open(out.name))["levels"][0]
    latency = level["latency"] or {}
    return Load(qps=level["qps"], p50_ms=latency.get("p50_ms", 0.0),
                p95_ms=latency.get("p95_ms", 0.0), error_pct=100 * level["error_rate"],
                failed=level["requests"] - level["successes"], requests=level["requests"],
                audio_per_s=level["audio_per_second"], server_cpu_pct=100 * cpu,
                errors=level["errors"])


# ---- the three targets ----------------------------------------------------------------------


@contextmanager
def standalone(folder: Path) -> Iterator[Target]:
    port = consecutive_free_ports(1)
    env = {**os.environ, **BENCH_ENV}
    child = Child("standalone", [sys.executable, "-m", "tts_server", "--port", str(port)],
                  folder / "standalone.log", env=env, cwd=REPO).start()
    try:
        wait_port(port, child, 300)
        yield Target("standalone", f"http://127.0.0.1:{port}", lambda: [child.pid])
    finally:
        child.stop(signal.SIGTERM, 60)


@contextmanager
def cluster(folder: Path, instances: int) -> Iterator[Target]:
    options = ClusterOptions(instances=instances, port=consecutive_free_ports(instances + 1),
                             run_dir=folder / f"cluster{instances}",
                             redis_dir=folder / f"cluster{instances}" / "redis", env=BENCH_ENV)
    started = Cluster(options)
    try:
        started.start()
        yield Target(f"cluster x{instances}", started.url,
                     lambda: [c.pid for c in started.children() if c.process is not None],
                     started)
    finally:
        started.stop()


# ---- what each target goes through ----------------------------------------------------------


def kill_one(target: Target, after_s: float = 5.0, down_s: float = 3.0) -> Callable[[], None]:
    def action() -> None:
        assert target.cluster is not None
        time.sleep(after_s)
        victim = target.cluster.instances[0]
        victim.force_stop()  # SIGKILL, as a crash
        time.sleep(down_s)
        victim.start()
        victim.wait_ready(300)

    return action


def rolling(target: Target, after_s: float = 3.0) -> Callable[[], None]:
    def action() -> None:
        assert target.cluster is not None
        time.sleep(after_s)
        for index in range(1, len(target.cluster.instances) + 1):
            target.cluster.restart_instance(index)

    return action


def loads(target: Target, args: argparse.Namespace, seed: int) -> None:
    seconds = args.seconds
    print(f"  {target.name}: warm-up (the seed's texts cached, speed estimates learned)",
          file=sys.stderr)
    stress(target, ["seed", "--users", "10"], 3, seed + 5)
    stress(target, ["unique", "--concurrency", str(args.clients)], 5, seed + 6)
    print(f"  {target.name}: seed at {args.users} users", file=sys.stderr)
    target.results["seed"] = stress(target, ["seed", "--users", str(args.users)], seconds, seed)
    print(f"  {target.name}: unique texts at {args.clients} clients", file=sys.stderr)
    unique = ["unique", "--concurrency", str(args.clients)]
    target.results["unique"] = stress(target, unique, seconds, seed + 1)
    if target.cluster is None:
        return
    # Faults under an open loop (requests arrive on a timetable, unique texts): a failure
    # is a request that arrived while nothing could serve it, not a client spinning on
    # instant refusals as a closed loop would.
    steady = ["open", "--rates", f"{args.fault_rate:g}", "--texts", "unique",
              "--connections", "64"]
    print(f"  {target.name}: SIGKILL an instance under load", file=sys.stderr)
    target.results["kill"] = stress(target, steady, args.fault_seconds, seed + 2,
                                    kill_one(target))
    print(f"  {target.name}: rolling restart under load", file=sys.stderr)
    seconds = max(args.fault_seconds, 12.0 * len(target.cluster.instances))
    target.results["rolling"] = stress(target, steady, seconds, seed + 3, rolling(target))


# ---- one request at a time ------------------------------------------------------------------


async def latency_ms(url: str, texts: list[str]) -> float:
    """Median latency of these requests, one after another on one keep-alive connection."""
    timings = []
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession() as session:
        for text in texts:
            started = time.perf_counter()
            async with session.post(url + "/api/tts", json={"text": text},
                                    headers=headers) as response:
                await response.read()
                assert response.status == 200, response.status
            timings.append((time.perf_counter() - started) * 1000)
    return statistics.median(timings)


def hop_costs(targets: dict[str, str], rounds: int, seed: int) -> dict[str, dict[str, float]]:
    """Cached and uncached latency at one client, interleaved so drift hits all alike."""
    cached: dict[str, list[float]] = {name: [] for name in targets}
    miss: dict[str, list[float]] = {name: [] for name in targets}
    import random

    rng = random.Random(seed)
    for name, url in targets.items():  # one cached text per target
        asyncio.run(latency_ms(url, [SEED_TEXTS[0]]))
    for round_index in range(rounds):
        for name, url in targets.items():
            cached[name].append(asyncio.run(latency_ms(url, [SEED_TEXTS[0]] * 50)))
            texts = [news_sentence(rng, f"Hop {name} {round_index} {n}") for n in range(3)]
            miss[name].append(asyncio.run(latency_ms(url, texts)))
    return {name: {"cached_ms": statistics.median(cached[name]),
                   "miss_ms": statistics.median(miss[name])} for name in targets}


# ---- the report -----------------------------------------------------------------------------


def print_report(one: Target, three: Target, alone: Target,
                 hops: dict[str, dict[str, float]], args: argparse.Namespace) -> None:
    s1, s3, sa = one.results["seed"], three.results["seed"], alone.results["seed"]
    print(f"\nThe seed's test through nginx: python -m stress seed --users {args.users}, "
          f"{args.seconds:g} s (cached payloads after the first request)")
    print("| metric | standalone (no nginx) | 1 instance | 3 instances | 3 / 1 |"
          " seed: 1 instance | seed: 3 instances |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    print(f"| QPS | {sa.qps:.0f} | {s1.qps:.0f} | {s3.qps:.0f} | {s3.qps / s1.qps:.2f} |"
          " 189 | 462 |")
    print(f"| P95 ms | {sa.p95_ms:.1f} | {s1.p95_ms:.1f} | {s3.p95_ms:.1f} |"
          f" {s3.p95_ms / s1.p95_ms:.2f} | 1143 | 621 |")
    print(f"| Error % | {sa.error_pct:.2f} | {s1.error_pct:.2f} | {s3.error_pct:.2f} | |"
          " 2.8 | 0.3 |")
    print(f"| server CPU % (of {100 * (os.cpu_count() or 1)}) | {sa.server_cpu_pct:.0f} |"
          f" {s1.server_cpu_pct:.0f} | {s3.server_cpu_pct:.0f} | | 94 | |")
    u1, u3, ua = one.results["unique"], three.results["unique"], alone.results["unique"]
    print(f"\nUnique texts (no cache): python -m stress unique --concurrency {args.clients}, "
          f"{args.seconds:g} s")
    print("| metric | standalone | 1 instance | 3 instances | 3 / 1 |")
    print("|---|---:|---:|---:|---:|")
    for label, attr, digits in (("audio-s/s", "audio_per_s", 1), ("QPS", "qps", 2),
                                ("P50 ms", "p50_ms", 0), ("P95 ms", "p95_ms", 0),
                                ("server CPU %", "server_cpu_pct", 0),
                                ("failed requests", "failed", 0)):
        a, b, c = (getattr(x, attr) for x in (ua, u1, u3))
        ratio = f"{c / b:.2f}" if b else ""
        print(f"| {label} | {a:.{digits}f} | {b:.{digits}f} | {c:.{digits}f} | {ratio} |")
    print(f"\nFaults under load (python -m stress open --rates {args.fault_rate:g} --texts"
          " unique), failed client requests:")
    print("| fault | 1 instance | 3 instances |")
    print("|---|---:|---:|")
    for key, label in (("kill", "SIGKILL one instance, restart it 3 s later"),
                       ("rolling", "rolling restart (SIGTERM, wait /readyz, next)")):
        a, b = one.results[key], three.results[key]
        print(f"| {label} | {a.failed} of {a.requests} | {b.failed} of {b.requests} |")
    base = hops["standalone"]
    print("\nOne request at a time (medians): the price of the parts")
    print("| path | cached ms | x standalone | synthesis (miss) ms | x standalone |")
    print("|---|---:|---:|---:|---:|")
    names = {"standalone": "standalone (private Redis, Unix socket; in-process limiter)",
             "instance": "cluster instance, direct (Redis over TCP; limiter in Redis)",
             "nginx": "through nginx (the same instance and Redis)"}
    for key, label in names.items():
        row = hops[key]
        print(f"| {label} | {row['cached_ms']:.2f} | {row['cached_ms'] / base['cached_ms']:.2f}"
              f" | {row['miss_ms']:.0f} | {row['miss_ms'] / base['miss_ms']:.2f} |")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m stress.bench_cluster", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=500, help="seed users (500)")
    parser.add_argument("--clients", type=int, default=8, help="unique-text clients (8)")
    parser.add_argument("--seconds", type=float, default=40.0, help="per load level (40)")
    parser.add_argument("--fault-seconds", type=float, default=20.0,
                        help="kill run length; the rolling run lasts 12 s per instance or more")
    parser.add_argument("--fault-rate", type=float, default=4.0,
                        help="arrivals per second (unique texts) during the faults (4)")
    parser.add_argument("--rounds", type=int, default=5, help="one-at-a-time rounds (5)")
    parser.add_argument("--json", type=Path, help="write every number as JSON")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        folder = Path(tmp)
        print("standalone server", file=sys.stderr)
        with standalone(folder) as alone:
            loads(alone, args, seed=10)
        print("cluster of 1 instance", file=sys.stderr)
        with cluster(folder, 1) as one:
            loads(one, args, seed=20)
        print("cluster of 3 instances", file=sys.stderr)
        with cluster(folder, 3) as three:
            loads(three, args, seed=30)
        print("one request at a time", file=sys.stderr)
        with standalone(folder) as alone_again, cluster(folder, 1) as hop:
            assert hop.cluster is not None
            hops = hop_costs({"standalone": alone_again.url,
                              "instance": hop.cluster.instances[0].url,
                              "nginx": hop.url}, args.rounds, seed=40)
    print_report(one, three, alone, hops, args)
    if args.json:
        document = {name: {k: asdict(v) for k, v in t.results.items()}
                    for name, t in (("standalone", alone), ("cluster1", one),
                                    ("cluster3", three))}
        document["one_at_a_time"] = hops
        document["settings"] = vars(args) | {"json": str(args.json)}
        args.json.write_text(json.dumps(document, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
