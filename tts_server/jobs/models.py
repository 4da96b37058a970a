"""The job record every store keeps, its flat string form, and the JSON clients see.

A job is stored as a flat mapping of strings (a Redis hash, or a dict in memory); the
sentence units live beside it, and timestamps are integer milliseconds since the epoch.
"""

from __future__ import annotations

import datetime
import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass, fields

from tts_server.encoding.formats import get_format


class Status(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (Status.DONE, Status.FAILED, Status.CANCELLED)


@dataclass(frozen=True)
class JobSpec:
    """What the client asked for, fixed at submission."""

    owner: str
    units: tuple[str, ...]
    chars: int
    voice: str
    speed: float
    speaker_id: int | None
    # The /api/tts name ("wav", "pcm", ...) and the encoding.FORMATS name it maps to.
    api_format: str
    audio_format: str
    sample_rate: int
    callback_url: str = ""
    idempotency_key: str = ""
    # Hash of the fields above: a reused Idempotency-Key with another body is refused.
    fingerprint: str = ""


@dataclass
class Job:
    """A job as stored: the spec's public fields plus its state (units are kept apart)."""

    id: str
    owner: str
    status: Status
    chars: int
    units_total: int
    voice: str
    speed: float
    speaker_id: int | None
    api_format: str
    audio_format: str
    sample_rate: int
    created_ms: int
    started_ms: int = 0
    finished_ms: int = 0
    expires_ms: int = 0
    units_done: int = 0
    audio_samples: int = 0
    # Every store of a sentence's audio, duplicates included (a redone sentence shows here).
    unit_writes: int = 0
    attempts: int = 0
    cancel_requested: bool = False
    error_code: str = ""
    error_message: str = ""
    result_bytes: int = 0
    callback_url: str = ""
    callback_status: str = ""
    callback_attempts: int = 0
    idempotency_key: str = ""
    fingerprint: str = ""

    # ---- flat string form --------------------------------------------------------------

    def to_fields(self) -> dict[str, str]:
        return {f.name: _flat(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_fields(cls, data: Mapping[str, str]) -> Job:
        kwargs: dict[str, object] = {}
        for f in fields(cls):
            if f.name in data:
                kwargs[f.name] = _parse(f.name, data[f.name])
        return cls(**kwargs)  # type: ignore[arg-type]

    @classmethod
    def new(cls, job_id: str, spec: JobSpec, now_ms: int) -> Job:
        return cls(
            id=job_id, owner=spec.owner, status=Status.QUEUED, chars=spec.chars,
            units_total=len(spec.units), voice=spec.voice, speed=spec.speed,
            speaker_id=spec.speaker_id, api_format=spec.api_format,
            audio_format=spec.audio_format, sample_rate=spec.sample_rate, created_ms=now_ms,
            callback_url=spec.callback_url,
            callback_status="pending" if spec.callback_url else "",
            idempotency_key=spec.idempotency_key, fingerprint=spec.fingerprint,
        )

    # ---- what clients see --------------------------------------------------------------

    @property
    def audio_seconds(self) -> float:
        return self.audio_samples / self.sample_rate if self.sample_rate else 0.0

    def public(self, base_path: str) -> dict[str, object]:
        status_url = f"{base_path}/{self.id}"
        body: dict[str, object] = {
            "job_id": self.id,
            "status": self.status.value,
            "status_url": status_url,
            "audio_url": f"{status_url}/audio" if self.status is Status.DONE else None,
            "voice": self.voice,
            "format": self.api_format,
            "speed": self.speed,
            "characters": self.chars,
            "progress": {
                "sentences_done": self.units_done,
                "sentences_total": self.units_total,
                "audio_seconds": round(self.audio_seconds, 3),
            },
            "created_at": _iso(self.created_ms),
            "started_at": _iso(self.started_ms),
            "finished_at": _iso(self.finished_ms),
            "expires_at": _iso(self.expires_ms),
            "attempts": self.attempts,
            "cancel_requested": self.cancel_requested,
            "error": ({"code": self.error_code, "message": self.error_message}
                      if self.error_code else None),
        }
        if self.status is Status.DONE:
            fmt = get_format(self.audio_format)
            body["audio"] = {"bytes": self.result_bytes, "content_type": fmt.content_type,
                             "duration_s": round(self.audio_seconds, 3)}
        if self.callback_url:
            body["callback"] = {"url": self.callback_url, "status": self.callback_status,
                                "attempts": self.callback_attempts}
        return body


_INT_FIELDS = frozenset(
    f.name for f in fields(Job) if f.type in ("int", "int | None") and f.name != "speaker_id"
)


def _flat(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, enum.Enum):
        return str(value.value)
    return str(value)


def _parse(name: str, raw: str | bytes) -> object:
    text = raw.decode() if isinstance(raw, bytes) else raw
    if name == "status":
        return Status(text)
    if name == "speed":
        return float(text)
    if name == "speaker_id":
        return int(text) if text else None
    if name == "cancel_requested":
        return text == "1"
    if name in _INT_FIELDS:
        return int(text or 0)
    return text


def _iso(ms: int) -> str | None:
    if not ms:
        return None
    moment = datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def encode_units(units: tuple[str, ...] | list[str]) -> str:
    return json.dumps(list(units), ensure_ascii=False)


def decode_units(raw: str | bytes) -> list[str]:
    return list(json.loads(raw))
