"""Test helpers: local /api/tts servers with known behaviour and one-level runs of the tool."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TextIO

from aiohttp import web

from stress.client import TargetOptions
from stress.runner import LevelResult, Load, RunOptions, run_levels
from stress.serverproc import free_port

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
BODY = b'{"text": "hello"}'


def tts_app(handler: Handler) -> web.Application:
    app = web.Application()
    app.router.add_post("/api/tts", handler)
    return app


unused_port = free_port  # a loopback port nothing listens on

async def run_one(
    url: str,
    load: Load,
    duration_s: float,
    *,
    max_requests: int = 100_000,
    timeout_s: float = 10.0,
    server_pids: Sequence[int] = (),
    stream: TextIO | None = None,
    progress_interval_s: float = 1.0,
) -> LevelResult:
    """One level of the real runner against `url`, quiet unless a progress stream is given."""
    target = TargetOptions(base_url=url, timeout_s=timeout_s)
    options = RunOptions(
        duration_s=duration_s,
        max_requests=max_requests,
        sample_interval_s=0.25,
        progress_interval_s=progress_interval_s,
        quiet=stream is None,
    )
    kwargs = {"stream": stream} if stream is not None else {}
    (result,) = await run_levels([load], lambda: BODY, target, options, server_pids, **kwargs)
    return result
