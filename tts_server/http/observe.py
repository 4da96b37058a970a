"""Per-request observation: one access-log line and the request metrics, in one middleware.

Handlers fill a RequestInfo on the request (voice, engine, characters, cache result,
timings); the middleware reads it once the response, streamed or not, is complete.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from tts_server import keys
from tts_server.metrics import Metrics

ACCESS_LOG = logging.getLogger("tts.access")
ADMISSION_CODES = frozenset(
    {"would_miss_deadline", "shedding", "overloaded", "draining", "engine_unavailable"}
)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Paths are client input: a 6 KB one is logged cut to this.
MAX_LOGGED_PATH = 256


def route_of(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def _log_fields(request: web.Request, status: int, total_s: float) -> dict[str, object]:
    info: keys.RequestInfo | None = request.get(keys.REQUEST_INFO)
    identity = request.get(keys.IDENTITY)
    fields: dict[str, object] = {
        "request_id": request.get(keys.REQUEST_ID),
        "method": request.method,
        "route": route_of(request),
        "status": status,
        "total_ms": round(total_s * 1000, 1),
        "client": identity.name if identity is not None else request.remote,
    }
    if keys.ERROR_CODE in request:
        fields["error"] = request[keys.ERROR_CODE]
    if info is not None:
        trace = info.trace
        fields.update(
            voice=info.voice, engine=info.engine, chars=info.chars, cache=info.cache,
            format=info.audio_format, audio_s=round(info.audio_s, 3),
            queue_ms=round(trace.queue_ms, 1) if trace else None,
            synthesis_ms=round(trace.synthesis_ms, 1) if trace else None,
        )
    return fields


def _observe(
    app: web.Application, request: web.Request, route: str, status: int, total_s: float
) -> None:
    metrics = app.get(keys.METRICS)
    if metrics is not None:
        _count(metrics, request, route, status, total_s)
    _access_log(app, request, status, total_s)


def _count(metrics: Metrics, request: web.Request, route: str, status: int,
           total_s: float) -> None:
    info: keys.RequestInfo | None = request.get(keys.REQUEST_INFO)
    identity = request.get(keys.IDENTITY)
    tier = identity.tier if identity is not None else ""
    voice = info.voice or "" if info else ""
    engine = info.engine or "" if info else ""
    metrics.child(metrics.requests, route, str(status), engine, voice, tier).inc()
    metrics.child(metrics.request_seconds, route).observe(total_s)
    if info is not None:
        metrics.request_chars.observe(info.chars)
        if info.cache:
            metrics.child(metrics.cache_results, info.cache).inc()
        if info.first_byte_at is not None:
            started = request[keys.STARTED_AT]
            metrics.child(metrics.first_audio_seconds, route).observe(
                info.first_byte_at - started)
    if request.get(keys.ERROR_CODE) in ADMISSION_CODES:
        metrics.child(metrics.admission_rejections, request[keys.ERROR_CODE]).inc()


def _access_log(app: web.Application, request: web.Request, status: int, total_s: float) -> None:
    settings = app[keys.SETTINGS].server
    if not settings.access_log:
        return
    if status < 400 and random.random() >= settings.access_log_sample_rate:
        return
    fields = _log_fields(request, status, total_s)
    path = request.path
    if len(path) > MAX_LOGGED_PATH:
        path = path[:MAX_LOGGED_PATH] + "…"
    ACCESS_LOG.info("%s %s %d", request.method, path, status, extra={"fields": fields})


@web.middleware
async def observe_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    metrics = request.app.get(keys.METRICS)
    route = route_of(request)
    request[keys.STARTED_AT] = started = time.monotonic()
    in_flight = metrics.child(metrics.in_flight, route) if metrics is not None else None
    if in_flight is not None:
        in_flight.inc()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        if in_flight is not None:
            in_flight.dec()
        _observe(request.app, request, route, status, time.monotonic() - started)
