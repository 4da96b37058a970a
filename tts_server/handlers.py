"""HTTP routes: /api/tts, /api/voices and the health probes."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from . import keys
from .config import Settings
from .errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from .gateway import IDENTITY
from .memo import ParsedBodies
from .observe import REQUEST_INFO, RequestInfo
from .openai_api import list_models, list_voices, parse_speech_request
from .responses import AudioResponder
from .schema import AUDIO_FORMATS, SynthesisRequest, parse_tts_request
from .speech import Speech
from .synthesis import Admission
from .voices import VoiceRegistry

LOG = logging.getLogger("tts.server")
JSON_TYPES = frozenset({"application/json"})
T = TypeVar("T")


async def read_body(request: web.Request) -> bytes:
    """The raw JSON body, with 415/413 for the wrong type or size."""
    if request.content_type not in JSON_TYPES:
        raise UnsupportedMediaType(
            f"Content-Type must be application/json, got {request.content_type!r}",
            code="unsupported_media_type",
        )
    limit = request.app[keys.SETTINGS].server.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"body exceeds {limit} bytes", code="body_too_large")
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLarge(f"body exceeds {limit} bytes", code="body_too_large") from None


def decode_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"invalid JSON: {exc}", code="invalid_json") from None


async def parse_body(
    request: web.Request, parser: Callable[[Any, VoiceRegistry, Settings], T]
) -> T:
    """The body through `parser` (400 for bad JSON), or the parse of the same bytes seen
    moments ago: parsing depends only on the body and the static configuration."""
    app = request.app
    raw = await read_body(request)

    def parse(body: bytes) -> T:
        return parser(decode_json(body), app[keys.REGISTRY], app[keys.SETTINGS])

    return app[keys.PARSED_BODIES].get_or_parse(parser, raw, parse)


async def _speak(request: web.Request, req: SynthesisRequest) -> Speech:
    """Gateway checks, then engine routing (breaker, ladder), then cache or admission."""
    request[REQUEST_INFO] = RequestInfo(voice=req.voice.name, chars=len(req.text),
                                        audio_format=req.audio_format)
    await _admit_synthesis(request, req)
    app = request.app
    tier = app[keys.GATEWAY].tier(request[IDENTITY])
    level = app[keys.RUN_STATE].degradation_level
    protected = tier.priority == 0  # the ladder never degrades the top lane
    req = app[keys.SYNTHESIZER].route(req, prefer_fallback=level >= 2 and not protected)
    request[REQUEST_INFO].voice = req.voice.name
    admission = Admission(
        priority=tier.priority,
        deadline_s=_deadline_s(request, tier.deadline_s),
        shed=level >= 3 and not protected,
    )
    service = app[keys.SPEECH]
    return await service.speak(req, service.key_for(req, app[keys.SETTINGS].cache.namespace),
                               admission)


def _deadline_s(request: web.Request, tier_deadline_s: float) -> float:
    """The tier's deadline, or a shorter one the client asks for with X-Deadline-Ms."""
    raw = request.headers.get("X-Deadline-Ms")
    if raw is None:
        return tier_deadline_s
    try:
        asked = float(raw) / 1000
    except ValueError:
        raise BadRequest("X-Deadline-Ms must be a number of milliseconds",
                         code="invalid_deadline") from None
    if not asked > 0:
        raise BadRequest("X-Deadline-Ms must be positive", code="invalid_deadline")
    return min(asked, tier_deadline_s)


async def tts(request: web.Request) -> web.StreamResponse:
    req = await parse_body(request, parse_tts_request)
    speech = await _speak(request, req)
    responder = AudioResponder(request, req, speech)
    return await (responder.streamed() if req.stream else responder.whole())


async def openai_speech(request: web.Request) -> web.StreamResponse:
    """POST /v1/audio/speech: always streamed, like OpenAI's; SSE on request."""
    req, as_sse = await parse_body(request, parse_speech_request)
    speech = await _speak(request, req)
    responder = AudioResponder(request, req, speech)
    return await (responder.sse() if as_sse else responder.streamed())


async def _admit_synthesis(request: web.Request, req: SynthesisRequest) -> None:
    """Tier features and the character quota, once the text is known."""
    gateway = request.app[keys.GATEWAY]
    identity = request[IDENTITY]
    gateway.require_feature(identity, "tts")
    if req.stream and request.path.startswith("/api/"):
        gateway.require_feature(identity, "stream")
    await gateway.charge_chars(request, len(req.text))


async def cache_stats(request: web.Request) -> web.Response:
    cache = request.app[keys.SPEECH].cache
    if cache is None:
        return web.json_response({"enabled": False})
    return web.json_response({"enabled": True, **cache.snapshot()})


async def voices(request: web.Request) -> web.Response:
    registry = request.app[keys.REGISTRY]
    return web.json_response(
        {
            "default": registry.default,
            "voices": [v.public() for v in registry.voices.values()],
            "aliases": registry.aliases,
        }
    )


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
    headers = {} if ready else {"Retry-After": str(request.app[keys.SETTINGS].server.retry_after_s)}
    return web.json_response(body, status=200 if ready else 503, headers=headers)


STATIC_DIR = Path(__file__).resolve().parent / "static"


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


def setup_routes(app: web.Application) -> None:
    cache = app[keys.SETTINGS].cache
    app[keys.PARSED_BODIES] = ParsedBodies(cache.parsed_bodies, cache.parsed_body_max_bytes)
    if keys.METRICS in app:
        app.router.add_get("/metrics", metrics)
    app.router.add_get("/", index)
    app.router.add_get("/ui/status", ui_status)
    app.router.add_static("/static/", STATIC_DIR)
    app.router.add_post("/api/tts", tts)
    app.router.add_get("/api/voices", voices)
    app.router.add_get("/api/cache/stats", cache_stats)
    app.router.add_post("/v1/audio/speech", openai_speech)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/audio/voices", list_voices)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
