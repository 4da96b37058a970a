"""HTTP routes: /api/tts, /api/voices and the health probes."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from aiohttp import web

from . import keys
from .audio import duration_s, wav_header
from .gateway import IDENTITY
from .errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from .schema import AUDIO_FORMATS, SynthesisRequest, parse_tts_request
from .speech import Speech
from .synthesis import SynthesisTrace

LOG = logging.getLogger("tts.server")
JSON_TYPES = frozenset({"application/json"})


async def read_json(request: web.Request) -> Any:
    """Body -> JSON value, with 415/413/400 for the wrong type, size or syntax."""
    if request.content_type not in JSON_TYPES:
        raise UnsupportedMediaType(
            f"Content-Type must be application/json, got {request.content_type!r}",
            code="unsupported_media_type",
        )
    limit = request.app[keys.SETTINGS].server.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"body exceeds {limit} bytes", code="body_too_large")
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLarge(f"body exceeds {limit} bytes", code="body_too_large") from None
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"invalid JSON: {exc}", code="invalid_json") from None


def _server_timing(trace: SynthesisTrace) -> str:
    first = trace.first_audio_ms or 0.0
    return (
        f"queue;dur={trace.queue_ms:.1f}, synth;dur={trace.synthesis_ms:.1f}, "
        f"first-audio;dur={first:.1f}"
    )


def _audio_headers(req: SynthesisRequest, speech: Speech) -> dict[str, str]:
    content_type = "audio/wav" if req.audio_format == "wav" else "audio/pcm"
    return {
        "Content-Type": content_type,
        "X-Sample-Rate": str(speech.sample_rate),
        "X-Audio-Format": "s16le" if req.audio_format == "pcm" else "wav",
        "X-Voice": req.voice.name,
        "X-Engine": req.voice.engine,
        "X-Cache": speech.cache_status,
        "Server-Timing": _server_timing(speech.trace),
    }


async def tts(request: web.Request) -> web.StreamResponse:
    app = request.app
    req = parse_tts_request(await read_json(request), app[keys.REGISTRY], app[keys.SETTINGS])
    await _admit_synthesis(request, req)
    service = app[keys.SPEECH]
    speech = await service.speak(req, service.key_for(req, app[keys.SETTINGS].cache.namespace))
    if req.stream:
        return await _stream_audio(request, req, speech)
    pcm = b"".join([chunk async for chunk in speech.chunks])
    body = wav_header(speech.sample_rate, len(pcm)) + pcm if req.audio_format == "wav" else pcm
    headers = _audio_headers(req, speech)
    headers["X-Audio-Duration"] = f"{duration_s(len(pcm), speech.sample_rate):.3f}"
    return web.Response(body=body, headers=headers)


async def _admit_synthesis(request: web.Request, req: SynthesisRequest) -> None:
    """Tier features and the character quota, once the text is known."""
    gateway = request.app[keys.GATEWAY]
    identity = request[IDENTITY]
    gateway.require_feature(identity, "tts")
    if req.stream:
        gateway.require_feature(identity, "stream")
    await gateway.charge_chars(request, len(req.text))


async def _stream_audio(
    request: web.Request, req: SynthesisRequest, speech: Speech
) -> web.StreamResponse:
    """Chunked audio; headers leave with the first chunk so early errors keep their status."""
    response: web.StreamResponse | None = None
    async for chunk in speech.chunks:
        if response is None:
            response = web.StreamResponse(headers=_audio_headers(req, speech))
            response.enable_chunked_encoding()
            await response.prepare(request)
            if req.audio_format == "wav":
                await response.write(wav_header(speech.sample_rate, None))
        await response.write(chunk)
    assert response is not None  # a request always has at least one unit
    await response.write_eof()
    return response


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
    pool = request.app[keys.POOL]
    draining = request.app[keys.RUN_STATE].draining
    ready = pool.ready and not draining
    status = "draining" if draining else ("ready" if ready else "not_ready")
    body = {"status": status, "pool": pool.snapshot()}
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


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/", index)
    app.router.add_get("/ui/status", ui_status)
    app.router.add_static("/static/", STATIC_DIR)
    app.router.add_post("/api/tts", tts)
    app.router.add_get("/api/voices", voices)
    app.router.add_get("/api/cache/stats", cache_stats)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
