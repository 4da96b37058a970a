"""The `info` event: this server as one Wyoming TTS program with every voice it has."""

from __future__ import annotations

import importlib.metadata
from typing import Any

from tts_server.speech.voices import VoiceInfo, VoiceRegistry

ATTRIBUTIONS = {
    "piper": {"name": "rhasspy", "url": "https://github.com/rhasspy/piper"},
    "espeak": {"name": "eSpeak NG", "url": "https://github.com/espeak-ng/espeak-ng"},
}
OTHER_ATTRIBUTION = {"name": "tts-server", "url": ""}


def _version() -> str | None:
    try:
        return importlib.metadata.version("tts-server")
    except importlib.metadata.PackageNotFoundError:
        return None


def voice_entry(voice: VoiceInfo) -> dict[str, Any]:
    quality = f", {voice.quality}" if voice.quality else ""
    return {
        "name": voice.name,
        "description": f"{voice.name} ({voice.engine}, {voice.language}{quality})",
        "attribution": ATTRIBUTIONS.get(voice.engine, OTHER_ATTRIBUTION),
        "installed": True,
        "version": None,
        "languages": [voice.language],
        "speakers": [{"name": name} for name in voice.speaker_ids] or None,
    }


def info_data(registry: VoiceRegistry, program_name: str) -> dict[str, Any]:
    """What `describe` gets: no ASR, wake or intent programs, one TTS program."""
    default = registry.voices[registry.default]
    # The default voice first: a client that picks no voice sees it first.
    voices = sorted(registry.voices.values(), key=lambda v: v is not default)
    program = {
        "name": program_name,
        "description": "tts-server: neural Piper voices with an espeak-ng fallback",
        "attribution": ATTRIBUTIONS.get(default.engine, OTHER_ATTRIBUTION),
        "installed": True,
        "version": _version(),
        "voices": [voice_entry(v) for v in voices],
        "supports_synthesize_streaming": True,
    }
    return {"asr": [], "tts": [program], "handle": [], "intent": [], "wake": [], "mic": [],
            "snd": []}
