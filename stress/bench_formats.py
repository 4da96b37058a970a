"""Streamed time to first byte per format, through the real server, in one run.

For each format, the same kind of three-sentence paragraphs are streamed one at a time
(unique texts, cache off); the time from sending the request to the first byte of the
body is the time to first audio the client sees. Encoding cost per audio second is
`python -m stress.bench_encoding --bench`.

    .venv/bin/python -m stress.bench_formats [--paragraphs 6]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time

import aiohttp

from stress.bench_cache import start_server
from stress.serverproc import free_port
from stress.throughput import news_texts, stop

FORMATS = ("wav", "pcm", "mp3", "opus", "aac", "flac")


async def first_byte_ms(session: aiohttp.ClientSession, url: str, text: str, fmt: str) -> float:
    started = time.monotonic()
    async with session.post(url, json={"text": text, "format": fmt, "stream": True}) as response:
        await response.content.readany()
        elapsed = (time.monotonic() - started) * 1000
        await response.read()
    return elapsed


async def run(args: argparse.Namespace) -> None:
    port = free_port()
    server = start_server(port, {"enabled": "false"})
    url = f"http://127.0.0.1:{port}/api/tts"
    try:
        async with aiohttp.ClientSession() as session:
            await first_byte_ms(session, url, "Warm up.", "mp3")
            results = {fmt: [] for fmt in FORMATS}
            for round_ in range(args.paragraphs):
                for index, fmt in enumerate(FORMATS):  # interleaved: noise hits all alike
                    serial = 1000 * round_ + 3 * index
                    text = " ".join(news_texts(3, serial, serial))
                    results[fmt].append(await first_byte_ms(session, url, text, fmt))
    finally:
        stop(server)
    wav = statistics.median(results["wav"])
    print(f"{'format':<6} {'TTFB p50 ms':>12} {'vs wav':>7}")
    for fmt, values in results.items():
        median = statistics.median(values)
        print(f"{fmt:<6} {median:12.1f} {median / wav:7.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--paragraphs", type=int, default=6, help="paragraphs per format")
    asyncio.run(run(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
