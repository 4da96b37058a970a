"""POST /api/tts/jobs bodies validated into a JobSpec.

The fields and checks are /api/tts's (speech/request.py), except the text limit
(jobs.max_text_chars instead of text.max_text_chars), no streaming, and callback_url.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from inference.text import detect_language
from tts_server.config import JobSettings, Settings
from tts_server.encoding.formats import get_format
from tts_server.errors import BadRequest
from tts_server.jobs.models import JobSpec
from tts_server.jobs.webhook import check_callback_url
from tts_server.speech.request import (
    API_FORMATS,
    AUDIO_FORMATS,
    build_request,
    check_speed,
    clean_text,
    parse_format,
)
from tts_server.speech.voices import VoiceRegistry

MAX_IDEMPOTENCY_KEY_CHARS = 255


def idempotency_key_hash(raw: str | None) -> str:
    """SHA-256 of the Idempotency-Key header ("" without one), so store keys stay short."""
    if raw is None:
        return ""
    if not 1 <= len(raw) <= MAX_IDEMPOTENCY_KEY_CHARS or not raw.isprintable():
        raise BadRequest(f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} printable "
                         "characters", code="invalid_idempotency_key")
    return hashlib.sha256(raw.encode()).hexdigest()


def parse_submission(
    body: Any, owner: str, idempotency_key: str, registry: VoiceRegistry, settings: Settings,
    job_settings: JobSettings,
) -> JobSpec:
    if not isinstance(body, dict):
        raise BadRequest("the JSON body must be an object", code="invalid_body")
    if body.get("stream", False) is not False:
        raise BadRequest("jobs are not streamed; fetch the audio when the job is done",
                         code="invalid_stream", param="stream")
    text = clean_text(body.get("text"), "text", job_settings.max_text_chars)
    voice = registry.route(body.get("voice"), detect_language(text))
    api_format = parse_format(body.get("format", "wav"), "format", AUDIO_FORMATS,
                              "invalid_format")
    speed = check_speed(body.get("speed", 1.0), settings)
    request = build_request(text, voice, speed, body.get("speaker"),
                            get_format(API_FORMATS[api_format]), False, settings)
    callback_url = check_callback_url(body.get("callback_url"), job_settings.webhook_hosts)
    identity = [text, voice.name, speed, request.speaker_id, api_format, callback_url]
    fingerprint = hashlib.sha256(json.dumps(identity).encode()).hexdigest()
    return JobSpec(
        owner=owner, units=request.units, chars=len(text), voice=voice.name, speed=speed,
        speaker_id=request.speaker_id, api_format=api_format,
        audio_format=request.audio_format.name, sample_rate=voice.sample_rate,
        callback_url=callback_url, idempotency_key=idempotency_key, fingerprint=fingerprint,
    )
