"""The seed's cluster table (1 instance vs 3 behind nginx, 500 users), on this machine.

Three targets run side by side on loopback, and take turns under load (rounds, each
starting with another target, so whatever else the shared machine does hits all alike):
  standalone  one server as ./run.sh starts it (private Redis on a Unix socket, in-process
              limiter), no nginx: the reference for what the cluster's parts cost
  cluster x1  `tts_server.cluster` with 1 instance (one worker per core) behind nginx
  cluster x3  the same with 3 instances (the cores shared among them)
Each round drives each target with `python -m stress`: the seed's user model at 500 users,
then unique texts at 8 clients. Then, on each cluster alone, an instance is SIGKILLed and
a rolling restart is done under an open loop of unique texts, counting the requests that
failed at the client. Last, the price of the parts one request at a time: a cached
request and a synthesis, straight to the standalone server, straight to a cluster
instance (its Redis over TCP, the limiter in Redis), and through nginx.

On a 2-core machine 3 instances cannot add compute: the comparison shows what the
cluster adds (failover, rolling restarts) and what it costs (the proxy hop, Redis round
trips), as ratios measured in the same run. "others' CPU" is what the rest of the
machine used meanwhile (the machine's busy time minus the server's and the client's).

    .venv/bin/python -m stress.bench_cluster                 # about 10 minutes
    .venv/bin/python -m stress.bench_cluster --rounds 1 --seconds 10 --json bench.json
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aiohttp
import psutil

from stress.texts import SEED_TEXTS, news_sentence
from tts_server.cluster import Cluster, ClusterOptions, Instance
from tts_server.cluster.processes import consecutive_free_ports, group_members

REPO = Path(__file__).resolve().parent.parent
TOKEN = "test-token"  # stress's default; the seed's script sends it too
TOKEN_SHA256 = hashlib.sha256(TOKEN.encode()).hexdigest()
UNLIMITED = "requests_per_s = 1e6, burst = 1000000, chars_per_min = 1000000000"
BENCH_ENV = {
    "TTS_SERVER__ACCESS_LOG": "false",
    "TTS_DEGRADATION__ENABLED": "false",  # the machine's CPU is the benchmark's own business
    "TTS_AUTH__TOKENS": f'[{{name = "seed", tier = "vip", sha256 = "{TOKEN_SHA256}"}}]',
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
    others_cpu_pct: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)


def combined(runs: list[Load]) -> Load:
    """Rounds of one level: medians of the rates and percentiles, sums of the counts."""
    def median(name: str) -> float:
        return statistics.median(getattr(run, name) for run in runs)

    requests, failed = sum(r.requests for r in runs), sum(r.failed for r in runs)
    errors: dict[str, int] = {}
    for run in runs:
        for kind, count in run.errors.items():
            errors[kind] = errors.get(kind, 0) + count
    return Load(qps=median("qps"), p50_ms=median("p50_ms"), p95_ms=median("p95_ms"),
                error_pct=100 * failed / requests if requests else 0.0, failed=failed,
                requests=requests, audio_per_s=median("audio_per_s"),
                server_cpu_pct=median("server_cpu_pct"),
                others_cpu_pct=median("others_cpu_pct"), errors=errors)


@dataclass
class Target:
    name: str
    url: str
    groups: Callable[[], list[int]]  # process groups whose CPU counts as the server's
    cluster: Cluster | None = None
    runs: dict[str, list[Load]] = field(default_factory=dict)

    @property
    def results(self) -> dict[str, Load]:
        return {name: combined(runs) for name, runs in self.runs.items()}

    def add(self, name: str, load: Load) -> None:
        self.runs.setdefault(name, []).append(load)


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


def busy_seconds() -> float:
    times = psutil.cpu_times()
    return times.user + times.nice + times.system + getattr(times, "irq", 0.0) + \
        getattr(times, "softirq", 0.0)


def stress(target: Target, scenario: list[str], seconds: float, seed: int,
           during: Callable[[], None] | None = None) -> Load:
    """Run `python -m stress SCENARIO` against the target; `during` runs meanwhile."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        command = [sys.executable, "-m", "stress", *scenario, "--url", target.url,
                   "--token", TOKEN, "--duration", str(seconds), "--seed", str(seed),
                   "--timeout", "60", "--quiet", "--no-raw", "--json", out.name]
        cpu_before, busy_before = cpu_seconds(target.groups()), busy_seconds()
        started = time.monotonic()
        process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL)
        try:
            if during is not None:
                during()
            process.wait(seconds + 120)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        wall = time.monotonic() - started
        server = 100 * (cpu_seconds(target.groups()) - cpu_before) / wall
        machine = 100 * (busy_seconds() - busy_before) / wall
        level = json.load(open(out.name))["levels"][0]
    latency = level["latency"] or {}
    client = level["resources"]["client_cpu_mean"] or 0.0
    return Load(qps=level["qps"], p50_ms=latency.get("p50_ms", 0.0),
                p95_ms=latency.get("p95_ms", 0.0), error_pct=100 * level["error_rate"],
                failed=level["requests"] - level["successes"], requests=level["requests"],
                audio_per_s=level["audio_per_second"], server_cpu_pct=server,
                others_cpu_pct=max(0.0, machine - server - client), errors=level["errors"])


# ---- the three targets ----------------------------------------------------------------------


@contextmanager
def standalone(folder: Path) -> Iterator[Target]:
    port = consecutive_free_ports(1)
    server = Instance(0, port, None, {**os.environ, **BENCH_ENV}, folder).start()
    server.child.name = "standalone"
    try:
        server.wait_ready(300)
        yield Target("standalone", server.url, lambda: [server.pid])
    finally:
        server.stop(60)  # past it: SIGKILL, and its shared memory unlinked


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


def warm_up(target: Target, args: argparse.Namespace) -> None:
    """The seed's texts cached, the pool's speed estimate learned; not measured."""
    print(f"  {target.name}: warm-up", file=sys.stderr)
    stress(target, ["seed", "--users", "10"], 3, 1)
    stress(target, ["unique", "--concurrency", str(args.clients)], 5, 2)


def measure_round(targets: list[Target], args: argparse.Namespace, round_index: int) -> None:
    order = targets[round_index % len(targets):] + targets[:round_index % len(targets)]
    for target in order:
        print(f"  round {round_index + 1}: {target.name}, seed at {args.users} users",
              file=sys.stderr)
        target.add("seed", stress(target, ["seed", "--users", str(args.users)], args.seconds,
                                  seed=100 + round_index))
    for index, target in enumerate(order):
        print(f"  round {round_index + 1}: {target.name}, unique texts at {args.clients}"
              " clients", file=sys.stderr)
        unique = ["unique", "--concurrency", str(args.clients)]
        target.add("unique", stress(target, unique, args.seconds,
                                    seed=1000 + 10 * round_index + index))


def faults(target: Target, args: argparse.Namespace) -> None:
    """Under an open loop (requests arrive on a timetable, unique texts), so a failure is a
    request that arrived while nothing could serve it, not a client spinning on instant
    refusals as a closed loop would."""
    assert target.cluster is not None
    steady = ["open", "--rates", f"{args.fault_rate:g}", "--texts", "unique",
              "--connections", "64"]
    print(f"  {target.name}: SIGKILL an instance under load", file=sys.stderr)
    target.add("kill", stress(target, steady, args.fault_seconds, 5000, kill_one(target)))
    print(f"  {target.name}: rolling restart under load", file=sys.stderr)
    seconds = max(args.fault_seconds, 12.0 * len(target.cluster.instances))
    target.add("rolling", stress(target, steady, seconds, 6000, rolling(target)))
    time.sleep(1.2)  # nginx flushes its access log every second
    log = (target.cluster.nginx.prefix / "access.log").read_text().splitlines()
    for line in [x for x in log if "/api/tts" in x and '" 200 ' not in x][:20]:
        print(f"    not 200: {line}", file=sys.stderr)


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
    for url in targets.values():  # the cached text, cached on each
        asyncio.run(latency_ms(url, [SEED_TEXTS[0]]))
    for round_index in range(rounds):
        for name, url in targets.items():
            cached[name].append(asyncio.run(latency_ms(url, [SEED_TEXTS[0]] * 50)))
            texts = [news_sentence(rng, f"Hop {name} {round_index} {n}") for n in range(3)]
            miss[name].append(asyncio.run(latency_ms(url, texts)))
    return {name: {"cached_ms": statistics.median(cached[name]),
                   "miss_ms": statistics.median(miss[name])} for name in targets}


# ---- the report -----------------------------------------------------------------------------


def _row(label: str, values: list[float], digits: int, ratio: bool = True) -> str:
    cells = " | ".join(f"{v:.{digits}f}" for v in values)
    tail = f"{values[2] / values[1]:.2f}" if ratio and values[1] else ""
    return f"| {label} | {cells} | {tail} |"


def print_report(one: Target, three: Target, alone: Target,
                 hops: dict[str, dict[str, float]], args: argparse.Namespace) -> None:
    cores = 100 * (os.cpu_count() or 1)
    per = f"{args.rounds} rounds of {args.seconds:g} s, medians"
    seed = [t.results["seed"] for t in (alone, one, three)]
    print(f"\nThe seed's test: python -m stress seed --users {args.users} ({per}; the seed's"
          " three texts, cached)")
    print("| metric | standalone, no nginx | nginx + 1 instance | nginx + 3 instances | 3 / 1 |"
          " seed's 1 instance | seed's 3 instances |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    seed_paper = {"QPS": (189, 462), "P95 ms": (1143, 621), "Error %": (2.8, 0.3),
                  f"server CPU % (of {cores})": ("94 %", "")}
    for label, attr, digits in (("QPS", "qps", 0), ("P95 ms", "p95_ms", 1),
                                ("Error %", "error_pct", 2),
                                (f"server CPU % (of {cores})", "server_cpu_pct", 0),
                                ("others' CPU %", "others_cpu_pct", 0)):
        paper = seed_paper.get(label, ("", ""))
        row = _row(label, [getattr(x, attr) for x in seed], digits, label != "Error %")
        print(f"{row} {paper[0]} | {paper[1]} |")
    unique = [t.results["unique"] for t in (alone, one, three)]
    print(f"\nUnique texts (no cache): python -m stress unique --concurrency {args.clients}"
          f" ({per})")
    print("| metric | standalone | nginx + 1 instance | nginx + 3 instances | 3 / 1 |")
    print("|---|---:|---:|---:|---:|")
    for label, attr, digits in (("audio-s/s", "audio_per_s", 1), ("QPS", "qps", 2),
                                ("P50 ms", "p50_ms", 0), ("P95 ms", "p95_ms", 0),
                                (f"server CPU % (of {cores})", "server_cpu_pct", 0),
                                ("others' CPU %", "others_cpu_pct", 0),
                                ("failed requests", "failed", 0)):
        print(_row(label, [getattr(x, attr) for x in unique], digits))
    # On a shared machine the targets get different shares of the CPU; per CPU-second of
    # the servers' own processes the comparison does not depend on the neighbours.
    per_cpu = [x.audio_per_s / (x.server_cpu_pct / 100) if x.server_cpu_pct else 0.0
               for x in unique]
    print(_row("audio-s per server CPU-s", per_cpu, 1))
    print(f"\nFaults under load (python -m stress open --rates {args.fault_rate:g} --texts"
          " unique), failed client requests:")
    print("| fault | nginx + 1 instance | nginx + 3 instances |")
    print("|---|---:|---:|")
    for key, label in (("kill", "SIGKILL one instance, restart it 3 s later"),
                       ("rolling", "rolling restart (SIGTERM, wait /readyz, next)")):
        cells = []
        for load in (one.results[key], three.results[key]):
            kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(load.errors.items()))
            cells.append(f"{load.failed} of {load.requests}" + (f" ({kinds})" if kinds else ""))
        print(f"| {label} | {cells[0]} | {cells[1]} |")
    base = hops["standalone"]
    print(f"\nOne request at a time, one keep-alive connection (medians of {args.hop_rounds}"
          " rounds): the price of the parts")
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
    parser.add_argument("--seconds", type=float, default=15.0,
                        help="per load level and round (15)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the load levels (3)")
    parser.add_argument("--fault-seconds", type=float, default=20.0,
                        help="kill run length; the rolling run lasts 12 s per instance or more")
    parser.add_argument("--fault-rate", type=float, default=4.0,
                        help="arrivals per second (unique texts) during the faults (4)")
    parser.add_argument("--hop-rounds", type=int, default=10, help="one-at-a-time rounds (10)")
    parser.add_argument("--json", type=Path, help="write every number as JSON")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp, ExitStack() as stack:
        folder = Path(tmp)
        print("starting the standalone server and both clusters", file=sys.stderr)
        alone = stack.enter_context(standalone(folder))
        one = stack.enter_context(cluster(folder, 1))
        three = stack.enter_context(cluster(folder, 3))
        targets = [alone, one, three]
        for target in targets:
            warm_up(target, args)
        for round_index in range(args.rounds):
            measure_round(targets, args, round_index)
        faults(one, args)
        faults(three, args)
        print("one request at a time", file=sys.stderr)
        assert one.cluster is not None
        hops = hop_costs({"standalone": alone.url, "instance": one.cluster.instances[0].url,
                          "nginx": one.url}, args.hop_rounds, seed=40)
    print_report(one, three, alone, hops, args)
    if args.json:
        document: dict[str, object] = {
            name: {level: [asdict(run) for run in runs] for level, runs in t.runs.items()}
            for name, t in (("standalone", alone), ("cluster1", one), ("cluster3", three))}
        document["one_at_a_time"] = hops
        document["settings"] = {k: str(v) if isinstance(v, Path) else v
                                for k, v in vars(args).items()}
        args.json.write_text(json.dumps(document, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
