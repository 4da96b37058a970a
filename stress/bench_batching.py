"""The INT8 x batching decision table, measured through HTTP on the real server.

For each of {FP32, INT8 (voices.int8_recipe)} x {batching off, on} it starts this server
(`python -m tts_server`, cache off, no rate limit, no degradation ladder: the engine path),
drives `POST /api/tts` closed-loop at each concurrency level with unique news sentences
(stress/throughput.py's clients and texts) and reads the workers' CPU time and batch
counters from /readyz around each level. Within a repeat every configuration gets the same
texts; the order of the configurations rotates every repeat; the table shows medians.

    python -m stress.bench_batching                    # levels 1,8,64, 3 repeats (~15 min)
    python -m stress.bench_batching --repeats 1 --scale 0.5 --levels 1,8

Columns: audio-s/s (audio seconds per wall second), its ratio to FP32 without batching at
the same concurrency, p50/p95 latency (ms, request to last byte), the mean size of the
batches formed (units in batches / batches; "-" when none), and audio seconds per CPU
second of the Piper workers (what batching would have to improve on a busy machine).
WER: not recomputed here (minutes of Whisper); the values of docs/int8_and_batching.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp

from stress.serverproc import ServerProcess, free_port
from stress.throughput import BENCH_ENV, closed_loop, news_texts, requests_for, stop
from tts_server.config import load_settings

# WER % of the held-out evaluation sentences (python -m inference.tools.wer, noise fixed), from
# docs/int8_and_batching.md: 60 sentences / 200 sentences. Batching does not change the
# model; its audio matches the unbatched audio (tests/inference/test_pool_batch.py).
WER = {
    "fp32": (0.96, 1.45),
    "qdq-dec-act-pc-u8": (1.56, 1.84),
    "qdq-dec-act-flow-enc-pc-u8": (1.92, 2.16),
}


@dataclass(frozen=True)
class Config:
    model: str  # "fp32" or an INT8 recipe
    batching: str  # "off" or "on"

    @property
    def env(self) -> dict[str, str]:
        precision = "fp32" if self.model == "fp32" else "int8"
        env = {"TTS_VOICES__PRECISION": f'"{precision}"',
               "TTS_BATCHING__MODE": f'"{self.batching}"'}
        if precision == "int8":
            env["TTS_VOICES__INT8_RECIPE"] = f'"{self.model}"'
        return env


@dataclass
class Row:
    model: str
    batching: str
    concurrency: int
    repeat: int
    requests: int
    errors: int
    audio_s_per_s: float
    p50_ms: float
    p95_ms: float
    audio_s: float
    cpu_s: float
    batches: int
    batched_units: int
    # The machine's 1-minute load average after the level (other work on a shared machine).
    load1: float = 0.0


# Every request is served, however long it waits: the table compares synthesis capacity, and
# deadline admission would refuse a slower configuration's requests (fast 503s that a
# closed loop replaces at once) instead of showing its latency.
NO_DEADLINE_ENV = {
    "TTS_LIMITS__TIERS": "{anonymous = {deadline_s = 3600.0}}",
    "TTS_SERVER__REQUEST_TIMEOUT_S": "3600.0",
}


def start_server(port: int, workers: int, config: Config, extra_env: dict[str, str]
                 ) -> ServerProcess:
    env = {**BENCH_ENV, **NO_DEADLINE_ENV, "TTS_CACHE__ENABLED": "false",
           **extra_env, **config.env}
    return ServerProcess(env=env, args=("--workers", str(workers)), port=port).wait_ready(180)


async def piper_counters(base: str) -> tuple[float, int, int]:
    """Piper workers' CPU seconds, batches and batched units so far (from /readyz)."""
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base}/readyz") as response:
            pool = (await response.json())["pools"]["piper"]
    cpu = sum(w["cpu_seconds"] for w in pool["workers"])
    return cpu, pool.get("batches_completed", 0), pool.get("batched_units_completed", 0)


async def measure_config(
    config: Config, repeat: int, texts_by_level: dict[int, list[str]], args: argparse.Namespace
) -> list[Row]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    extra = {"TTS_BATCHING__MAX_BATCH": str(args.max_batch),
             "TTS_BATCHING__MAX_WAIT_MS": str(float(args.max_wait_ms))}
    server = start_server(port, args.workers, config, extra)
    rows = []
    try:
        await closed_loop(f"{base}/api/tts", [{"text": "Warm the connection pool."}], 1)
        for level, texts in texts_by_level.items():
            before = await piper_counters(base)
            started = time.monotonic()
            result = await closed_loop(f"{base}/api/tts", [{"text": t} for t in texts], level)
            wall = time.monotonic() - started  # closed_loop's own wall, within a few ms
            after = await piper_counters(base)
            cpu, batches, batched = (a - b for a, b in zip(after, before, strict=True))
            wall_audio = result.audio_s_per_s
            rows.append(Row(config.model, config.batching, level, repeat, result.requests,
                            result.errors, wall_audio, result.p50_ms, result.p95_ms,
                            wall_audio * wall, cpu, int(batches), int(batched),
                            os.getloadavg()[0]))
            print(f"  {config.model:>28} {config.batching:>3} c={level:<3}"
                  f" {wall_audio:7.2f} audio-s/s  p95 {result.p95_ms:7.0f} ms"
                  f"  {wall_audio * wall / cpu if cpu else 0:6.2f} per CPU-s"
                  f"  batches {int(batches)}  errors {result.errors}"
                  f"  load {os.getloadavg()[0]:.1f}", flush=True)
    finally:
        stop(server)
    return rows


def grouped(rows: list[Row]) -> dict[tuple[str, str, int], list[Row]]:
    """Rows by (model, batching, concurrency): by level, FP32 first, batching off first."""
    groups: dict[tuple[str, str, int], list[Row]] = {}
    for row in rows:
        groups.setdefault((row.model, row.batching, row.concurrency), []).append(row)
    return dict(sorted(groups.items(), key=lambda kv: (kv[0][2], kv[0][0] != "fp32",
                                                       kv[0][1] != "off")))


def _median(group: list[Row], name: str) -> float:
    return statistics.median(getattr(r, name) for r in group)


def median_rows(rows: list[Row]) -> list[dict[str, object]]:
    table = []
    for (model, batching, level), group in grouped(rows).items():
        batches = sum(r.batches for r in group)
        table.append({
            "model": model, "batching": batching, "concurrency": level,
            "audio_s_per_s": _median(group, "audio_s_per_s"),
            "p50_ms": _median(group, "p50_ms"), "p95_ms": _median(group, "p95_ms"),
            "errors": sum(r.errors for r in group),
            "mean_batch": sum(r.batched_units for r in group) / batches if batches else None,
            "audio_s_per_cpu_s": statistics.median(
                r.audio_s / r.cpu_s if r.cpu_s else 0.0 for r in group),
            "repeats": len(group),
        })
    return table


def print_table(table: list[dict[str, object]]) -> None:
    base = {t["concurrency"]: t["audio_s_per_s"] for t in table
            if t["batching"] == "off" and t["model"] == "fp32"}
    print("| model | batching | concurrency | audio-s/s | x FP32 off | p50 ms | p95 ms |"
          " mean batch | audio-s per CPU-s | WER % (60 / 200) | errors |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for t in table:
        ref = base.get(t["concurrency"])
        ratio = f"{t['audio_s_per_s'] / ref:.2f}" if ref else "-"
        wer = WER.get(t["model"])
        wer_text = f"{wer[0]:.2f} / {wer[1]:.2f}" if wer else "-"
        mean_batch = f"{t['mean_batch']:.1f}" if t["mean_batch"] else "-"
        print(f"| {t['model']} | {t['batching']} | {t['concurrency']} |"
              f" {t['audio_s_per_s']:.2f} | {ratio} | {t['p50_ms']:.0f} | {t['p95_ms']:.0f} |"
              f" {mean_batch} | {t['audio_s_per_cpu_s']:.2f} | {wer_text} | {t['errors']} |")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--levels", default="1,8,64", help="client concurrency levels")
    parser.add_argument("--repeats", type=int, default=3, help="rotations of the four configs")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--scale", type=float, default=1.0,
                        help="requests per level = max(40, 3 x concurrency) x scale")
    parser.add_argument("--int8", default=load_settings().voices.int8_recipe,
                        help="INT8 recipe (default: config.toml's voices.int8_recipe)")
    batching = load_settings().batching
    parser.add_argument("--max-batch", type=int, default=batching.max_batch,
                        help="batching.max_batch of the servers with batching on")
    parser.add_argument("--max-wait-ms", type=float, default=batching.max_wait_ms,
                        help="batching.max_wait_ms of the servers with batching on")
    parser.add_argument("--seed", type=int, default=11, help="text generator seed")
    parser.add_argument("--json", help="write every row and the table to this file")
    parser.add_argument("--merge", nargs="*", default=[],
                        help="--json files of earlier runs: the table takes the medians over "
                             "their rows and this run's")
    return parser.parse_args(argv)


async def run(args: argparse.Namespace) -> list[Row]:
    levels = [int(x) for x in args.levels.split(",")]
    configs = [Config(m, b) for m in ("fp32", args.int8) for b in ("off", "on")]
    rows: list[Row] = []
    for repeat in range(args.repeats):
        texts = {
            level: news_texts(requests_for(level, args.scale), args.seed + 97 * repeat + i,
                              100_000 * repeat + 10_000 * i)
            for i, level in enumerate(levels)
        }
        shift = repeat % len(configs)
        order = configs[shift:] + configs[:shift]
        if repeat % 2:
            order.reverse()
        print(f"repeat {repeat + 1}/{args.repeats}: " + ", ".join(
            f"{c.model}/{c.batching}" for c in order), flush=True)
        for config in order:
            rows += await measure_config(config, repeat, texts, args)
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rows = asyncio.run(run(args))
    if args.merge:
        for path in args.merge:
            rows += [Row(**r) for r in json.loads(Path(path).read_text())["rows"]]
    table = median_rows(rows)
    print_table(table)
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"args": vars(args), "rows": [asdict(r) for r in rows], "table": table}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
