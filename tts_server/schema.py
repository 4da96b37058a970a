"""Validation of synthesis request bodies into a typed SynthesisRequest."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .config import Settings
from .errors import BadRequest, PayloadTooLarge, Unprocessable
from .text import has_speakable_content, normalize, split_units
from .voices import VoiceInfo, VoiceRegistry

AUDIO_FORMATS = ("wav", "pcm")


@dataclass(frozen=True)
class SynthesisRequest:
    text: str
    units: tuple[str, ...]
    voice: VoiceInfo
    speed: float
    speaker_id: int | None
    audio_format: str
    stream: bool


def _text(body: dict[str, Any], settings: Settings) -> str:
    text = body.get("text")
    if text is None:
        raise BadRequest("field 'text' is required", code="missing_text")
    if not isinstance(text, str):
        raise BadRequest("field 'text' must be a string", code="invalid_text")
    limit = settings.text.max_text_chars
    if len(text) > limit:
        raise PayloadTooLarge(
            f"text has {len(text)} characters; the limit is {limit}", code="text_too_long"
        )
    text = normalize(text)
    if not text or not has_speakable_content(text):
        raise BadRequest("field 'text' is empty", code="empty_text")
    return text


def _speed(body: dict[str, Any], settings: Settings) -> float:
    speed = body.get("speed", 1.0)
    if isinstance(speed, bool) or not isinstance(speed, int | float):
        raise Unprocessable("speed must be a number", code="invalid_speed")
    low, high = settings.synthesis.min_speed, settings.synthesis.max_speed
    if not low <= speed <= high:
        raise Unprocessable(f"speed must be between {low} and {high}", code="invalid_speed")
    return float(speed)


def _choice(body: dict[str, Any], key: str, choices: tuple[str, ...], default: str) -> str:
    value = body.get(key, default)
    if value not in choices:
        raise BadRequest(f"{key} must be one of {', '.join(choices)}", code=f"invalid_{key}")
    return value


def parse_tts_request(
    body: Any, registry: VoiceRegistry, settings: Settings
) -> SynthesisRequest:
    if not isinstance(body, dict):
        raise BadRequest("the JSON body must be an object", code="invalid_body")
    text = _text(body, settings)
    voice = registry.resolve(body.get("voice"))
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest("stream must be true or false", code="invalid_stream")
    return SynthesisRequest(
        text=text,
        units=tuple(split_units(text, settings.text.max_chunk_chars)),
        voice=voice,
        speed=_speed(body, settings),
        speaker_id=voice.resolve_speaker(body.get("speaker")),
        audio_format=_choice(body, "format", AUDIO_FORMATS, "wav"),
        stream=stream,
    )
