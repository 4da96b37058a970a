"""The OpenAPI 3.1 document of every route (GET /openapi.json), built from the validators' own
constants and the live settings, so it cannot drift from what the handlers accept.

Enums come from speech/request.py (AUDIO_FORMATS), encoding/formats.py (OPENAI_FORMATS),
http/openai.py (STREAM_FORMATS), the voice registry and the static file list; limits (text
lengths, speeds, job list size, key lengths) from Settings. Each operation lists the error
statuses it can answer; `x-error-cases` are documented bad requests with the status and code
they get (tests/tts_server/http/test_openapi.py sends every one, and every example). A case
gives a JSON `body`, or `raw` bytes (with `content_type`), or `query` / `path` values;
`repeat: N` repeats the body's text (or the raw bytes) N times, to keep the document small.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from tts_server import keys
from tts_server.config import Settings
from tts_server.encoding.formats import OPENAI_FORMATS, get_format
from tts_server.http.openai import STREAM_FORMATS
from tts_server.http.probes import STATIC_FILES
from tts_server.jobs.models import Status
from tts_server.jobs.routes import BASE_PATH as JOBS
from tts_server.jobs.routes import MAX_LIST, STATUSES
from tts_server.jobs.submission import MAX_IDEMPOTENCY_KEY_CHARS
from tts_server.jobs.webhook import MAX_URL_CHARS
from tts_server.speech.request import API_FORMATS, AUDIO_FORMATS
from tts_server.speech.timings import CAPTION_FORMATS, CAPTION_TYPES
from tts_server.speech.voices import VoiceRegistry

Schema = dict[str, Any]
REF = "#/components/schemas/"
ERROR_REASONS = {
    400: "Invalid request", 401: "Missing or invalid token", 403: "Not allowed for this caller",
    404: "Not found", 408: "Request headers or body too slow", 409: "Conflict",
    410: "Gone", 413: "Too large", 415: "Not JSON", 416: "Range not satisfiable",
    422: "Valid JSON that cannot be spoken as asked", 429: "Rate limited (Retry-After)",
    503: "Busy, draining or a backend down (Retry-After)",
}
# What the gateway and the body reader can answer on any synthesis or job call.
GATEWAY = (401, 403, 429)
BODY = (400, 408, 413, 415)


def ref(name: str) -> Schema:
    return {"$ref": REF + name}


def obj(properties: dict[str, Schema], required: tuple[str, ...] = (), **extra: Any) -> Schema:
    return {"type": "object", "properties": properties, "required": list(required), **extra}


def json_content(schema: Schema, examples: dict[str, Any] | None = None) -> Schema:
    media: Schema = {"schema": schema}
    if examples:
        media["examples"] = {name: {"value": value} for name, value in examples.items()}
    return {"application/json": media}


def error_responses(statuses: tuple[int, ...], shape: str = "Error") -> dict[str, Schema]:
    out = {}
    for status in sorted(set(statuses)):
        response: Schema = {"description": ERROR_REASONS[status],
                            "content": json_content(ref(shape))}
        if status in (429, 503):
            response["headers"] = {"Retry-After": {"schema": {"type": "string"}}}
        out[str(status)] = response
    return out


def audio_content(content_types: list[str], sse: bool = False, timed: bool = False) -> Schema:
    content = {ct: {"schema": {"type": "string", "format": "binary"}} for ct in content_types}
    if sse:  # OpenAPI 3.1: the schema describes one event
        event = obj({"event": {"type": "string"}, "data": {"type": "string"}}, ("data",))
        content["text/event-stream"] = {"schema": event}
    if timed:
        content["application/json"] = {"schema": ref("TimedAudio")}
        content["application/x-ndjson"] = {"schema": {"type": "string"}}
        for caption_type in CAPTION_TYPES.values():
            content[caption_type] = {"schema": {"type": "string"}}
    return content


# ---- schemas --------------------------------------------------------------------------------


def error_schemas() -> dict[str, Schema]:
    code_message = obj({"code": {"type": "string"}, "message": {"type": "string"}},
                       ("code", "message"))
    openai = obj({"message": {"type": "string"}, "type": {"type": "string"},
                  "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}},
                 ("message", "type", "param", "code"))
    return {"Error": obj({"error": code_message}, ("error",)),
            "OpenAIError": obj({"error": openai}, ("error",))}


def synthesis_fields(settings: Settings, registry: VoiceRegistry, max_chars: int) -> Schema:
    voices = sorted({*registry.voices, *registry.aliases})
    synthesis = settings.synthesis
    return {
        "text": {"type": "string", "minLength": 1, "maxLength": max_chars},
        "voice": {"enum": [*voices, None], "description": "a voice or alias; null: default"},
        "speed": {"type": "number", "minimum": synthesis.min_speed,
                  "maximum": synthesis.max_speed, "default": 1.0},
        "speaker": {"type": ["string", "integer", "null"], "description": "multi-speaker voices"},
        "format": {"enum": list(AUDIO_FORMATS), "default": "wav"},
    }


def timing_fields() -> Schema:
    return {
        "timestamps": {"enum": ["words", "none", True, False, None], "default": "none",
                       "description": "words: JSON with the audio (base64) and each word's "
                                      "times; streamed: NDJSON (SSE on /v1) word events"},
        "captions": {"enum": [*CAPTION_FORMATS, None],
                     "description": "a caption file instead of audio; not with stream"},
    }


def request_schemas(settings: Settings, registry: VoiceRegistry) -> dict[str, Schema]:
    tts = synthesis_fields(settings, registry, settings.text.max_text_chars)
    job = synthesis_fields(settings, registry, settings.jobs.max_text_chars)
    job["callback_url"] = {"type": ["string", "null"], "format": "uri",
                           "maxLength": MAX_URL_CHARS,
                           "description": "http(s) URL on a host in jobs.webhook_hosts"}
    job["stream"] = {"const": False, "description": "jobs are never streamed"}
    openai_voices = sorted({*settings.openai.voices, *registry.voices, *registry.aliases})
    models = sorted({*settings.openai.models, *registry.voices, *registry.engines})
    speech = {
        "model": {"enum": models},
        "voice": {"enum": openai_voices},
        "input": {"type": "string", "minLength": 1, "maxLength": settings.text.max_text_chars},
        "response_format": {"enum": list(OPENAI_FORMATS), "default": "mp3"},
        "speed": tts["speed"],
        "stream_format": {"enum": list(STREAM_FORMATS), "default": "audio"},
        "instructions": {"type": ["string", "null"]},
        **timing_fields(),
    }
    return {
        "TTSRequest": obj({**tts, "stream": {"type": "boolean", "default": False},
                           **timing_fields()}, ("text",)),
        "JobRequest": obj(job, ("text",)),
        "SpeechRequest": obj(speech, ("model", "voice", "input")),
    }


def job_schema() -> Schema:
    statuses = [s.value for s in Status]
    progress = obj({"sentences_done": {"type": "integer"}, "sentences_total": {"type": "integer"},
                    "audio_seconds": {"type": "number"}},
                   ("sentences_done", "sentences_total", "audio_seconds"))
    nullable_time = {"type": ["string", "null"]}
    return obj({
        "job_id": {"type": "string"}, "status": {"enum": statuses},
        "status_url": {"type": "string"}, "audio_url": {"type": ["string", "null"]},
        "voice": {"type": "string"}, "format": {"enum": list(AUDIO_FORMATS)},
        "speed": {"type": "number"}, "characters": {"type": "integer"}, "progress": progress,
        "created_at": nullable_time, "started_at": nullable_time, "finished_at": nullable_time,
        "expires_at": nullable_time, "attempts": {"type": "integer"},
        "cancel_requested": {"type": "boolean"},
        "error": {"type": ["object", "null"]},
    }, ("job_id", "status", "status_url", "progress", "attempts"))


def timed_audio_schema() -> Schema:
    word = obj({"text": {"type": "string"}, "start_char": {"type": "integer"},
                "end_char": {"type": "integer"}, "start_s": {"type": "number"},
                "end_s": {"type": "number"}},
               ("text", "start_char", "end_char", "start_s", "end_s"))
    return obj({"audio": {"type": "string", "contentEncoding": "base64"},
                "format": {"type": "string"}, "content_type": {"type": "string"},
                "sample_rate": {"type": "integer"}, "duration_s": {"type": "number"},
                "voice": {"type": "string"}, "timings": {"enum": ["engine", "estimated"]},
                "words": {"type": "array", "items": word}},
               ("audio", "format", "sample_rate", "duration_s", "words"))


def response_schemas() -> dict[str, Schema]:
    voice = obj({"name": {"type": "string"}, "language": {"type": "string"},
                 "sample_rate": {"type": "integer"}, "engine": {"type": "string"}},
                ("name", "language", "sample_rate", "engine"))
    model = obj({"id": {"type": "string"}, "object": {"const": "model"}}, ("id", "object"))
    ready = obj({"status": {"enum": ["ready", "not_ready", "draining"]},
                 "degraded": {"type": "array", "items": {"type": "string"}},
                 "redis": {"type": ["object", "null"]}, "pools": {"type": "object"},
                 "breakers": {"type": "object"}, "degradation_level": {"type": "integer"}},
                ("status", "degraded", "pools", "breakers", "degradation_level"))
    return {
        "TimedAudio": timed_audio_schema(),
        "Job": job_schema(),
        "JobList": obj({"jobs": {"type": "array", "items": ref("Job")}}, ("jobs",)),
        "Voices": obj({"default": {"type": "string"}, "voices": {"type": "array", "items": voice},
                       "aliases": {"type": "object"}}, ("default", "voices", "aliases")),
        "Models": obj({"object": {"const": "list"}, "data": {"type": "array", "items": model}},
                      ("object", "data")),
        "OpenAIVoices": obj({"voices": {"type": "array", "items": voice},
                             "openai_voices": {"type": "object"}}, ("voices", "openai_voices")),
        "Health": obj({"status": {"const": "ok"}}, ("status",)),
        "Ready": ready,
        "CacheStats": obj({"enabled": {"type": "boolean"}}, ("enabled",)),
        "UiStatus": obj({"auth_required": {"type": "boolean"},
                         "max_text_chars": {"type": "integer"},
                         "formats": {"type": "array", "items": {"enum": list(AUDIO_FORMATS)}}},
                        ("auth_required", "max_text_chars", "formats")),
    }


# ---- operations -----------------------------------------------------------------------------


def operation(op_id: str, summary: str, responses: dict[str, Schema], **extra: Any) -> Schema:
    return {"operationId": op_id, "summary": summary, "responses": responses, **extra}


def ok(description: str, content: Schema | None = None, **extra: Any) -> Schema:
    return {"description": description, **({"content": content} if content else {}), **extra}


def tts_operation(settings: Settings) -> Schema:
    content_types = sorted({get_format(f).content_type for f in API_FORMATS.values()})
    limit = settings.text.max_text_chars
    body = {"required": True, "content": json_content(ref("TTSRequest"), {
        "hello": {"text": "Hello from the server."},
        "streamed_mp3": {"text": "Streamed as it is spoken.", "format": "mp3", "stream": True},
    })}
    deadline = {"name": "X-Deadline-Ms", "in": "header", "required": False,
                "schema": {"type": "number", "exclusiveMinimum": 0}}
    return operation("synthesize", "Synthesize speech", {
        "200": ok("The audio (chunked when streamed); with timestamps JSON or NDJSON; with "
                  "captions a caption file", audio_content(content_types, timed=True)),
        **error_responses((*BODY, *GATEWAY, 422, 503)),
    }, requestBody=body, parameters=[deadline], **{"x-error-cases": [
        {"body": {"text": ""}, "status": 400, "code": "empty_text"},
        {"body": {"text": "hi", "format": ["wav"]}, "status": 400, "code": "invalid_format"},
        {"body": {"text": "hi", "voice": "nobody"}, "status": 400, "code": "unknown_voice"},
        {"body": {"text": "hi", "speed": 99}, "status": 422, "code": "invalid_speed"},
        {"body": {"text": "hi", "timestamps": "all"}, "status": 400,
         "code": "invalid_timestamps"},
        {"body": {"text": "hi", "captions": "vtt", "stream": True}, "status": 400,
         "code": "invalid_captions"},
        {"body": {"text": "x"}, "repeat": limit + 1, "status": 413, "code": "text_too_long"},
        {"raw": "[", "repeat": 10_000, "status": 400, "code": "invalid_json"},
        {"raw": "text=hi", "content_type": "text/plain", "status": 415,
         "code": "unsupported_media_type"},
    ]})


def speech_operation(settings: Settings) -> Schema:
    content_types = sorted({get_format(f).content_type for f in OPENAI_FORMATS})
    body = {"required": True, "content": json_content(ref("SpeechRequest"), {
        "sdk_default": {"model": "tts-1", "voice": "alloy", "input": "Hello!"},
        "sse_wav": {"model": "tts-1", "voice": "alloy", "input": "Hi.", "response_format": "wav",
                    "stream_format": "sse"},
    })}
    return operation("createSpeech", "OpenAI-compatible speech", {
        "200": ok("The audio, or speech.audio.delta events with stream_format sse "
                  "(and speech.words with timestamps)",
                  audio_content(content_types, sse=True, timed=True)),
        **error_responses((*BODY, *GATEWAY, 422, 503), "OpenAIError"),
    }, requestBody=body, **{"x-error-cases": [
        {"body": {"model": "nope", "voice": "alloy", "input": "hi"}, "status": 400,
         "code": "model_not_found"},
        {"body": {"model": "tts-1", "voice": "alloy", "input": "hi", "response_format": "ogg"},
         "status": 400, "code": "invalid_response_format"},
    ]})


def job_operations(settings: Settings) -> dict[str, Schema]:
    job_id = [{"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}]
    links = {"GetJob": {"operationId": "getJob",
                        "parameters": {"job_id": "$response.body#/job_id"}},
             "GetJobAudio": {"operationId": "getJobAudio",
                             "parameters": {"job_id": "$response.body#/job_id"}},
             "CancelJob": {"operationId": "cancelJob",
                           "parameters": {"job_id": "$response.body#/job_id"}}}
    idempotency = {"name": "Idempotency-Key", "in": "header", "required": False,
                   "schema": {"type": "string", "minLength": 1,
                              "maxLength": MAX_IDEMPOTENCY_KEY_CHARS, "pattern": "^[ -~]+$"}}
    submit = operation("submitJob", "Submit a long text", {
        "202": ok("Accepted", json_content(ref("Job")), links=links),
        **error_responses((*BODY, *GATEWAY, 422, 503)),
    }, parameters=[idempotency], requestBody={"required": True, "content": json_content(
        ref("JobRequest"), {"chapter": {"text": "A chapter. It has sentences."}})},
        **{"x-error-cases": [
            {"body": {"text": "hi", "callback_url": "http://[::1"}, "status": 400,
             "code": "invalid_callback_url"},
            {"body": {"text": "x"}, "repeat": settings.jobs.max_text_chars + 1, "status": 413,
             "code": "text_too_long"},
        ]})
    listing = operation("listJobs", "The caller's jobs, newest first", {
        "200": ok("Jobs", json_content(ref("JobList"))),
        **error_responses((400, *GATEWAY, 503)),
    }, parameters=[
        {"name": "limit", "in": "query", "required": False,
         "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIST, "default": 50}},
        {"name": "status", "in": "query", "required": False,
         "schema": {"enum": list(STATUSES)}},
    ], **{"x-error-cases": [{"query": {"limit": "²"}, "status": 400, "code": "invalid_limit"},
                            {"query": {"status": ""}, "status": 400, "code": "invalid_status"}]})
    unknown = {"path": {"job_id": "0" * 32}, "status": 404, "code": "job_not_found"}
    get_job = operation("getJob", "Status and progress", {
        "200": ok("The job", json_content(ref("Job"))), **error_responses((*GATEWAY, 404, 503)),
    }, parameters=job_id, **{"x-error-cases": [unknown]})
    cancel = operation("cancelJob", "Cancel", {
        "200": ok("Cancelled", json_content(ref("Job"))),
        "202": ok("Stops after its current sentence", json_content(ref("Job"))),
        **error_responses((*GATEWAY, 404, 409, 503)),
    }, parameters=job_id, **{"x-error-cases": [unknown]})
    content_types = sorted({get_format(f).content_type for f in API_FORMATS.values()})
    audio = operation("getJobAudio", "The audio once done (byte ranges)", {
        "200": ok("The audio", audio_content(content_types)),
        "206": ok("A byte range", audio_content(content_types)),
        **error_responses((*GATEWAY, 404, 409, 410, 416, 503)),
    }, parameters=[*job_id, {"name": "Range", "in": "header", "required": False,
                             "schema": {"type": "string"}}], **{"x-error-cases": [unknown]})
    captions = operation("getJobCaptions", "Its captions once done (SRT or WebVTT)", {
        "200": ok("The caption file", {t: {"schema": {"type": "string"}}
                                       for t in CAPTION_TYPES.values()}),
        **error_responses((400, *GATEWAY, 404, 409, 503)),
    }, parameters=[*job_id, {"name": "format", "in": "query", "required": False,
                             "schema": {"enum": list(CAPTION_FORMATS), "default": "vtt"}}],
        **{"x-error-cases": [unknown]})
    return {JOBS: {"post": submit, "get": listing}, JOBS + "/{job_id}": {"get": get_job,
            "delete": cancel}, JOBS + "/{job_id}/audio": {"get": audio},
            JOBS + "/{job_id}/captions": {"get": captions}}


def simple_get(op_id: str, summary: str, schema: str, errors: tuple[int, ...] = GATEWAY) -> Schema:
    return {"get": operation(op_id, summary, {
        "200": ok(summary, json_content(ref(schema))), **error_responses(errors)})}


def page_operations(app: web.Application) -> dict[str, Schema]:
    names = sorted(app[STATIC_FILES])
    text = {"text/plain": {"schema": {"type": "string"}}}
    static = {"name": "name", "in": "path", "required": True, "schema": {"enum": names}}
    return {
        "/": {"get": operation("page", "The web page", {
            "200": ok("HTML", {"text/html": {"schema": {"type": "string"}}}),
            **error_responses((401, 403))})},
        "/static/{name}": {"get": operation("staticFile", "A file of the web page", {
            "200": ok("The file", {"*/*": {"schema": {"type": "string", "format": "binary"}}}),
            **error_responses((401, 403, 404))}, parameters=[static],
            **{"x-error-cases": [{"path": {"name": "missing.js"}, "status": 404,
                                  "code": "not_found"}]})},
        "/metrics": {"get": operation("metrics", "Prometheus exposition", {
            "200": ok("Metrics", text), **error_responses((401, 403))})},
    }


def paths(app: web.Application) -> dict[str, Schema]:
    settings = app[keys.SETTINGS]
    ready = {"get": operation("readyz", "Ready: every worker of every engine", {
        "200": ok("Ready", json_content(ref("Ready"))),
        "503": ok("Not ready or draining", json_content(ref("Ready"))),
        **error_responses((401, 403))})}
    table = {
        "/api/tts": {"post": tts_operation(settings)},
        "/api/voices": simple_get("listVoices", "Voices and aliases", "Voices"),
        "/api/cache/stats": simple_get("cacheStats", "Cache counters", "CacheStats"),
        "/v1/audio/speech": {"post": speech_operation(settings)},
        "/v1/audio/speech/stream": {"get": operation(
            "speechStreamIn", "Text in, audio out, over a WebSocket (README: Streaming text in)",
            {"101": ok("Switching to the WebSocket protocol"),
             **error_responses((400, *GATEWAY))},
            **{"x-error-cases": [{"status": 400, "code": "websocket_required"}]})},
        "/v1/models": simple_get("listModels", "OpenAI model names", "Models"),
        "/v1/audio/voices": simple_get("listOpenAIVoices", "Voices for /v1", "OpenAIVoices"),
        "/healthz": simple_get("healthz", "The process is up", "Health", (401, 403)),
        "/readyz": ready,
        "/ui/status": simple_get("uiStatus", "What the web page needs first", "UiStatus",
                                 (401, 403)),
        "/openapi.json": {"get": operation("openapi", "This document", {
            "200": ok("OpenAPI 3.1", json_content({"type": "object"})),
            **error_responses((401, 403))})},
        **page_operations(app),
    }
    if settings.jobs.enabled:
        table.update(job_operations(settings))
    if not settings.server.metrics:
        del table["/metrics"]
    return table


def build_document(app: web.Application) -> Schema:
    settings, registry = app[keys.SETTINGS], app[keys.REGISTRY]
    schemas = {**error_schemas(), **request_schemas(settings, registry), **response_schemas()}
    return {
        "openapi": "3.1.0",
        "info": {"title": "tts-server", "version": "1",
                 "description": "Text-to-speech over HTTP; errors are "
                                '{"error": {"code", "message"}} (OpenAI\'s shape under /v1/).'},
        "paths": paths(app),
        "components": {"schemas": schemas, "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{}, {"bearer": []}],
    }


async def openapi_json(request: web.Request) -> web.Response:
    return web.json_response(request.app[OPENAPI])


OPENAPI = web.AppKey("openapi_document", dict[str, Any])
