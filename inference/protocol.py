"""Wire protocol between the front and the inference workers: the one module both import.

Transport: each worker has a Unix stream socket to the front carrying a stream of msgpack
maps (self-delimiting, so no extra framing), and one shared-memory slab the front creates
and owns. A worker runs one unit at a time and writes that unit's audio at offset 0 of its
slab as little-endian int16 mono PCM; the reply carries only the sample count. The front
copies the samples out before it sends the worker its next unit, so the slab needs no lock.

Word timings travel in the reply, only when the work asked for them (`timings`): per word
(start_char, end_char, start_sample, end_sample) in the unit's text and audio
(inference/timing.py).

A batch (`SynthesizeBatch`, only when the worker was spawned with `max_batch` > 1) is one
unit of work too: several texts of one voice and one setting, synthesized together, their
audio written to the slab one after another; `BatchDone` lists each text's sample count.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import msgpack

from .options import ThreadPlan

PROTOCOL_VERSION = 3  # 2: one work_id names a unit or a batch; 3: word timings
SAMPLE_DTYPE = "<i2"
SAMPLE_WIDTH_BYTES = 2
SHM_NAME_PREFIX = "tts-"
READ_CHUNK_BYTES = 64 * 1024


def slab_name(front_pid: int, pool_name: str, worker_index: int) -> str:
    """Name of a worker's shared-memory slab; the front's pid keeps servers apart."""
    return f"{SHM_NAME_PREFIX}{front_pid}-{pool_name}-w{worker_index}"


def slab_front_pid(name: str) -> int | None:
    """The front pid in a slab_name(), or None for any other name."""
    if not name.startswith(SHM_NAME_PREFIX):
        return None
    pid, _, rest = name[len(SHM_NAME_PREFIX):].partition("-")
    return int(pid) if pid.isdigit() and rest.rpartition("-w")[2].isdigit() else None


@dataclass(frozen=True)
class VoiceFiles:
    """Where one voice lives on disk; names are registry keys, never paths from clients."""

    name: str
    model_path: str
    config_path: str
    # "piper" (an ONNX model and its config), "espeak" (name from the espeak catalog) or
    # "fastspeech2" (model_path: the acoustic ONNX, config_path: the build's manifest.json;
    # see inference.mandarin.models).
    engine: str = "piper"


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker process needs, passed once when it is spawned."""

    index: int
    slab_name: str
    slab_bytes: int
    voices: tuple[VoiceFiles, ...]
    # Session threads; threads.solo_threads > 1 adds a wide second ("solo") session.
    threads: ThreadPlan
    noise_scale: float | None
    noise_w_scale: float | None
    # Sentences per padded session.run of the batch engine; 0 = batching off (piper voices
    # then load no batch engine and the worker refuses SynthesizeBatch).
    max_batch: int = 0
    # The front's logging, applied in the worker before anything logs.
    log_level: str = "INFO"
    log_format: str = "auto"


class Message:
    """Base of every message; subclasses are frozen dataclasses with a `kind` tag."""

    kind: ClassVar[str]

    def encode(self) -> bytes:
        body = dataclasses.asdict(self)  # type: ignore[call-overload]
        body["kind"] = self.kind
        body["version"] = PROTOCOL_VERSION
        return msgpack.packb(body, use_bin_type=True)


@dataclass(frozen=True)
class SynthesizeUnit(Message):
    """Front -> worker: synthesize one sentence unit into the slab."""

    kind: ClassVar[str] = "synthesize"
    work_id: int
    voice: str
    text: str
    speed: float = 1.0
    speaker_id: int | None = None
    # Run on the multi-threaded solo session: the pool has no other work.
    solo: bool = False
    # Reply with the timing of every word (UnitDone.words).
    timings: bool = False


@dataclass(frozen=True)
class SynthesizeBatch(Message):
    """Front -> worker: synthesize several texts of one voice and setting in padded batches,
    write their audio to the slab one after another (text order) and answer BatchDone."""

    kind: ClassVar[str] = "synthesize_batch"
    work_id: int
    voice: str
    texts: tuple[str, ...]
    speed: float = 1.0
    speaker_id: int | None = None
    timings: bool = False


# What the front sends a worker to synthesize: one unit, or a batch of them.
Work = SynthesizeUnit | SynthesizeBatch


@dataclass(frozen=True)
class Stop(Message):
    """Front -> worker: finish nothing more, exit cleanly."""

    kind: ClassVar[str] = "stop"


@dataclass(frozen=True)
class Ready(Message):
    """Worker -> front: every voice is loaded and warmed up."""

    kind: ClassVar[str] = "ready"
    pid: int
    voices: tuple[str, ...]
    # CPU seconds this worker process has used so far (all threads).
    process_cpu_s: float = 0.0


@dataclass(frozen=True)
class UnitDone(Message):
    """Worker -> front: `samples` int16 samples wait at offset 0 of the slab."""

    kind: ClassVar[str] = "unit_done"
    work_id: int
    samples: int
    sample_rate: int
    synthesis_ms: float
    # CPU seconds this worker process has used so far: the front's per-process metric.
    process_cpu_s: float = 0.0
    # With timings asked: (start_char, end_char, start_sample, end_sample) per word.
    words: tuple[tuple[int, int, int, int], ...] = ()


@dataclass(frozen=True)
class BatchDone(Message):
    """Worker -> front: the batch's audio waits in the slab from offset 0, text after text;
    text i has samples[i] int16 samples. synthesis_ms covers the whole batch."""

    kind: ClassVar[str] = "batch_done"
    work_id: int
    samples: tuple[int, ...]
    sample_rate: int
    synthesis_ms: float
    process_cpu_s: float = 0.0
    # With timings asked: each text's words, as UnitDone.words.
    words: tuple[tuple[tuple[int, int, int, int], ...], ...] = ()


@dataclass(frozen=True)
class UnitFailed(Message):
    """Worker -> front: the work item (a unit or a batch, by work_id) cannot be
    synthesized; `code` is stable, message human."""

    kind: ClassVar[str] = "unit_failed"
    work_id: int
    code: str
    message: str


@dataclass(frozen=True)
class Fatal(Message):
    """Worker -> front: the worker cannot start (for example a model that will not load)."""

    kind: ClassVar[str] = "fatal"
    message: str


# Stable failure codes a worker may report.
FAIL_BAD_INPUT = "bad_input"
FAIL_AUDIO_TOO_LONG = "audio_too_long"
FAIL_ENGINE = "engine_error"

_MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.kind: cls
    for cls in (SynthesizeUnit, SynthesizeBatch, Stop, Ready, UnitDone, BatchDone, UnitFailed,
                Fatal)
}


class ProtocolError(RuntimeError):
    """A peer sent something that is not a message of this protocol version."""


def decode(body: Any) -> Message:
    if not isinstance(body, dict):
        raise ProtocolError(f"expected a map, got {type(body).__name__}")
    if body.pop("version", None) != PROTOCOL_VERSION:
        raise ProtocolError("protocol version mismatch")
    cls = _MESSAGE_TYPES.get(body.pop("kind", None))
    if cls is None:
        raise ProtocolError("unknown message kind")
    # msgpack arrays come back as lists; every sequence field of a message is a tuple.
    body = {k: tuple(v) if isinstance(v, list) else v for k, v in body.items()}
    return cls(**body)


class MessageReader:
    """Incremental decoder: feed bytes as they arrive, take whole messages out."""

    def __init__(self) -> None:
        self._unpacker = msgpack.Unpacker(raw=False, max_buffer_size=16 * 1024 * 1024)

    def feed(self, data: bytes) -> list[Message]:
        self._unpacker.feed(data)
        return [decode(body) for body in self._unpacker]
