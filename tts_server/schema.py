"""Validation of synthesis request bodies (ours and OpenAI's) into one SynthesisRequest."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from inference.espeak_engine import detect_language

from .config import Settings
from .errors import BadRequest, PayloadTooLarge, TTSError, Unprocessable
from .text import has_speakable_content, normalize, split_units
from .voices import VoiceInfo, VoiceRegistry

# /api/tts "format" -> encoding format; our "pcm" stays at the voice's own rate.
API_FORMATS = {
    "wav": "wav", "mp3": "mp3", "opus": "opus", "aac": "aac", "flac": "flac", "pcm": "pcm_native",
}
AUDIO_FORMATS = tuple(API_FORMATS)


@dataclass(frozen=True)
class SynthesisRequest:
    text: str
    units: tuple[str, ...]
    voice: VoiceInfo
    speed: float
    speaker_id: int | None
    # A name from encoding.FORMATS.
    audio_format: str
    stream: bool


def clean_text(text: Any, field: str, settings: Settings) -> str:
    """Type, length and emptiness checks, then normalization."""
    if text is None:
        raise BadRequest(f"field '{field}' is required", code="missing_text", param=field)
    if not isinstance(text, str):
        raise BadRequest(f"field '{field}' must be a string", code="invalid_text", param=field)
    limit = settings.text.max_text_chars
    if len(text) > limit:
        raise PayloadTooLarge(f"text has {len(text)} characters; the limit is {limit}",
                              code="text_too_long", param=field)
    text = normalize(text)
    if not text or not has_speakable_content(text):
        raise BadRequest(f"field '{field}' is empty", code="empty_text", param=field)
    return text


def check_speed(speed: Any, settings: Settings, error: type[TTSError] = Unprocessable) -> float:
    if isinstance(speed, bool) or not isinstance(speed, int | float):
        raise error("speed must be a number", code="invalid_speed", param="speed")
    low, high = settings.synthesis.min_speed, settings.synthesis.max_speed
    if not low <= speed <= high:
        raise error(f"speed must be between {low} and {high}", code="invalid_speed",
                    param="speed")
    return float(speed)


def build_request(
    text: str, voice: VoiceInfo, speed: float, speaker: Any, audio_format: str, stream: bool,
    settings: Settings,
) -> SynthesisRequest:
    return SynthesisRequest(
        text=text,
        units=tuple(split_units(text, settings.text.max_chunk_chars)),
        voice=voice,
        speed=speed,
        speaker_id=voice.resolve_speaker(speaker),
        audio_format=audio_format,
        stream=stream,
    )


def parse_tts_request(
    body: Any, registry: VoiceRegistry, settings: Settings
) -> SynthesisRequest:
    """The body of POST /api/tts."""
    if not isinstance(body, dict):
        raise BadRequest("the JSON body must be an object", code="invalid_body")
    text = clean_text(body.get("text"), "text", settings)
    voice = registry.route(body.get("voice"), detect_language(text))
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest("stream must be true or false", code="invalid_stream", param="stream")
    audio_format = body.get("format", "wav")
    if audio_format not in API_FORMATS:
        raise BadRequest(f"format must be one of {', '.join(AUDIO_FORMATS)}",
                         code="invalid_format", param="format")
    speed = check_speed(body.get("speed", 1.0), settings)
    return build_request(text, voice, speed, body.get("speaker"), API_FORMATS[audio_format],
                         stream, settings)
