"""Prometheus view of the remote engines, read from their pools at scrape time."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from tts_server.remote.pool import OUTCOMES, RemotePool


class RemoteCollector(Collector):
    """tts_remote_calls_total{engine, outcome}, tts_remote_in_flight and the wait estimate."""

    def __init__(self, pools: Callable[[], Mapping[str, Any]]) -> None:
        self.pools = pools

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        calls = CounterMetricFamily("tts_remote_calls", "Upstream calls by outcome (skipped: "
                                    "never sent, the request had already fallen back)",
                                    labels=["engine", "outcome"])
        in_flight = GaugeMetricFamily("tts_remote_in_flight", "Upstream calls running",
                                      labels=["engine"])
        speed = GaugeMetricFamily("tts_remote_seconds_per_character",
                                  "Measured upstream time per character", labels=["engine"])
        for name, pool in self.pools().items():
            if not isinstance(pool, RemotePool):
                continue
            for outcome in OUTCOMES:
                calls.add_metric([name, outcome], pool.outcomes[outcome])
            snap = pool.snapshot()
            in_flight.add_metric([name], snap["busy_workers"])
            speed.add_metric([name], pool.seconds_per_char)
        yield from (calls, in_flight, speed)
