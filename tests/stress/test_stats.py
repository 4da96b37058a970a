"""Pure statistics: percentiles, level summaries, error and cache counts, windows."""

from __future__ import annotations

import pytest

from stress.samples import Sample
from stress.stats import (
    Distribution,
    cache_stats,
    error_counts,
    level_stats,
    percentile,
    send_rate,
    windows,
)


def ok(
    done_s: float, scheduled_s: float = 0.0, cache: str | None = None, audio_s: float | None = None
) -> Sample:
    return Sample(scheduled_s, scheduled_s, done_s, done_s, 200, None, audio_s, cache)


def failed(done_s: float, error: str, status: int | None = None) -> Sample:
    return Sample(0.0, 0.0, None, done_s, status, error)


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 95) == 95.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 99.5) == 100.0
    assert percentile(values, 100) == 100.0
    assert percentile(values, 0) == 1.0
    assert percentile([7.0], 99) == 7.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.0


@pytest.mark.parametrize("bad", [-1.0, 100.1])
def test_percentile_rejects_out_of_range(bad: float) -> None:
    with pytest.raises(ValueError):
        percentile([1.0], bad)


def test_percentile_of_nothing_is_an_error() -> None:
    with pytest.raises(ValueError):
        percentile([], 50)


def test_distribution_is_in_milliseconds_over_every_value() -> None:
    distribution = Distribution.of_seconds([0.003, 0.001, 0.002, 0.010])
    assert distribution == Distribution(
        count=4,
        min_ms=1.0,
        mean_ms=4.0,
        p50_ms=2.0,
        p90_ms=10.0,
        p95_ms=10.0,
        p99_ms=10.0,
        max_ms=10.0,
    )
    assert Distribution.of_seconds([]) is None


def test_latency_counts_from_the_scheduled_start() -> None:
    late = Sample(
        scheduled_s=1.0, sent_s=2.0, first_byte_s=2.25, done_s=2.5, status=200, error=None
    )
    assert late.latency_s == 1.5
    assert late.ttfb_s == 1.25


def test_level_stats_counts_successes_errors_and_qps() -> None:
    samples = [
        ok(0.1, audio_s=2.0),
        ok(0.2, audio_s=3.0),
        failed(0.3, "http_503", 503),
        failed(0.4, "timeout"),
        failed(0.5, "http_503", 503),
    ]
    stats = level_stats(samples, elapsed_s=2.0)
    assert (stats.requests, stats.successes) == (5, 2)
    assert stats.qps == 1.0
    assert stats.error_rate == 0.6
    assert stats.errors == {"http_503": 2, "timeout": 1}
    assert stats.latency is not None and stats.latency.count == 2
    assert stats.latency_all is not None and stats.latency_all.count == 5
    assert stats.audio_seconds == 5.0 and stats.audio_per_second == 2.5


def test_level_stats_of_nothing() -> None:
    stats = level_stats([], elapsed_s=1.0)
    assert (stats.requests, stats.qps, stats.error_rate) == (0, 0.0, 0.0)
    assert stats.latency is None and stats.send_rate is None and stats.cache.hit_rate is None


def test_error_counts_are_sorted_by_kind() -> None:
    samples = [failed(0.1, "timeout"), ok(0.1), failed(0.1, "connection"), failed(0.1, "timeout")]
    assert list(error_counts(samples).items()) == [("connection", 1), ("timeout", 2)]


def test_cache_hits_are_l1_and_l2_over_responses_with_the_header() -> None:
    samples = [
        ok(0.1, cache="hit-l1"),
        ok(0.1, cache="hit-l2"),
        ok(0.1, cache="miss"),
        ok(0.1, cache="coalesced"),
        ok(0.1),
    ]
    cache = cache_stats(samples)
    assert (cache.hits, cache.coalesced, cache.with_header) == (2, 1, 4)
    assert cache.hit_rate == 0.5
    assert cache_stats([ok(0.1)]).hit_rate is None


def test_send_rate_spans_first_to_last_start() -> None:
    samples = [Sample(i / 10, i / 10, None, 1.0, 200, None) for i in range(11)]
    assert send_rate(samples) == pytest.approx(10.0)
    assert send_rate(samples[:1]) is None


def test_windows_bucket_by_completion_and_the_last_may_be_short() -> None:
    samples = [
        ok(0.5, cache="miss"),
        ok(1.5, cache="hit-l1"),
        ok(1.9, cache="hit-l1"),
        failed(2.2, "timeout"),
    ]
    result = windows(samples, width_s=1.0, elapsed_s=2.5)
    assert [(w.start_s, w.end_s, w.requests, w.successes) for w in result] == [
        (0.0, 1.0, 1, 1),
        (1.0, 2.0, 2, 2),
        (2.0, 2.5, 1, 0),
    ]
    assert [w.cache.hit_rate for w in result] == [0.0, 1.0, None]
    assert [w.qps for w in result] == [1.0, 2.0, 0.0]


def test_a_short_remainder_joins_the_last_window() -> None:
    result = windows([ok(0.5), ok(2.1), ok(2.2)], width_s=1.0, elapsed_s=2.3)
    assert [(w.start_s, w.end_s, w.requests) for w in result] == [(0.0, 1.0, 1), (1.0, 2.3, 2)]
    assert result[1].qps == pytest.approx(2 / 1.3)
    assert len(windows([ok(0.1)], width_s=10.0, elapsed_s=1.0)) == 1


def test_windows_cover_an_exact_multiple_without_an_empty_tail() -> None:
    assert len(windows([ok(0.5)], width_s=1.0, elapsed_s=3.0)) == 3
    assert len(windows([], width_s=10.0, elapsed_s=0.0)) == 1
    with pytest.raises(ValueError):
        windows([], width_s=0.0, elapsed_s=1.0)
