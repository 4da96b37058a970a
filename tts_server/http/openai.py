"""OpenAI-compatible speech API: POST /v1/audio/speech, GET /v1/models, GET /v1/audio/voices.

Clients of OpenAI's SDK point base_url here and work unchanged: models and OpenAI's voice
names map to our engines and voices in config ([openai]), errors come in OpenAI's shape.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from inference.text import detect_language
from tts_server import keys
from tts_server.config import OpenAISettings, Settings
from tts_server.encoding.formats import OPENAI_FORMATS, get_format
from tts_server.errors import BadRequest, TTSError, quote
from tts_server.speech.request import (
    SynthesisRequest,
    build_request,
    check_speed,
    clean_text,
    parse_format,
    parse_timings,
)
from tts_server.speech.voices import VoiceInfo, VoiceRegistry

STREAM_FORMATS = ("audio", "sse")
ERROR_TYPES = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}


def openai_error_body(error: TTSError) -> dict[str, dict[str, Any]]:
    kind = ERROR_TYPES.get(error.status)
    if kind is None:
        kind = "server_error" if error.status >= 500 else "invalid_request_error"
    return {"error": {"message": error.message, "type": kind, "param": error.param,
                      "code": error.code}}


def _string(body: dict[str, Any], field: str) -> str:
    value = body.get(field)
    if not isinstance(value, str) or not value:
        raise BadRequest(f"'{field}' is required and must be a non-empty string",
                         code=f"invalid_{field}", param=field)
    return value


def resolve_voice(
    model: str, voice: str, text: str, openai: OpenAISettings, registry: VoiceRegistry
) -> VoiceInfo:
    """A model naming one of our voices picks it. Otherwise the voice (ours, or an OpenAI name
    mapped in [openai.voices]) is routed by the text's language, preferring the model's engine."""
    if model in registry.voices:
        registry.resolve(openai.voices.get(voice, voice))  # still a voice we know
        return registry.voices[model]
    engine = openai.models.get(model, model if model in registry.engines else None)
    if engine is None:
        valid = sorted({*openai.models, *registry.voices, *registry.engines})
        raise BadRequest(f"unknown model {quote(model)}; valid models: {', '.join(valid)}",
                         code="model_not_found", param="model")
    try:
        routed = registry.route(openai.voices.get(voice, voice), detect_language(text))
    except BadRequest:
        valid = sorted({*openai.voices, *registry.voices, *registry.aliases})
        raise BadRequest(f"unknown voice {quote(voice)}; valid voices: {', '.join(valid)}",
                         code="voice_not_found", param="voice") from None
    return registry.prefer_engine(routed, engine)


def parse_speech_request(
    body: Any, registry: VoiceRegistry, settings: Settings
) -> tuple[SynthesisRequest, bool]:
    """The body of POST /v1/audio/speech -> (request, as server-sent events?)."""
    if not isinstance(body, dict):
        raise BadRequest("the JSON body must be an object", code="invalid_body")
    model, voice_name = _string(body, "model"), _string(body, "voice")
    text = clean_text(body.get("input"), "input", settings.text.max_text_chars)
    audio_format = parse_format(body.get("response_format", "mp3"), "response_format",
                                OPENAI_FORMATS, "invalid_response_format")
    stream_format = parse_format(body.get("stream_format", "audio"), "stream_format",
                                 STREAM_FORMATS, "invalid_stream_format")
    if body.get("instructions") is not None and not isinstance(body["instructions"], str):
        raise BadRequest("instructions must be a string", code="invalid_instructions",
                         param="instructions")
    speed = check_speed(body.get("speed", 1.0), settings, error=BadRequest)
    voice = resolve_voice(model, voice_name, text, settings.openai, registry)
    as_sse = stream_format == "sse"
    request = build_request(text, voice, speed, None, get_format(audio_format), True, settings,
                            parse_timings(body, as_sse), body["input"])
    return request, as_sse


async def list_models(request: web.Request) -> web.Response:
    registry = request.app[keys.REGISTRY]
    names = [*request.app[keys.SETTINGS].openai.models, *sorted(registry.engines),
             *registry.voices]
    data = [{"id": name, "object": "model", "created": 0, "owned_by": "tts-server"}
            for name in dict.fromkeys(names)]
    return web.json_response({"object": "list", "data": data})


async def list_voices(request: web.Request) -> web.Response:
    registry = request.app[keys.REGISTRY]
    openai_voices = request.app[keys.SETTINGS].openai.voices
    return web.json_response({
        "voices": [v.public() for v in registry.voices.values()],
        "openai_voices": openai_voices,
    })
