"""Prometheus metrics for the front and every worker, through prometheus_client.

Request-level histograms and counters are observed as requests pass. Everything that is
state (queue depths, workers up, restarts, breakers, the degradation level, cache and
gateway counters, CPU and memory per process) is read at scrape time by one collector,
so it is never out of date and costs nothing between scrapes. Worker CPU comes over the
existing control channel (each reply carries the worker's CPU seconds), kept monotonic
per worker slot across restarts.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import psutil
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.registry import Collector

# The *_created series only double the exposition; nothing here reads them.
disable_created_metrics()

LATENCY_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
RTF_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 2)
CHARS_BUCKETS = (10, 50, 100, 250, 500, 1000, 2500, 5000, 20000, 100000)
ENCODE_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)
BREAKER_VALUES = {"closed": 0, "half_open": 1, "open": 2}


class Metrics:
    """Every metric the server exports, in its own registry (tests build several apps)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        r = self.registry
        self.requests = Counter("tts_requests_total", "HTTP requests answered",
                                ["route", "status", "engine", "voice", "tier"], registry=r)
        self.in_flight = Gauge("tts_requests_in_flight", "HTTP requests being answered",
                               ["route"], registry=r)
        self.request_seconds = Histogram("tts_request_duration_seconds",
                                         "Total time to answer a request", ["route"],
                                         buckets=LATENCY_BUCKETS_S, registry=r)
        self.first_audio_seconds = Histogram("tts_time_to_first_audio_seconds",
                                             "From request to the first audio byte sent",
                                             ["route"], buckets=LATENCY_BUCKETS_S, registry=r)
        self.queue_wait_seconds = Histogram("tts_queue_wait_seconds",
                                            "Time a sentence waited for a worker", ["engine"],
                                            buckets=LATENCY_BUCKETS_S, registry=r)
        self.synthesis_seconds = Histogram("tts_synthesis_seconds",
                                           "Worker time to synthesize one sentence",
                                           ["engine"], buckets=LATENCY_BUCKETS_S, registry=r)
        self.encoding_seconds = Histogram("tts_encoding_seconds",
                                          "Time encoding one response's audio", ["format"],
                                          buckets=ENCODE_BUCKETS_S, registry=r)
        self.real_time_factor = Histogram("tts_real_time_factor_ratio",
                                          "Synthesis seconds per audio second, per sentence",
                                          ["engine"], buckets=RTF_BUCKETS, registry=r)
        self.request_chars = Histogram("tts_request_characters", "Characters per request",
                                       buckets=CHARS_BUCKETS, registry=r)
        self.audio_seconds = Counter("tts_audio_seconds_total", "Audio produced, in seconds",
                                     ["engine"], registry=r)
        self.chars_synthesized = Counter("tts_characters_synthesized_total",
                                         "Characters synthesized", ["engine"], registry=r)
        self.cache_results = Counter("tts_cache_requests_total", "Cache outcome per request",
                                     ["result"], registry=r)
        self.admission_rejections = Counter("tts_admission_rejections_total",
                                            "Requests refused at the door", ["reason"],
                                            registry=r)

    def child(self, metric: MetricWrapperBase, *values: str) -> Any:
        """metric.labels(*values), remembered: labels() validates and locks on every call,
        which the cached-response path pays several times per request."""
        key = (id(metric), values)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*values)
        return found

    def observe_unit(self, engine: str, queue_ms: float, synthesis_ms: float, samples: int,
                     sample_rate: int, chars: int) -> None:
        audio_s = samples / sample_rate if sample_rate else 0.0
        self.child(self.queue_wait_seconds, engine).observe(queue_ms / 1000)
        self.child(self.synthesis_seconds, engine).observe(synthesis_ms / 1000)
        if audio_s > 0:
            self.child(self.real_time_factor, engine).observe(synthesis_ms / 1000 / audio_s)
        self.child(self.audio_seconds, engine).inc(audio_s)
        self.child(self.chars_synthesized, engine).inc(chars)


@dataclass(frozen=True)
class LiveState:
    """Where the collector finds the server's parts: each returns the live object, or None
    (or no pools) before it has started."""

    pools: Callable[[], Mapping[str, Any]]
    synthesizer: Callable[[], Any]
    run_state: Callable[[], Any]
    speech: Callable[[], Any]
    gateway: Callable[[], Any]
    redis: Callable[[], Any] = lambda: None


class StateCollector(Collector):
    """Reads the server's live state when Prometheus scrapes."""

    def __init__(self, live: LiveState) -> None:
        self.live = live

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        yield from self._pools()
        yield from self._breakers_and_ladder()
        yield from self._cache()
        yield from self._gateway()
        yield from self._redis()
        yield from self._processes()

    def _pools(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        up = GaugeMetricFamily("tts_workers_up", "Workers ready", labels=["engine"])
        restarts = CounterMetricFamily("tts_worker_restarts", "Worker restarts",
                                       labels=["engine"])
        depth = GaugeMetricFamily("tts_queue_depth", "Sentences waiting for a worker",
                                  labels=["engine", "priority"])
        for engine, pool in self.live.pools().items():
            snap = pool.snapshot()
            up.add_metric([engine], snap["workers_ready"])
            restarts.add_metric([engine], snap["restarts"])
            for priority in (0, 1, 2):
                depth.add_metric([engine, str(priority)],
                                 snap["queued_by_priority"].get(priority, 0))
        yield from (up, restarts, depth)

    def _breakers_and_ladder(self) -> Iterator[GaugeMetricFamily]:
        breaker = GaugeMetricFamily("tts_breaker_state",
                                    "Circuit breaker: 0 closed, 1 half-open, 2 open",
                                    labels=["voice"])
        synthesizer = self.live.synthesizer()
        for voice, snap in (synthesizer.snapshot() if synthesizer else {}).items():
            breaker.add_metric([voice], BREAKER_VALUES[snap["state"]])
        yield breaker
        state = self.live.run_state()
        level = state.degradation_level if state else 0
        yield GaugeMetricFamily("tts_degradation_level", "Degradation ladder level (0-3)",
                                value=level)

    def _cache(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        speech = self.live.speech()
        cache = speech.cache if speech is not None else None
        size = GaugeMetricFamily("tts_cache_bytes", "Bytes held in the cache", labels=["tier"])
        errors = CounterMetricFamily("tts_cache_redis_errors", "Redis errors and garbage")
        evictions = CounterMetricFamily("tts_cache_evictions", "Entries evicted",
                                        labels=["tier"])
        if cache is not None:
            l1 = cache.l1.snapshot()
            size.add_metric(["l1"], l1["bytes"])
            evictions.add_metric(["l1"], l1["evictions"])
            errors.add_metric([], cache.l2.stats.errors if cache.l2 is not None else 0)
        yield from (size, errors, evictions)

    def _gateway(self) -> Iterator[CounterMetricFamily]:
        rejections = CounterMetricFamily("tts_gateway_rejections",
                                         "Auth and rate-limit rejections", labels=["reason"])
        gateway = self.live.gateway()
        for reason, count in (gateway.rejections.items() if gateway else []):
            rejections.add_metric([reason], count)
        yield rejections

    def _redis(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        watch = self.live.redis()
        if watch is None:  # no Redis configured: no series, rather than a false "down"
            return
        yield GaugeMetricFamily("tts_redis_up", "The cache's Redis answers (1) or not (0)",
                                value=1 if watch.up else 0)
        yield CounterMetricFamily("tts_redis_restarts", "Restarts of the private redis-server",
                                  value=watch.restarts)

    def _processes(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        cpu = CounterMetricFamily("tts_process_cpu_seconds", "CPU time per process",
                                  labels=["process"])
        rss = GaugeMetricFamily("tts_process_resident_memory_bytes", "RSS per process",
                                labels=["process"])
        front = psutil.Process(os.getpid())
        times = front.cpu_times()
        cpu.add_metric(["front"], times.user + times.system)
        rss.add_metric(["front"], front.memory_info().rss)
        for engine, pool in self.live.pools().items():
            for worker in pool.worker_states():
                name = f"{engine}-{worker['index']}"
                cpu.add_metric([name], worker["cpu_seconds"])
                rss.add_metric([name], _rss(worker["pid"]) if worker["state"] != "dead" else 0)
        yield from (cpu, rss)


def _rss(pid: int | None) -> int:
    try:
        return psutil.Process(pid).memory_info().rss if pid else 0
    except psutil.Error:
        return 0

