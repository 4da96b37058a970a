"""Validation of synthesis request bodies into one SynthesisRequest.

The field checks here are shared by /api/tts, /v1/audio/speech (tts_server/http/openai.py)
and the job API (tts_server/jobs/submission.py): each route differs only in its own fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from inference.text import detect_language, is_speakable
from tts_server.config import Settings
from tts_server.encoding.formats import AudioFormat, get_format
from tts_server.errors import BadRequest, PayloadTooLarge, TTSError, Unprocessable
from tts_server.speech.text import normalize, split_units
from tts_server.speech.timings import CAPTION_FORMATS
from tts_server.speech.voices import VoiceInfo, VoiceRegistry

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
    audio_format: AudioFormat
    stream: bool
    # Word timings asked for: the units are synthesized with them (speech/timings.py).
    timestamps: bool = False
    # The text exactly as the client sent it (kept when timings are asked: they index it).
    source_text: str = ""
    # A caption file ("srt" or "vtt") instead of audio; implies timestamps.
    captions: str | None = None


def clean_text(text: Any, field: str, limit: int) -> str:
    """Type, length and emptiness checks, then normalization.

    The limit holds before and after NFKC: one character can grow into eighteen."""
    if text is None:
        raise BadRequest(f"field '{field}' is required", code="missing_text", param=field)
    if not isinstance(text, str):
        raise BadRequest(f"field '{field}' must be a string", code="invalid_text", param=field)
    _check_length(len(text), field, limit)
    text = normalize(text)
    _check_length(len(text), field, limit)
    if not text or not is_speakable(text):
        raise BadRequest(f"field '{field}' is empty", code="empty_text", param=field)
    return text


def _check_length(chars: int, field: str, limit: int) -> None:
    if chars > limit:
        raise PayloadTooLarge(f"text has {chars} characters; the limit is {limit}",
                              code="text_too_long", param=field)


def parse_format(value: Any, field: str, choices: tuple[str, ...], code: str) -> str:
    """One of `choices`; anything else (a list, an object, an unknown name) is 400."""
    if not isinstance(value, str) or value not in choices:
        raise BadRequest(f"{field} must be one of {', '.join(choices)}", code=code, param=field)
    return value


def check_speed(speed: Any, settings: Settings, error: type[TTSError] = Unprocessable) -> float:
    if isinstance(speed, bool) or not isinstance(speed, int | float):
        raise error("speed must be a number", code="invalid_speed", param="speed")
    low, high = settings.synthesis.min_speed, settings.synthesis.max_speed
    if not low <= speed <= high:
        raise error(f"speed must be between {low} and {high}", code="invalid_speed",
                    param="speed")
    return float(speed)


@dataclass(frozen=True)
class Timings:
    """What a body asked for besides the audio: word timings, or a caption file."""

    words: bool = False
    captions: str | None = None


def parse_timings(body: dict[str, Any], stream: bool) -> Timings:
    """"timestamps": "words" (or true) and "captions": "srt" | "vtt"; 400 on anything else."""
    timestamps = body.get("timestamps")
    if timestamps in (None, False, "none"):
        words = False
    elif timestamps in (True, "words"):
        words = True
    else:
        raise BadRequest('timestamps must be "words" or "none"', code="invalid_timestamps",
                         param="timestamps")
    captions = body.get("captions")
    if captions is None:
        return Timings(words)
    if not isinstance(captions, str) or captions not in CAPTION_FORMATS:
        raise BadRequest(f"captions must be one of {', '.join(CAPTION_FORMATS)}",
                         code="invalid_captions", param="captions")
    if stream:
        raise BadRequest("captions are one file: ask for timestamps to get them with a "
                         "stream", code="invalid_captions", param="captions")
    return Timings(True, captions)


def build_request(
    text: str, voice: VoiceInfo, speed: float, speaker: Any, audio_format: AudioFormat,
    stream: bool,
    settings: Settings,
    timings: Timings = Timings(),
    source_text: str = "",
) -> SynthesisRequest:
    return SynthesisRequest(
        text=text,
        units=tuple(split_units(text, settings.text.max_chunk_chars)),
        voice=voice,
        speed=speed,
        speaker_id=voice.resolve_speaker(speaker),
        audio_format=audio_format,
        stream=stream,
        timestamps=timings.words,
        source_text=source_text if timings.words else "",
        captions=timings.captions,
    )


def parse_tts_request(
    body: Any, registry: VoiceRegistry, settings: Settings
) -> SynthesisRequest:
    """The body of POST /api/tts."""
    if not isinstance(body, dict):
        raise BadRequest("the JSON body must be an object", code="invalid_body")
    text = clean_text(body.get("text"), "text", settings.text.max_text_chars)
    voice = registry.route(body.get("voice"), detect_language(text))
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest("stream must be true or false", code="invalid_stream", param="stream")
    audio_format = parse_format(body.get("format", "wav"), "format", AUDIO_FORMATS,
                                "invalid_format")
    speed = check_speed(body.get("speed", 1.0), settings)
    return build_request(text, voice, speed, body.get("speaker"),
                         get_format(API_FORMATS[audio_format]),
                         stream, settings, parse_timings(body, stream), body["text"])
