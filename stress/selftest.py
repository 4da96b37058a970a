"""The tool's own ceiling: drive a trivial server in another process as hard as the client can."""

from __future__ import annotations

import asyncio
import random
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from .client import TargetOptions
from .runner import ClosedLoad, LevelResult, RunOptions, run_levels
from .texts import BodyTemplate, unique_texts

ROOT = Path(__file__).resolve().parent.parent  # so `-m stress.trivial_server` resolves anywhere
GOAL_RPS = 1000.0
STARTUP_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class SelftestOptions:
    connections: int = 64
    duration_s: float = 5.0
    max_requests: int = 1_000_000
    quiet: bool = False
    seed: int = 1


@asynccontextmanager
async def trivial_server() -> AsyncIterator[tuple[str, int]]:
    """(base URL, pid) of `python -m stress.trivial_server`, stopped on exit."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "stress.trivial_server", stdout=asyncio.subprocess.PIPE, cwd=ROOT
    )
    assert process.stdout is not None
    try:
        line = await asyncio.wait_for(process.stdout.readline(), STARTUP_TIMEOUT_S)
        if not line.strip().isdigit():
            raise RuntimeError("the trivial server did not start (no port on its stdout)")
        yield f"http://127.0.0.1:{int(line)}", process.pid
    finally:
        if process.returncode is None:
            process.terminate()
        await process.wait()


async def selftest(options: SelftestOptions) -> tuple[TargetOptions, list[int], LevelResult]:
    """Closed loop, no pauses, unique texts: the same client path as a real run."""
    async with trivial_server() as (url, pid):
        target = TargetOptions(base_url=url, timeout_s=10.0)
        run_options = RunOptions(
            duration_s=options.duration_s,
            max_requests=options.max_requests,
            quiet=options.quiet,
            seed=options.seed,
        )
        bodies = BodyTemplate().encoder(unique_texts(random.Random(options.seed)))
        load = ClosedLoad(options.connections)
        (result,) = await run_levels([load], bodies, target, run_options, [pid])
    return target, [pid], result


def verdict(requests_per_s: float, client_cpu: float | None) -> str:
    cpu = "n/a" if client_cpu is None else f"{client_cpu:.0f}% of one core"
    meets = "meets" if requests_per_s >= GOAL_RPS else "BELOW"
    return (
        f"selftest ceiling: {requests_per_s:.0f} req/s, client CPU {cpu} "
        f"({meets} the {GOAL_RPS:.0f} req/s goal)"
    )
