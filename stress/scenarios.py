"""The scenarios: which load levels to run and which texts each request carries."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from . import texts
from .runner import BodySource, ClosedLoad, Load, OpenLoad, ThinkTime
from .texts import BodyTemplate

# First column of the report table, by scenario.
UNIT_USERS = "Users"
UNIT_CONCURRENCY = "Concurrency"
UNIT_RATE = "Rate/s"


@dataclass(frozen=True)
class Scenario:
    """Levels to run in order, the body of every request, and settings worth reporting."""

    name: str
    unit: str
    loads: tuple[Load, ...]
    bodies: BodySource
    settings: dict[str, Any] = field(default_factory=dict)


def seed(
    users: Sequence[int], think: ThinkTime, ramp_up_s: float, body: BodyTemplate, rng: random.Random
) -> Scenario:
    """The seed's Locust model: users pause 1-3 s and post one of three Chinese sentences."""
    loads = tuple(ClosedLoad(count, think, ramp_up_s) for count in users)
    settings = {
        "think_s": [think.min_s, think.max_s],
        "ramp_up_s": ramp_up_s,
        "texts": list(texts.SEED_TEXTS),
    }
    return Scenario("seed", UNIT_USERS, loads, body.encoder(texts.seed_texts(rng)), settings)


def unique(concurrency: Sequence[int], body: BodyTemplate, rng: random.Random) -> Scenario:
    """Never-repeating English sentences, closed loop without pauses: raw synthesis capacity."""
    loads = tuple(ClosedLoad(count) for count in concurrency)
    return Scenario("unique", UNIT_CONCURRENCY, loads, body.encoder(texts.unique_texts(rng)))


def open_rates(
    rates: Sequence[float],
    connections: int,
    text_source: texts.TextSource,
    body: BodyTemplate,
    settings: dict[str, Any],
) -> Scenario:
    """Constant arrival rate, several rates in one run; latency counts from the due time."""
    loads = tuple(OpenLoad(rate, connections) for rate in rates)
    merged = {"connections": connections, **settings}
    return Scenario("open", UNIT_RATE, loads, body.encoder(text_source), merged)


def mixed(
    concurrency: Sequence[int],
    pool_size: int,
    exponent: float,
    body: BodyTemplate,
    rng: random.Random,
) -> Scenario:
    """Repeats with Zipf popularity over a fixed pool: the cache hit rate over time."""
    pool = texts.text_pool(pool_size, random.Random(rng.random()))
    loads = tuple(ClosedLoad(count) for count in concurrency)
    settings = {"pool_size": pool_size, "zipf_exponent": exponent}
    return Scenario(
        "mixed",
        UNIT_CONCURRENCY,
        loads,
        body.encoder(texts.zipf_texts(pool, exponent, rng)),
        settings,
    )
