"""Clients of the cluster tests: steady load, per-instance counters, job calls."""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np

from stress.texts import news_sentence
from tts_server.cluster import Cluster, Instance

TOKENS = {"alice": "alice-cluster-token", "metered": "metered-cluster-token"}


def auth(name: str = "alice") -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[name]}"}


def get_json(url: str) -> Any:
    """GET as alice: an anonymous /api/ call would spend the anonymous tier's tiny burst."""
    request = urllib.request.Request(url, headers=auth())
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.load(response)
    except urllib.error.HTTPError as exc:
        return json.load(exc)


def units_completed(instance: Instance) -> int:
    return int(get_json(instance.url + "/readyz")["pools"]["piper"]["units_completed"])


def tts_requests(instance: Instance) -> int:
    """POST /api/tts answered by this instance so far, whatever the status (its /metrics)."""
    with urllib.request.urlopen(instance.url + "/metrics", timeout=5) as response:
        text = response.read().decode()
    pattern = re.compile(r'^tts_requests_total\{[^}]*route="/api/tts"[^}]*\} ([0-9.e+]+)$', re.M)
    return int(sum(float(v) for v in pattern.findall(text)))


def retried_requests(cluster: Cluster) -> int:
    """Requests nginx passed to more than one instance (its access log: upstream=a, b)."""
    assert cluster.nginx is not None
    time.sleep(1.2)  # the access log is flushed every second
    log = (cluster.nginx.prefix / "access.log").read_text()
    return sum(1 for line in log.splitlines() if re.search(r"upstream=\S+, ", line))


def samples(wav: bytes) -> np.ndarray:
    return np.frombuffer(wav[44:], "<i2").astype(np.int32)


def same_audio(a: bytes, b: bytes) -> bool:
    x, y = samples(a), samples(b)
    # Noise is off in the test config; only thread-count rounding may differ.
    return len(x) == len(y) > 0 and int(np.abs(x - y).max()) <= 64


@dataclass
class LoadResult:
    statuses: Counter = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    cache: Counter = field(default_factory=Counter)

    @property
    def ok(self) -> int:
        return self.statuses[200]

    @property
    def failed(self) -> int:
        """Every request that did not end in 200: other statuses and exceptions alike."""
        return len(self.errors)


async def steady_load(url: str, clients: int, stop: asyncio.Event, tag: str,
                      repeat_pool: list[str] | None = None, seed: int = 1) -> LoadResult:
    """`clients` closed-loop clients until `stop`: unique sentences (or, with a pool, half
    of them from the pool); every non-200 and every exception is a failure."""
    result = LoadResult()
    rng = random.Random(seed)
    counter = iter(range(10**9))
    timeout = aiohttp.ClientTimeout(total=60)

    async def client(session: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            if repeat_pool and rng.random() < 0.5:
                text = rng.choice(repeat_pool)
            else:
                text = news_sentence(rng, f"{tag} {next(counter)}")
            try:
                async with session.post(url + "/api/tts", json={"text": text},
                                        headers=auth()) as response:
                    body = await response.read()
                    result.statuses[response.status] += 1
                    result.cache[response.headers.get("X-Cache", "")] += 1
                    if response.status != 200:
                        result.errors.append(f"{response.status} {body[:200]!r}")
            except (TimeoutError, aiohttp.ClientError) as exc:
                result.errors.append(f"{type(exc).__name__}: {exc}")

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(client(session) for _ in range(clients)))
    return result
