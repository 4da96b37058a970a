"""Pure statistics over samples: exact percentiles, error and cache counts, time windows."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .samples import Sample

PERCENTILES = (50.0, 90.0, 95.0, 99.0)
CACHE_HITS = frozenset({"hit-l1", "hit-l2"})
CACHE_COALESCED = "coalesced"


def percentile(sorted_values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile: the smallest value with at least pct % of values at or below it."""
    if not sorted_values:
        raise ValueError("percentile of no values")
    if not 0.0 <= pct <= 100.0:
        raise ValueError(f"percentile out of range: {pct}")
    rank = math.ceil(pct / 100.0 * len(sorted_values))
    return sorted_values[max(rank, 1) - 1]


def percentile_or_nan(values: Sequence[float], pct: float) -> float:
    """percentile() of unsorted values, NaN for none (a benchmark level where all failed)."""
    return percentile(sorted(values), pct) if values else float("nan")


@dataclass(frozen=True)
class Distribution:
    """Summary of a set of durations, in milliseconds, from every value (no histogram)."""

    count: int
    min_ms: float
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float

    @classmethod
    def of_seconds(cls, values: Iterable[float]) -> Distribution | None:
        ordered = sorted(value * 1000.0 for value in values)
        if not ordered:
            return None
        p50, p90, p95, p99 = (percentile(ordered, pct) for pct in PERCENTILES)
        mean = math.fsum(ordered) / len(ordered)
        return cls(len(ordered), ordered[0], mean, p50, p90, p95, p99, ordered[-1])


@dataclass(frozen=True)
class CacheStats:
    """X-Cache values seen; hit rate is None ("n/a") when no response carried the header."""

    counts: dict[str, int]
    with_header: int
    hits: int  # hit-l1 + hit-l2
    coalesced: int  # answered by another in-flight synthesis of the same text

    @property
    def hit_rate(self) -> float | None:
        return self.hits / self.with_header if self.with_header else None


def cache_stats(samples: Iterable[Sample]) -> CacheStats:
    counts = Counter(sample.cache for sample in samples if sample.cache is not None)
    hits = sum(count for value, count in counts.items() if value in CACHE_HITS)
    return CacheStats(dict(counts), sum(counts.values()), hits, counts.get(CACHE_COALESCED, 0))


def error_counts(samples: Iterable[Sample]) -> dict[str, int]:
    """Failed requests by kind: "http_<status>", "timeout", "connection", ..."""
    counts = Counter(sample.error for sample in samples if sample.error is not None)
    return dict(sorted(counts.items()))


def send_rate(samples: Sequence[Sample]) -> float | None:
    """Requests started per second between the first and the last start."""
    if len(samples) < 2:
        return None
    starts = [sample.sent_s for sample in samples]
    span = max(starts) - min(starts)
    return (len(samples) - 1) / span if span > 0 else None


@dataclass(frozen=True)
class LevelStats:
    """Everything computed from one level's samples; latency and TTFB count successes only."""

    requests: int
    successes: int
    elapsed_s: float
    qps: float  # successful responses per second of the level's wall time
    error_rate: float
    errors: dict[str, int]
    latency: Distribution | None
    latency_all: Distribution | None  # failures included (a timeout counts at its timeout)
    ttfb: Distribution | None
    send_lag: Distribution | None  # started minus scheduled: the client falling behind
    send_rate: float | None
    audio_seconds: float
    audio_per_second: float
    cache: CacheStats


def level_stats(samples: Sequence[Sample], elapsed_s: float) -> LevelStats:
    successes = [sample for sample in samples if sample.ok]
    audio = math.fsum(sample.audio_s or 0.0 for sample in successes)
    return LevelStats(
        requests=len(samples),
        successes=len(successes),
        elapsed_s=elapsed_s,
        qps=_per_second(len(successes), elapsed_s),
        error_rate=(len(samples) - len(successes)) / len(samples) if samples else 0.0,
        errors=error_counts(samples),
        latency=Distribution.of_seconds(sample.latency_s for sample in successes),
        latency_all=Distribution.of_seconds(sample.latency_s for sample in samples),
        ttfb=Distribution.of_seconds(_ttfbs(successes)),
        send_lag=Distribution.of_seconds(sample.sent_s - sample.scheduled_s for sample in samples),
        send_rate=send_rate(samples),
        audio_seconds=audio,
        audio_per_second=_per_second(audio, elapsed_s),
        cache=cache_stats(samples),
    )


@dataclass(frozen=True)
class Window:
    """Requests that completed in [start_s, end_s) of a level."""

    start_s: float
    end_s: float
    requests: int
    successes: int
    qps: float
    latency: Distribution | None
    cache: CacheStats


def windows(samples: Iterable[Sample], width_s: float, elapsed_s: float) -> list[Window]:
    """Fixed-width windows by completion time; a remainder under half a width joins the last."""
    if width_s <= 0:
        raise ValueError("window width must be positive")
    count = max(1, math.ceil(elapsed_s / width_s - 1e-9))
    if count > 1 and elapsed_s - (count - 1) * width_s < width_s / 2:
        count -= 1  # a sliver of a window would show a rate made of a handful of requests
    buckets: list[list[Sample]] = [[] for _ in range(count)]
    for sample in samples:
        buckets[min(int(sample.done_s // width_s), count - 1)].append(sample)
    ends = [(index + 1) * width_s for index in range(count - 1)] + [elapsed_s]
    return [
        _window(bucket, index * width_s, end)
        for index, (bucket, end) in enumerate(zip(buckets, ends, strict=True))
    ]


def _window(samples: list[Sample], start_s: float, end_s: float) -> Window:
    successes = [sample for sample in samples if sample.ok]
    return Window(
        start_s=start_s,
        end_s=end_s,
        requests=len(samples),
        successes=len(successes),
        qps=_per_second(len(successes), end_s - start_s),
        latency=Distribution.of_seconds(sample.latency_s for sample in successes),
        cache=cache_stats(samples),
    )


def _ttfbs(samples: Iterable[Sample]) -> list[float]:
    return [ttfb for ttfb in (sample.ttfb_s for sample in samples) if ttfb is not None]


def _per_second(amount: float, seconds: float) -> float:
    return amount / seconds if seconds > 0 else 0.0
