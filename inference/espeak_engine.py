"""The espeak-ng engine: formant synthesis through the espeak-ng C library, via ctypes.

The second, independent engine next to the Piper/VITS `inference.voice.Voice`: the fallback
when the neural engine fails or is overloaded, and the only engine for Mandarin and for the
female voices. It never imports ONNX Runtime or piper, so a failure of one engine cannot take
the other down. Knows nothing about HTTP or IPC.

Where the library comes from (first that works):
1. explicit `library_path` / `data_path` arguments of `EspeakVoice.load()`;
2. the `espeakng-loader` wheel, which ships `libespeak-ng.so` (1.52) and its
   `espeak-ng-data` (`get_library_path()`, `get_data_path()`);
3. the system library (Debian's `libespeak-ng1` + `espeak-ng-data`), found with
   `ctypes.util.find_library("espeak-ng")`, its data in `$ESPEAK_DATA_PATH` or the usual
   Debian/FHS directories.
A library and its data must come from the same source: espeak-ng refuses data of another
version.

Global state. espeak-ng keeps all its state in C globals: one process holds one initialized
library. Every EspeakVoice in a process shares it (`get_library()`), and every synthesis call
holds one module lock while it sets the voice, the rate and the seeds and runs
`espeak_Synth`, so threads are safe but serialized. Run one engine per process (the server
runs it in worker processes of its own); use processes, not threads, for parallelism.

Determinism. Stock espeak-ng is not repeatable inside one process: breath noise uses libc
`rand()`, and the pitch "flutter" table index and the "roughness" cycle counter are C statics
that carry over from one utterance to the next (a fresh process is repeatable, the same
process is not). So the engine (a) reseeds libc `rand()` and espeak's own generator before
every call, and (b) runs on a private overlay of the data directory (symlinks to the shipped
files, kept in a cache directory) whose voice variants all end with `flutter 0` and
`roughness 8`, plus a neutral variant `tts-steady` for the male voices. Flutter is a pitch
wobble of about +-2 Hz and roughness a 1/16 amplitude dip every few cycles; without them the
audio of a text is bit-for-bit the same on every call, which the cache and the tests rely on.

Speed. espeak-ng speaks `175 * speed` words per minute. It cannot go slower than 80 wpm: any
speed below 80/175 = 0.457 sounds like 0.457. Above 450 wpm it speeds up with its built-in
sonic time-stretcher; speed is clamped to [0.25, 4.0] first (175 wpm * 4 = 700 wpm).
"""

from __future__ import annotations

import atexit
import bisect
import ctypes
import ctypes.util
import hashlib
import logging
import math
import os
import re
import shutil
import tempfile
import threading
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

from .options import VoiceError
from .text import detect_language
from .timing import WordTiming, fill_gaps, locate, word_tokens

LOG = logging.getLogger("tts.inference.espeak")

ENGINE_NAME = "espeak"
SAMPLE_RATE = 22_050
WARMUP_TEXT = "Warming up the voice."

# Speed -> espeak rate (words per minute).
DEFAULT_WPM = 175
MIN_WPM = 80  # espeak-ng's floor: lower rates are raised to it
MIN_SPEED = 0.25
MAX_SPEED = 4.0
MAX_WPM = round(DEFAULT_WPM * MAX_SPEED)  # 700: past 450 wpm espeak-ng uses sonic

# Text longer than this is synthesized in pieces (split at clause punctuation or spaces),
# which bounds the memory and latency of one espeak_Synth call.
MAX_CHUNK_CHARS = 400

# espeak-ng's C API (speak_lib.h, espeak_ng.h).
AUDIO_OUTPUT_SYNCHRONOUS = 2
ESPEAK_INITIALIZE_DONT_EXIT = 0x8000  # report missing data instead of calling exit()
ESPEAK_CHARS_UTF8 = 1
ESPEAK_ENDPAUSE = 0x1000  # a sentence-final pause after the text
POS_CHARACTER = 1
ESPEAK_RATE = 1
EE_OK = 0
CALLBACK_BUFFER_MS = 200
# espeak-ng 1.52 keeps the data path in char[160] (POSIX); leave room for "/voices/!v/NAME".
MAX_DATA_PATH_CHARS = 120

STEADY_VARIANT = "tts-steady"
_STEADY_LINES = (
    b"\n// tts-server: no pitch flutter, no roughness (repeatable audio)\n"
    b"flutter 0\nroughness 8\n"
)
_OVERLAY_VERSION = b"1"
_VARIANT_NAME = re.compile(r"[A-Za-z0-9_-]{1,30}")


class EspeakError(RuntimeError):
    """The espeak-ng library cannot be found, loaded or initialized, or a call failed."""


class EspeakInputError(VoiceError):
    """The request cannot be synthesized (bad speed, unknown variant or voice)."""


@dataclass(frozen=True)
class EspeakVoiceInfo:
    """One catalog entry: a public voice name and the espeak-ng voice (+variant) behind it."""

    name: str
    language: str  # BCP-47-ish with underscore, like the Piper voices: en_US, zh_CN
    gender: Literal["male", "female"]
    espeak_voice: str  # espeak-ng voice file name: en-us, cmn
    variant: str | None = None  # espeak-ng-data/voices/!v/<variant>; None: the plain voice
    engine: str = ENGINE_NAME


VOICES: dict[str, EspeakVoiceInfo] = {
    info.name: info
    for info in (
        EspeakVoiceInfo("espeak-en-male", "en_US", "male", "en-us"),
        EspeakVoiceInfo("espeak-en-female", "en_US", "female", "en-us", "f3"),
        EspeakVoiceInfo("espeak-zh-male", "zh_CN", "male", "cmn"),
        EspeakVoiceInfo("espeak-zh-female", "zh_CN", "female", "cmn", "f3"),
    )
}
_BY_LANGUAGE_GENDER = {(i.language[:2], i.gender): i for i in VOICES.values()}


@dataclass(frozen=True)
class EspeakOptions:
    """Per-request settings. `variant` overrides the voice's own variant (e.g. "f4", "m3")."""

    speed: float = 1.0
    variant: str | None = None


class _HasSpeed(Protocol):
    speed: float


# --- language -------------------------------------------------------------------------

def select_voice(text: str, gender: Literal["male", "female"] = "male") -> EspeakVoiceInfo:
    """The catalog voice for the text's language (detect_language) and the gender."""
    try:
        return _BY_LANGUAGE_GENDER[(detect_language(text), gender)]
    except KeyError:
        raise EspeakInputError(f"no espeak voice for gender {gender!r}") from None


# --- text -----------------------------------------------------------------------------

_SPACES = re.compile(r"[ \t\u00a0\u3000]+")
_SENTENCE_END = re.compile(
    r"""[.!?]+["'”’)\]]*(?=\s)          # ASCII enders count only before a space (3.14, v2.0)
      | [。！？…]+["'”’」』）)\]]*       # CJK enders need no space
      | \n\s*\n                       # a blank line
    """,
    re.X,
)
_CLAUSE_BREAK = re.compile(r"[,;:，；：、]\s*|\s+")


def strip_controls(text: str) -> str:
    """Control and format characters dropped (line breaks and tabs become spaces)."""
    out = []
    for ch in text:
        if ch in "\n\r\t\v\f\x1c\x1d\x1e\x85\u2028\u2029":
            out.append("\n" if ch in "\n\r\u2029" else " ")
        elif unicodedata.category(ch)[0] != "C":
            out.append(ch)
    lines = (_SPACES.sub(" ", line).strip() for line in "".join(out).split("\n"))
    return "\n".join(lines).strip()


def _speakable(piece: str) -> bool:
    return any(not (ch.isspace() or unicodedata.category(ch)[0] == "P") for ch in piece)


def _split_long(piece: str, limit: int) -> list[str]:
    parts = []
    while len(piece) > limit:
        cut = 0
        for match in _CLAUSE_BREAK.finditer(piece, 0, limit):
            cut = match.end()
        cut = cut if cut > limit // 4 else limit
        parts.append(piece[:cut])
        piece = piece[cut:]
    parts.append(piece)
    return parts


def split_sentences(text: str, limit: int = MAX_CHUNK_CHARS) -> list[str]:
    """Cleaned text in speakable pieces: sentences, long ones cut to at most `limit` chars."""
    text = strip_controls(text)
    pieces, start = [], 0
    for match in _SENTENCE_END.finditer(text):
        pieces.append(text[start : match.end()])
        start = match.end()
    pieces.append(text[start:])
    out = []
    for piece in pieces:
        piece = " ".join(piece.split())
        if _speakable(piece):
            out.extend(p.strip() for p in _split_long(piece, limit) if _speakable(p))
    return out


def rate_for_speed(speed: float) -> int:
    """espeak words per minute for a speed factor; see the module doc for the clamps."""
    if not (isinstance(speed, int | float) and math.isfinite(speed) and speed > 0):
        raise EspeakInputError(f"speed must be a positive number, got {speed!r}")
    speed = min(max(speed, MIN_SPEED), MAX_SPEED)
    return min(max(round(DEFAULT_WPM * speed), MIN_WPM), MAX_WPM)


# --- locating the library -------------------------------------------------------------

_SYSTEM_DATA_DIRS = (
    "/usr/lib/x86_64-linux-gnu/espeak-ng-data",
    "/usr/lib/aarch64-linux-gnu/espeak-ng-data",
    "/usr/share/espeak-ng-data",
    "/usr/local/share/espeak-ng-data",
    "/usr/lib/espeak-ng-data",
)


def _is_data_dir(path: Path) -> bool:
    return (path / "phontab").is_file() and (path / "voices").is_dir()


def library_candidates() -> list[tuple[str, str, str]]:
    """(library, data directory, source) to try in order: espeakng-loader, then the system's."""
    found = []
    try:
        import espeakng_loader
    except ImportError:
        LOG.info("espeakng-loader is not installed; looking for a system espeak-ng")
    else:
        library, data = espeakng_loader.get_library_path(), espeakng_loader.get_data_path()
        if Path(library).is_file() and _is_data_dir(Path(data)):
            found.append((library, data, "espeakng-loader"))
        else:
            LOG.warning("espeakng-loader ships no usable library/data: %s, %s", library, data)
    library = ctypes.util.find_library("espeak-ng")
    if library is not None:
        dirs = [os.environ.get("ESPEAK_DATA_PATH", ""), *_SYSTEM_DATA_DIRS]
        for candidate in filter(None, dirs):
            data = next(
                (p for p in (Path(candidate), Path(candidate) / "espeak-ng-data")
                 if _is_data_dir(p)),
                None,
            )
            if data is not None:
                found.append((library, str(data), "system"))
                break
        else:
            LOG.warning("found %s but no espeak-ng-data directory (set ESPEAK_DATA_PATH)", library)
    return found


def _cache_root() -> Path:
    configured = os.environ.get("TTS_ESPEAK_CACHE")
    if configured:
        return Path(configured)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "tts-server"


def _steady(variant: bytes) -> bytes:
    return variant.rstrip(b"\n") + b"\n" + _STEADY_LINES


def _fill_overlay(source: Path, target: Path) -> None:
    for entry in source.iterdir():
        if entry.name != "voices":
            os.symlink(entry.resolve(), target / entry.name)
    voices = target / "voices"
    voices.mkdir()
    for entry in (source / "voices").iterdir():
        if entry.name != "!v":
            os.symlink(entry.resolve(), voices / entry.name)
    variants = voices / "!v"
    variants.mkdir()
    stock = source / "voices" / "!v"
    for entry in sorted(stock.iterdir()) if stock.is_dir() else ():
        if entry.is_file():
            (variants / entry.name).write_bytes(_steady(entry.read_bytes()))
    header = f"language variant\nname {STEADY_VARIANT}\n".encode()
    (variants / STEADY_VARIANT).write_bytes(_steady(header))


def _source_fingerprint(source: Path) -> bytes:
    """What the overlay depends on: the source's entries and its variant files' stat."""
    parts = [str(source), *sorted(p.name for p in source.iterdir())]
    parts += sorted(p.name for p in (source / "voices").iterdir())
    stock = source / "voices" / "!v"
    for entry in sorted(stock.iterdir()) if stock.is_dir() else ():
        info = entry.stat()
        parts.append(f"{entry.name}:{info.st_size}:{info.st_mtime_ns}")
    return "\0".join(parts).encode()


def _private_overlay(source: Path) -> Path:
    building = Path(tempfile.mkdtemp(prefix="tts-espeak-data-"))
    atexit.register(shutil.rmtree, building, ignore_errors=True)
    _fill_overlay(source, building)
    return building


def build_overlay(source: str | Path, root: Path | None = None) -> Path:
    """A data directory like `source` whose variants are all steady (see the module doc).

    Kept under the cache directory, keyed by the source's path, listing and variant files
    and by this module's variant text; built in a temporary directory and renamed into
    place (safe against concurrent workers). Where the cache cannot be used, a private
    temporary directory is built instead (removed at exit).
    """
    source = Path(source).resolve()
    key = hashlib.sha256(_source_fingerprint(source) + _OVERLAY_VERSION + _STEADY_LINES)
    root = root or _cache_root()
    target = root / f"espeak-data-{key.hexdigest()[:16]}"
    marker = target / "voices" / "!v" / STEADY_VARIANT
    if not marker.is_file():
        try:
            root.mkdir(parents=True, exist_ok=True)
            building = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=root))
        except OSError as exc:
            LOG.warning("cache %s not writable (%s); espeak data in a temp dir", root, exc)
            return _private_overlay(source)
        try:
            _fill_overlay(source, building)
            os.rename(building, target)
        except OSError as exc:
            shutil.rmtree(building, ignore_errors=True)
            if not marker.is_file():  # not just a race lost to another worker
                LOG.warning("cannot build %s (%s); espeak data in a temp dir", target, exc)
                return _private_overlay(source)
    if target.stat().st_uid != os.getuid():
        LOG.warning("%s belongs to another user; espeak data in a temp dir", target)
        return _private_overlay(source)
    return target


# --- the library ----------------------------------------------------------------------

class _Event(ctypes.Structure):
    """espeak_EVENT (speak_lib.h); an array of them, ended by type 0, comes with each chunk."""

    _fields_ = [
        ("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),  # 1-based, in characters of the UTF-8 text
        ("length", ctypes.c_int), ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),  # samples since the start of this espeak_Synth call
        ("user_data", ctypes.c_void_p), ("id", ctypes.c_char * 8),
    ]


EVENT_LIST_TERMINATED = 0
EVENT_WORD = 1


@dataclass(frozen=True)
class WordEvent:
    """A word espeak-ng spoke: 0-based character position in the text it was given, and
    the sample where it starts and where the next event (word, clause end) begins."""

    position: int
    start_sample: int
    end_sample: int


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                             ctypes.c_void_p)


def _bind(lib: ctypes.CDLL) -> None:
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_SetSynthCallback.argtypes = [_CALLBACK]
    lib.espeak_SetSynthCallback.restype = None
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetVoiceByName.restype = ctypes.c_int
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_SetParameter.restype = ctypes.c_int
    lib.espeak_Synth.argtypes = [
        ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
        ctypes.c_uint, ctypes.POINTER(ctypes.c_uint), ctypes.c_void_p,
    ]
    lib.espeak_Synth.restype = ctypes.c_int
    lib.espeak_Info.argtypes = [ctypes.POINTER(ctypes.c_char_p)]
    lib.espeak_Info.restype = ctypes.c_char_p
    if hasattr(lib, "espeak_ng_SetRandSeed"):
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        lib.espeak_ng_SetRandSeed.restype = ctypes.c_int


class EspeakLibrary:
    """The process's initialized espeak-ng; obtain it with get_library(), never twice."""

    def __init__(self, library_path: str, data_path: str, source: str) -> None:
        self.library_path = library_path
        self.source = source
        try:
            self._lib = ctypes.CDLL(library_path)
        except OSError as exc:
            raise EspeakError(f"cannot load {library_path}: {exc}") from exc
        _bind(self._lib)
        self._libc = ctypes.CDLL(None)
        self.data_path = str(build_overlay(data_path))
        if len(self.data_path) > MAX_DATA_PATH_CHARS:  # a long cache path: try /tmp
            self.data_path = str(_private_overlay(Path(data_path).resolve()))
        if len(self.data_path) > MAX_DATA_PATH_CHARS:
            raise EspeakError(f"espeak data path too long for espeak-ng: {self.data_path}")
        rate = self._lib.espeak_Initialize(
            AUDIO_OUTPUT_SYNCHRONOUS, CALLBACK_BUFFER_MS, self.data_path.encode(),
            ESPEAK_INITIALIZE_DONT_EXIT,
        )
        if rate != SAMPLE_RATE:
            raise EspeakError(f"espeak_Initialize({self.data_path}) returned {rate}")
        self.sample_rate = rate
        self.version = (self._lib.espeak_Info(None) or b"?").decode()
        variants_dir = Path(self.data_path) / "voices" / "!v"
        self.variants = frozenset(p.name for p in variants_dir.iterdir())
        self._chunks: list[bytes] = []
        # (type, text position, sample) of each event, while a caller wants them.
        self._events: list[tuple[int, int, int]] | None = None
        self._callback_error: BaseException | None = None
        self._callback = _CALLBACK(self._collect)  # referenced for as long as the library
        self._lib.espeak_SetSynthCallback(self._callback)
        LOG.info("espeak-ng %s from %s (%s), data %s", self.version, library_path, source,
                 self.data_path)

    def _collect(self, wav, count, _events) -> int:
        try:
            if wav and count > 0:
                self._chunks.append(ctypes.string_at(wav, count * 2))
            if self._events is not None and _events:
                events = ctypes.cast(_events, ctypes.POINTER(_Event))
                index = 0
                while events[index].type != EVENT_LIST_TERMINATED:
                    event = events[index]
                    self._events.append((event.type, event.text_position - 1, event.sample))
                    index += 1
            return 0
        except BaseException as exc:  # never let an exception cross into C
            self._callback_error = exc
            return 1  # abort the synthesis

    def has_variant(self, variant: str) -> bool:
        return variant in self.variants

    def synthesize(self, text: str, voice: str, wpm: int) -> np.ndarray:
        """One espeak_Synth call: UTF-8 text -> int16 samples. Serialized by the module lock."""
        return self._synthesize(text, voice, wpm, False)[0]

    def synthesize_words(self, text: str, voice: str, wpm: int
                         ) -> tuple[np.ndarray, list[WordEvent]]:
        """synthesize(), and where each word espeak-ng read starts and ends."""
        audio, events = self._synthesize(text, voice, wpm, True)
        words = []
        for index, (kind, position, sample) in enumerate(events):
            if kind != EVENT_WORD:
                continue
            end = next((s for _, _, s in events[index + 1:] if s > sample), len(audio))
            words.append(WordEvent(position, sample, min(end, len(audio))))
        return audio, words

    def _synthesize(self, text: str, voice: str, wpm: int, with_events: bool
                    ) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
        data = text.encode("utf-8") + b"\0"
        with _LOCK:
            self._events = [] if with_events else None
            self._chunks = []
            self._callback_error = None
            status = self._lib.espeak_SetVoiceByName(voice.encode())
            if status != EE_OK:
                raise EspeakError(f"espeak_SetVoiceByName({voice!r}) returned {status}")
            self._lib.espeak_SetParameter(ESPEAK_RATE, wpm, 0)
            if hasattr(self._lib, "espeak_ng_SetRandSeed"):
                self._lib.espeak_ng_SetRandSeed(1)
            self._libc.srand(1)  # breath noise uses libc rand()
            status = self._lib.espeak_Synth(
                data, len(data), 0, POS_CHARACTER, 0, ESPEAK_CHARS_UTF8 | ESPEAK_ENDPAUSE,
                None, None,
            )
            chunks, self._chunks = self._chunks, []
            events, self._events = self._events or [], None
            if self._callback_error is not None:
                raise EspeakError("espeak synth callback failed") from self._callback_error
            if status != EE_OK:
                raise EspeakError(f"espeak_Synth returned {status}")
        return np.frombuffer(b"".join(chunks), dtype=np.int16).copy(), events


_LOCK = threading.RLock()
_LIBRARY: EspeakLibrary | None = None


def _first_working_library() -> EspeakLibrary:
    failures = []
    for library, data, source in library_candidates():
        try:
            return EspeakLibrary(library, data, source)
        except (EspeakError, OSError) as exc:
            LOG.warning("espeak-ng from %s (%s) unusable: %s", library, source, exc)
            failures.append(f"{source}: {exc}")
    raise EspeakError(
        "no usable espeak-ng library: install the espeakng-loader wheel "
        "(or Debian's libespeak-ng1 and espeak-ng-data)"
        + (f" [{'; '.join(failures)}]" if failures else "")
    )


def get_library(library_path: str | None = None, data_path: str | None = None) -> EspeakLibrary:
    """The process-wide library, initialized on first use.

    From the explicit paths, else from the first of library_candidates() that loads.
    """
    global _LIBRARY
    with _LOCK:
        if _LIBRARY is None:
            if library_path and data_path:
                _LIBRARY = EspeakLibrary(library_path, data_path, "explicit")
            elif library_path or data_path:
                raise EspeakError("give both library_path and data_path, or neither")
            else:
                _LIBRARY = _first_working_library()
        elif library_path and Path(library_path).resolve() != Path(
            _LIBRARY.library_path
        ).resolve():
            raise EspeakError(
                f"espeak-ng already initialized from {_LIBRARY.library_path}; "
                "one process holds one espeak-ng"
            )
        return _LIBRARY


# --- the engine -----------------------------------------------------------------------


class EspeakVoice:
    """One catalog voice on the process's espeak-ng; same shape as inference.voice.Voice."""

    def __init__(self, info: EspeakVoiceInfo, library: EspeakLibrary) -> None:
        self.info = info
        self.name = info.name
        self._library = library
        if info.variant is not None:
            self._check_variant(info.variant)

    @classmethod
    def load(
        cls,
        name: str,
        library_path: str | None = None,
        data_path: str | None = None,
    ) -> EspeakVoice:
        """A catalog voice by public name (VOICES); initializes espeak-ng on first use."""
        info = VOICES.get(name)
        if info is None:
            raise EspeakInputError(f"unknown espeak voice {name!r}; known: {sorted(VOICES)}")
        return cls(info, get_library(library_path, data_path))

    @property
    def sample_rate(self) -> int:
        return self._library.sample_rate

    def _check_variant(self, variant: str) -> None:
        if not _VARIANT_NAME.fullmatch(variant) or not self._library.has_variant(variant):
            raise EspeakInputError(f"unknown espeak voice variant {variant!r}")

    def espeak_name(self, options: _HasSpeed | None = None) -> str:
        """The name given to espeak_SetVoiceByName, e.g. "cmn+f3" or "en-us+tts-steady"."""
        variant = getattr(options, "variant", None)
        if variant is not None:
            self._check_variant(variant)
        variant = variant or self.info.variant or STEADY_VARIANT
        return f"{self.info.espeak_voice}+{variant}"

    def synthesize(self, text: str, options: _HasSpeed | None = None) -> Iterator[np.ndarray]:
        """Yield int16 audio, one array per sentence (see split_sentences); none if silent.

        `options` is an EspeakOptions or anything with a `speed` (like the Piper engine's
        SynthesisOptions; its other fields are ignored).
        """
        wpm = rate_for_speed(getattr(options, "speed", 1.0))
        voice = self.espeak_name(options)
        for piece in split_sentences(text):
            audio = self._library.synthesize(piece, voice, wpm)
            if audio.size:
                yield audio

    def synthesize_unit(self, text: str, options: _HasSpeed | None = None) -> np.ndarray:
        parts = list(self.synthesize(text, options))
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int16)

    def synthesize_timed(self, text: str, options: _HasSpeed | None = None
                         ) -> tuple[np.ndarray, list[WordTiming]]:
        """synthesize_unit's audio and the timing of every word of `text` (word_tokens),
        from espeak-ng's word events."""
        wpm = rate_for_speed(getattr(options, "speed", 1.0))
        voice = self.espeak_name(options)
        tokens = word_tokens(text)
        starts = [start for start, _ in tokens]
        spans: list[tuple[int, int] | None] = [None] * len(tokens)
        pieces = split_sentences(text)
        parts, offset = [], 0
        for piece, index in zip(pieces, locate(pieces, text), strict=True):
            audio, words = self._library.synthesize_words(piece, voice, wpm)
            for word in words:
                char = index[word.position] if 0 <= word.position < len(index) else -1
                token = bisect.bisect_right(starts, char) - 1
                if char < 0 or token < 0 or char >= tokens[token][1]:
                    continue  # a word espeak read from punctuation or a space
                start, end = offset + word.start_sample, offset + word.end_sample
                old = spans[token]
                spans[token] = (start, end) if old is None else (min(old[0], start),
                                                                 max(old[1], end))
            if audio.size:
                parts.append(audio)
                offset += audio.size
        weights = [end - start for start, end in tokens]
        timings = [WordTiming(a, b, s, e)
                   for (a, b), (s, e) in zip(tokens, fill_gaps(spans, weights), strict=True)]
        audio = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int16)
        return audio, timings

    def warm_up(self) -> None:
        text = "人工智能。" if self.info.language.startswith("zh") else WARMUP_TEXT
        self.synthesize_unit(text, EspeakOptions())
