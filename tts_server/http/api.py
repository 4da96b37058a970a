"""The synthesis routes and their listings: parse, admit, speak, respond.

Every decision about the audio (engine, cache, admission) is the speech layer's; a
handler translates HTTP into a SynthesisRequest and an Admission, and the Speech back.
"""

from __future__ import annotations

from aiohttp import web

from tts_server import keys
from tts_server.errors import BadRequest
from tts_server.http.bodies import parse_body
from tts_server.http.openai import parse_speech_request
from tts_server.http.responses import AudioResponder
from tts_server.http.timed import TimedResponder
from tts_server.speech.request import SynthesisRequest, parse_tts_request
from tts_server.speech.service import Speech
from tts_server.speech.synthesizer import Admission


async def tts(request: web.Request) -> web.StreamResponse:
    synthesis = await parse_body(request, parse_tts_request)
    responder = responder_for(request, await speak(request, synthesis))
    return await (responder.streamed() if synthesis.stream else responder.whole())


def responder_for(request: web.Request, speech: Speech) -> AudioResponder:
    """Plain audio, or (the request asked for word timings) JSON, captions or events."""
    return TimedResponder(request, speech) if speech.pieces is not None else AudioResponder(
        request, speech)


async def openai_speech(request: web.Request) -> web.StreamResponse:
    """POST /v1/audio/speech: streamed like OpenAI's, SSE on request. A tier without the
    "stream" feature gets SSE refused (403) and plain audio as one whole body with a
    Content-Length, so OpenAI's SDK still works for it."""
    synthesis, as_sse = await parse_body(request, parse_speech_request)
    may_stream = request.app[keys.GATEWAY].may_use(request[keys.IDENTITY], "stream")
    if as_sse and not may_stream:
        request.app[keys.GATEWAY].require_feature(request[keys.IDENTITY], "stream")
    responder = responder_for(request, await speak(request, synthesis))
    if as_sse:
        return await responder.sse()
    if synthesis.timestamps:  # timings without SSE: one JSON (or caption) body
        return await responder.whole()
    return await (responder.streamed() if may_stream else responder.whole())


async def speak(request: web.Request, synthesis: SynthesisRequest) -> Speech:
    """The gateway's checks on this text, then one call into the speech layer."""
    request[keys.REQUEST_INFO] = keys.RequestInfo(
        voice=synthesis.voice.name, chars=len(synthesis.text),
        audio_format=synthesis.audio_format.name)
    admission = await admit(request, synthesis)
    speech = await request.app[keys.SPEECH].speak(synthesis, admission)
    request[keys.REQUEST_INFO].voice = speech.request.voice.name
    return speech


async def admit(request: web.Request, synthesis: SynthesisRequest) -> Admission:
    """Tier features and the character quota, then how the request is scheduled."""
    app = request.app
    gateway = app[keys.GATEWAY]
    identity = request[keys.IDENTITY]
    gateway.require_feature(identity, "tts")
    if synthesis.stream and request.path.startswith("/api/"):
        gateway.require_feature(identity, "stream")  # /v1 decides in openai_speech
    await gateway.charge_chars(identity, len(synthesis.text))
    tier = gateway.tier(identity)
    return Admission(priority=tier.priority, deadline_s=deadline_s(request, tier.deadline_s),
                     level=app[keys.RUN_STATE].degradation_level)


def deadline_s(request: web.Request, tier_deadline_s: float) -> float:
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


async def voices(request: web.Request) -> web.Response:
    registry = request.app[keys.REGISTRY]
    return web.json_response(
        {
            "default": registry.default,
            "voices": [v.public() for v in registry.voices.values()],
            "aliases": registry.aliases,
        }
    )


async def cache_stats(request: web.Request) -> web.Response:
    cache = request.app[keys.SPEECH].cache
    if cache is None:
        return web.json_response({"enabled": False})
    return web.json_response({"enabled": True, **cache.snapshot()})
