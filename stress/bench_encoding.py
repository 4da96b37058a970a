"""Encoding cost per audio second and first-output latency, per format, in one run.

    .venv/bin/python -m stress.bench_encoding --bench [--seconds 10] [--runs 3]
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time

import av
import numpy as np

from tts_server.encoding.encoders import AV_CODECS
from tts_server.encoding.formats import FORMATS, open_encoder


def synthetic_speech(seconds: float, rate: int, seed: int = 0) -> np.ndarray:
    """Speech-like int16 test audio: a gliding harmonic voice under a syllable envelope."""
    t = np.arange(int(seconds * rate)) / rate
    phase = 2 * np.pi * np.cumsum(140 + 30 * np.sin(2 * np.pi * 0.7 * t)) / rate
    voice = sum(np.sin(k * phase) / k for k in range(1, 12))
    envelope = np.sqrt(np.clip(np.sin(2 * np.pi * 3 * t), 0, None))
    noise = 0.01 * np.random.default_rng(seed).standard_normal(len(t))
    signal = voice * envelope + noise
    return (signal / np.abs(signal).max() * 0.7 * 32767).astype(np.int16)


def _library(name: str) -> str:
    if name in AV_CODECS:
        return f"PyAV {AV_CODECS[name].codec}" + (" + own Ogg" if name == "opus" else "")
    return "numpy" + (" + soxr" if name == "pcm" else "")


def _playable_ms(name: str, data: bytes, rate: int) -> float:
    """How much audio a player gets out of these bytes."""
    if not FORMATS[name].lossy and name != "flac":
        return max(len(data) - (44 if name == "wav" else 0), 0) / 2 / rate * 1000
    with av.open(io.BytesIO(data)) as container:
        return sum(f.samples / f.sample_rate for f in container.decode(audio=0)) * 1000


def _bench_format(name: str, chunks: list[bytes], rate: int) -> dict[str, float]:
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    encoder = open_encoder(name, rate)
    first = encoder.feed(chunks[0])
    first_ms = (time.perf_counter() - start_wall) * 1000
    total = len(first) + sum(len(encoder.feed(c)) for c in chunks[1:]) + len(encoder.finish())
    return {
        "cpu": time.process_time() - start_cpu,
        "first_bytes": len(first),
        "first_ms": first_ms,
        "first_playable_ms": _playable_ms(name, first, encoder.output_rate),
        "total": total,
    }


def bench(seconds: float = 10.0, runs: int = 3, rate: int = 22_050) -> list[dict[str, object]]:
    """Per format, medians over runs of streaming `seconds` of audio in 0.5 s chunks."""
    pcm = synthetic_speech(seconds, rate).tobytes()
    step = rate  # 0.5 s of int16 samples
    chunks = [pcm[i : i + step] for i in range(0, len(pcm), step)]
    rows = []
    for name in FORMATS:
        results = [_bench_format(name, chunks, rate) for _ in range(runs)]
        med = {k: statistics.median(r[k] for r in results) for k in results[0]}
        rows.append(
            {
                "format": name,
                "library": _library(name),
                "cpu_ms_per_audio_s": med["cpu"] * 1000 / seconds,
                "first_feed_bytes": int(med["first_bytes"]),
                "first_feed_ms": med["first_ms"],
                "first_feed_playable_ms": med["first_playable_ms"],
                "kbps": med["total"] * 8 / seconds / 1000,
            }
        )
    return rows


def _print_table(rows: list[dict[str, object]]) -> None:
    print(
        f"{'format':<11} {'library':<24} {'cpu ms/audio s':>14} {'1st feed bytes':>14} "
        f"{'1st feed ms':>11} {'plays ms':>8} {'kbps':>6}"
    )
    for r in rows:
        print(
            f"{r['format']:<11} {r['library']:<24} {r['cpu_ms_per_audio_s']:>14.2f} "
            f"{r['first_feed_bytes']:>14} {r['first_feed_ms']:>11.2f} "
            f"{r['first_feed_playable_ms']:>8.0f} {r['kbps']:>6.1f}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stress.bench_encoding")
    parser.add_argument("--bench", action="store_true", help="encoding cost and first-output table")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rate", type=int, default=22_050, help="source sample rate")
    args = parser.parse_args(argv)
    if not args.bench:
        parser.print_help()
        return 2
    print(
        f"{args.seconds:g} s of synthetic speech at {args.rate} Hz in 0.5 s chunks, "
        f"median of {args.runs} runs; 'plays ms': audio in the first feed's output (of 500)"
    )
    _print_table(bench(args.seconds, args.runs, args.rate))
    return 0


if __name__ == "__main__":
    sys.exit(main())
