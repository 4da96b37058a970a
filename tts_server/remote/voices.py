"""The voices of [[engines.remote]] entries, as the registry holds them."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence

from inference.protocol import VoiceFiles
from tts_server.config import RemoteEngineSettings, VoiceSettings
from tts_server.speech.voices import VoiceInfo


def upstream_identity(entry: RemoteEngineSettings, upstream_voice: str) -> str:
    """What the audio depends on (base URL, model, voice or reference, extra fields, format):
    the voice's model_id, so cache keys of two upstreams never meet. The API key is not in
    it (the same upstream with a rotated key speaks the same)."""
    identity = [entry.base_url.rstrip("/"), entry.model, entry.voice_field, upstream_voice,
                entry.extra, entry.response_format, entry.sample_rate]
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str)
    return "remote-" + hashlib.sha256(canonical.encode()).hexdigest()[:16]


def remote_voices(entries: Sequence[RemoteEngineSettings]) -> tuple[VoiceInfo, ...]:
    return tuple(
        VoiceInfo(
            name=name,
            files=VoiceFiles(name, "", "", engine="remote"),
            language=entry.language,
            sample_rate=entry.sample_rate,
            num_speakers=1,
            speaker_ids={},
            quality="remote",
            model_id=upstream_identity(entry, upstream_voice),
            engine=entry.name,
            gender=entry.gender,
            precision="",  # the upstream's business
        )
        for entry in entries
        for name, upstream_voice in entry.voices.items()
    )


def with_remote_fallbacks(voices: VoiceSettings, entries: Sequence[RemoteEngineSettings]
                          ) -> VoiceSettings:
    """voices.fallbacks plus each entry's `fallback` for its voices ([voices.fallbacks] wins);
    the registry checks that every target exists."""
    fallbacks = {name: entry.fallback for entry in entries if entry.fallback
                 for name in entry.voices}
    if not fallbacks:
        return voices
    return dataclasses.replace(voices, fallbacks={**fallbacks, **voices.fallbacks})
