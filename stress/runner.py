"""Load loops: closed (users with optional think time) and open (a fixed arrival timetable)."""

from __future__ import annotations

import asyncio
import math
import random
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TextIO

from .client import TargetOptions, TTSClient, clock, open_session
from .progress import ProgressLine
from .resources import ResourceMonitor, ResourceSample
from .samples import Recorder, Sample

BodySource = Callable[[], bytes]

STOPPED_BY_TIME = "time"
STOPPED_BY_COUNT = "max_requests"


@dataclass(frozen=True)
class ThinkTime:
    """A user's pause after each response, uniform in [min_s, max_s] (Locust's `between`)."""

    min_s: float
    max_s: float

    def draw(self, rng: random.Random) -> float:
        return rng.uniform(self.min_s, self.max_s)


@dataclass(frozen=True)
class ClosedLoad:
    """`users` concurrent users, each sending its next request after the previous one ends."""

    users: int
    think: ThinkTime | None = None
    ramp_up_s: float = 0.0  # users start evenly spread over this time

    @property
    def connections(self) -> int:
        return self.users

    @property
    def label(self) -> str:
        return f"{self.users} users" if self.think else f"concurrency {self.users}"

    @property
    def value(self) -> float:
        return self.users


@dataclass(frozen=True)
class OpenLoad:
    """Requests due every 1/rate seconds whatever the responses do; at most `connections` open."""

    rate: float
    connections: int = 256

    @property
    def label(self) -> str:
        return f"{self.rate:g} req/s"

    @property
    def value(self) -> float:
        return self.rate


Load = ClosedLoad | OpenLoad


@dataclass(frozen=True)
class RunOptions:
    """How long each level lasts and what is measured besides the requests."""

    duration_s: float = 60.0  # per level; no request starts after it
    max_requests: int = 100_000  # per level; whichever of the two limits comes first
    sample_interval_s: float = 1.0  # resource sampling period
    progress_interval_s: float = 1.0
    quiet: bool = False  # no live progress on stderr
    seed: int = 1  # texts and think times are reproducible per seed


@dataclass(frozen=True)
class LevelResult:
    """A level's raw measurements; `started_s` counts from the start of the whole run."""

    load: Load
    started_s: float
    elapsed_s: float
    stopped_by: str
    samples: list[Sample]
    resources: list[ResourceSample]


class RequestBudget:
    """The per-level request limit shared by all users of a level."""

    def __init__(self, limit: int) -> None:
        self.remaining = limit

    def take(self) -> bool:
        if self.remaining <= 0:
            return False
        self.remaining -= 1
        return True


async def run_levels(
    loads: Sequence[Load],
    bodies: BodySource,
    target: TargetOptions,
    options: RunOptions,
    server_pids: Sequence[int],
    stream: TextIO = sys.stderr,
) -> list[LevelResult]:
    """Runs the levels one after another; each gets a fresh session sized to it."""
    run_origin = clock()
    think_rng = random.Random(options.seed + 1)
    results = []
    for load in loads:
        level = LevelContext(load, bodies, target, options, think_rng)
        results.append(await level.run(server_pids, run_origin, stream))
    return results


class LevelContext:
    """One level: session, recorder, resource monitor and live progress around a load loop."""

    def __init__(
        self,
        load: Load,
        bodies: BodySource,
        target: TargetOptions,
        options: RunOptions,
        think_rng: random.Random,
    ) -> None:
        self.load = load
        self.bodies = bodies
        self.target = target
        self.options = options
        self.think_rng = think_rng
        self.recorder = Recorder()

    async def run(
        self, server_pids: Sequence[int], run_origin: float, stream: TextIO
    ) -> LevelResult:
        async with open_session(self.target, self.load.connections) as session:
            origin = clock()
            client = TTSClient(session, self.target, origin)
            monitor = ResourceMonitor(server_pids, self.options.sample_interval_s, origin)
            progress = ProgressLine(
                self.recorder,
                self.load.label,
                self.options.duration_s,
                stream,
                self.options.progress_interval_s,
            )
            monitor.start()
            if not self.options.quiet:
                progress.start(origin)
            try:
                stopped_by = await self._drive(client)
                elapsed = client.now()
            finally:
                await progress.stop()
                resources = await monitor.stop()
        return LevelResult(
            self.load, origin - run_origin, elapsed, stopped_by, self.recorder.samples, resources
        )

    async def _drive(self, client: TTSClient) -> str:
        budget = RequestBudget(self.options.max_requests)
        if isinstance(self.load, OpenLoad):
            return await open_loop(
                client, self.bodies, self.load.rate, self.options.duration_s, budget, self.recorder
            )
        return await closed_loop(
            client,
            self.bodies,
            self.load,
            self.options.duration_s,
            budget,
            self.recorder,
            self.think_rng,
        )


async def closed_loop(
    client: TTSClient,
    bodies: BodySource,
    load: ClosedLoad,
    duration_s: float,
    budget: RequestBudget,
    recorder: Recorder,
    rng: random.Random,
) -> str:
    """Every user loops send -> (think) -> send until the deadline or the budget ends it."""
    spacing = load.ramp_up_s / load.users if load.users else 0.0
    users = [
        _user(client, bodies, load.think, duration_s, budget, recorder, rng, index * spacing)
        for index in range(load.users)
    ]
    await asyncio.gather(*users)
    return STOPPED_BY_COUNT if budget.remaining <= 0 else STOPPED_BY_TIME


async def _user(
    client: TTSClient,
    bodies: BodySource,
    think: ThinkTime | None,
    deadline_s: float,
    budget: RequestBudget,
    recorder: Recorder,
    rng: random.Random,
    start_delay_s: float,
) -> None:
    if start_delay_s > 0:
        await asyncio.sleep(start_delay_s)
    while client.now() < deadline_s and budget.take():
        recorder.started()
        recorder.add(await client.send(bodies(), client.now()))
        if think is not None:
            # The pause is cut at the deadline so the level ends on time.
            pause = min(think.draw(rng), deadline_s - client.now())
            if pause > 0:
                await asyncio.sleep(pause)


async def open_loop(
    client: TTSClient,
    bodies: BodySource,
    rate: float,
    duration_s: float,
    budget: RequestBudget,
    recorder: Recorder,
) -> str:
    """Request i is due at i/rate s; its latency counts from then, however late it is sent."""
    planned = math.ceil(rate * duration_s - 1e-9)
    in_flight: set[asyncio.Task[None]] = set()
    stopped_by = STOPPED_BY_TIME
    for index in range(planned):
        if not budget.take():
            stopped_by = STOPPED_BY_COUNT
            break
        scheduled_s = index / rate
        delay = scheduled_s - client.now()
        if delay > 0:
            await asyncio.sleep(delay)
        recorder.started()
        task = asyncio.create_task(_send_and_record(client, bodies(), scheduled_s, recorder))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
    if in_flight:
        await asyncio.wait(in_flight)
    if stopped_by == STOPPED_BY_TIME and client.now() < duration_s:
        await asyncio.sleep(duration_s - client.now())
    return stopped_by


async def _send_and_record(
    client: TTSClient, body: bytes, scheduled_s: float, recorder: Recorder
) -> None:
    recorder.add(await client.send(body, scheduled_s))
