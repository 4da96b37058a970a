"""Probes and pages: /healthz, /readyz, /metrics, the web page and what it reads first."""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tts_server import keys
from tts_server.errors import NotFound
from tts_server.speech.request import AUDIO_FORMATS

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    app = request.app
    pools = app[keys.POOLS]
    state = app[keys.RUN_STATE]
    ready = all(pool.ready for pool in pools.values()) and not state.draining
    status = "draining" if state.draining else ("ready" if ready else "not_ready")
    watch = app.get(keys.REDIS_WATCH)
    body = {
        "status": status,
        # Ready, but missing something: a Redis outage costs L2 and the job API (503
        # jobs_unavailable), not synthesis, so it does not fail readiness (README).
        "degraded": ["redis"] if watch is not None and not watch.up else [],
        "redis": watch.snapshot() if watch is not None else None,
        "pools": {engine: pool.snapshot() for engine, pool in pools.items()},
        "breakers": app[keys.SYNTHESIZER].snapshot(),
        "degradation_level": state.degradation_level,
    }
    headers = {} if ready else {"Retry-After": str(app[keys.SETTINGS].server.retry_after_s)}
    return web.json_response(body, status=200 if ready else 503, headers=headers)


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "index.html")


def static_files() -> dict[str, Path]:
    """Every file the page may load, by its path under /static/, listed once at start."""
    return {p.relative_to(STATIC_DIR).as_posix(): p for p in STATIC_DIR.rglob("*") if p.is_file()}


async def static(request: web.Request) -> web.FileResponse:
    """GET /static/{name}: a listed file, else a JSON 404 (counted and logged as 404).

    The name is looked up, never joined to a filesystem path: no traversal, no OSError for
    a name over NAME_MAX (aiohttp's static route answered those with 500)."""
    path = request.app[STATIC_FILES].get(request.match_info["name"])
    if path is None:
        raise NotFound("no such file", code="not_found")
    return web.FileResponse(path)


STATIC_FILES = web.AppKey("static_files", dict[str, Path])


async def ui_status(request: web.Request) -> web.Response:
    """What the web page needs before its first call: limits, formats, auth, degradation."""
    settings = request.app[keys.SETTINGS]
    state = request.app[keys.RUN_STATE]
    return web.json_response(
        {
            "auth_required": not settings.anonymous_allowed,
            "max_text_chars": settings.text.max_text_chars,
            "caption_max_chars": settings.text.caption_max_chars,
            "caption_max_s": settings.text.caption_max_s,
            "min_speed": settings.synthesis.min_speed,
            "max_speed": settings.synthesis.max_speed,
            "formats": list(AUDIO_FORMATS),
            "degradation_level": state.degradation_level,
            "preview_enabled": state.preview_enabled,
        }
    )


async def metrics(request: web.Request) -> web.Response:
    registry = request.app[keys.METRICS].registry
    body = await asyncio.get_running_loop().run_in_executor(None, generate_latest, registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
