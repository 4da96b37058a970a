"""POST /api/tts/jobs bodies: read (with the jobs' own size limit) and validated into a JobSpec.

The fields and checks are /api/tts's, except the text limit (jobs.max_text_chars instead
of text.max_text_chars), no streaming, and the optional callback_url.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from aiohttp import web

from inference.espeak_engine import detect_language

from ..config import JobSettings, Settings
from ..errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from ..schema import API_FORMATS, AUDIO_FORMATS, build_request, check_speed
from ..text import has_speakable_content, normalize
from ..voices import VoiceRegistry
from .models import JobSpec
from .webhook import check_callback_url

MAX_IDEMPOTENCY_KEY_CHARS = 255


async def read_body(request: web.Request, limit: int) -> Any:
    """The JSON body, read past server.max_body_bytes up to `limit` (job texts are long)."""
    if request.content_type != "application/json":
        raise UnsupportedMediaType(
            f"Content-Type must be application/json, got {request.content_type!r}",
            code="unsupported_media_type")
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"body exceeds {limit} bytes", code="body_too_large")
    raw = bytearray()
    async for chunk in request.content.iter_chunked(1 << 16):
        raw += chunk
        if len(raw) > limit:
            raise PayloadTooLarge(f"body exceeds {limit} bytes", code="body_too_large")
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"invalid JSON: {exc}", code="invalid_json") from None


def idempotency_key_hash(raw: str | None) -> str:
    """SHA-256 of the Idempotency-Key header ("" without one), so store keys stay short."""
    if raw is None:
        return ""
    if not 1 <= len(raw) <= MAX_IDEMPOTENCY_KEY_CHARS or not raw.isprintable():
        raise BadRequest(f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} printable "
                         "characters", code="invalid_idempotency_key")
    return hashlib.sha256(raw.encode()).hexdigest()


def _job_text(value: Any, limit: int) -> str:
    if value is None:
        raise BadRequest("field 'text' is required", code="missing_text", param="text")
    if not isinstance(value, str):
        raise BadRequest("field 'text' must be a string", code="invalid_text", param="text")
    if len(value) > limit:
        raise PayloadTooLarge(f"text has {len(value)} characters; the job limit is {limit}",
                              code="text_too_long", param="text")
    text = normalize(value)
    if not text or not has_speakable_content(text):
        raise BadRequest("field 'text' is empty", code="empty_text", param="text")
    return text


def _api_format(body: dict[str, Any]) -> str:
    name = body.get("format", "wav")
    if name not in API_FORMATS:
        raise BadRequest(f"format must be one of {', '.join(AUDIO_FORMATS)}",
                         code="invalid_format", param="format")
    return str(name)


def parse_submission(
    body: Any, owner: str, idempotency_key: str, registry: VoiceRegistry, settings: Settings,
    job_settings: JobSettings,
) -> JobSpec:
    if not isinstance(body, dict):
        raise BadRequest("the JSON body must be an object", code="invalid_body")
    if body.get("stream", False) is not False:
        raise BadRequest("jobs are not streamed; fetch the audio when the job is done",
                         code="invalid_stream", param="stream")
    text = _job_text(body.get("text"), job_settings.max_text_chars)
    voice = registry.route(body.get("voice"), detect_language(text))
    api_format = _api_format(body)
    speed = check_speed(body.get("speed", 1.0), settings)
    request = build_request(text, voice, speed, body.get("speaker"), API_FORMATS[api_format],
                            False, settings)
    callback_url = check_callback_url(body.get("callback_url"), job_settings.webhook_hosts)
    identity = [text, voice.name, speed, request.speaker_id, api_format, callback_url]
    fingerprint = hashlib.sha256(json.dumps(identity).encode()).hexdigest()
    return JobSpec(
        owner=owner, units=request.units, chars=len(text), voice=voice.name, speed=speed,
        speaker_id=request.speaker_id, api_format=api_format,
        audio_format=request.audio_format, sample_rate=voice.sample_rate,
        callback_url=callback_url, idempotency_key=idempotency_key, fingerprint=fingerprint,
    )
