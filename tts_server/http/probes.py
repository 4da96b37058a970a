"""Probes and pages: /healthz, /readyz, /metrics, the web page and what it reads first."""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tts_server import keys
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
    body = {
        "status": status,
        "pools": {engine: pool.snapshot() for engine, pool in pools.items()},
        "breakers": app[keys.SYNTHESIZER].snapshot(),
        "degradation_level": state.degradation_level,
    }
    headers = {} if ready else {"Retry-After": str(app[keys.SETTINGS].server.retry_after_s)}
    return web.json_response(body, status=200 if ready else 503, headers=headers)


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "index.html")


async def ui_status(request: web.Request) -> web.Response:
    """What the web page needs before its first call: limits, formats, auth, degradation."""
    settings = request.app[keys.SETTINGS]
    state = request.app[keys.RUN_STATE]
    return web.json_response(
        {
            "auth_required": not settings.anonymous_allowed,
            "max_text_chars": settings.text.max_text_chars,
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
