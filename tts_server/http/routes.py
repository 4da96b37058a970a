"""The route table, and the paths other layers need to know (probes, metrics, API prefixes)."""

from __future__ import annotations

from aiohttp import web

from tts_server import keys
from tts_server.http import api, openapi, probes, stream_in
from tts_server.http.bodies import PARSED_BODIES, ParsedBodies
from tts_server.http.connections import ROUTE_OPTIONS
from tts_server.http.openai import list_models, list_voices

API_PREFIXES = ("/api/", "/v1/")
PROBE_PATHS = frozenset({"/healthz", "/readyz"})
METRICS_PATH = "/metrics"


def setup_routes(app: web.Application) -> None:
    cache = app[keys.SETTINGS].cache
    app[PARSED_BODIES] = ParsedBodies(cache.parsed_bodies, cache.parsed_body_max_bytes)
    if keys.METRICS in app:
        app.router.add_get(METRICS_PATH, probes.metrics, **ROUTE_OPTIONS)
    app.router.add_get("/", probes.index, **ROUTE_OPTIONS)
    app.router.add_get("/ui/status", probes.ui_status, **ROUTE_OPTIONS)
    app[probes.STATIC_FILES] = probes.static_files()
    app.router.add_get("/static/{name:.+}", probes.static, **ROUTE_OPTIONS)
    app.router.add_post("/api/tts", api.tts, **ROUTE_OPTIONS)
    app.router.add_get("/api/voices", api.voices, **ROUTE_OPTIONS)
    app.router.add_get("/api/cache/stats", api.cache_stats, **ROUTE_OPTIONS)
    app.router.add_post("/v1/audio/speech", api.openai_speech, **ROUTE_OPTIONS)
    stream_in.setup(app)  # GET /v1/audio/speech/stream (WebSocket) and its shutdown hook
    app.router.add_get("/v1/models", list_models, **ROUTE_OPTIONS)
    app.router.add_get("/v1/audio/voices", list_voices, **ROUTE_OPTIONS)
    app.router.add_get("/healthz", probes.healthz, **ROUTE_OPTIONS)
    app.router.add_get("/readyz", probes.readyz, **ROUTE_OPTIONS)
    app.router.add_get("/openapi.json", openapi.openapi_json, **ROUTE_OPTIONS)
    # Built once, after every route (jobs' too): everything it reads is fixed at start.
    app[openapi.OPENAPI] = openapi.build_document(app)
