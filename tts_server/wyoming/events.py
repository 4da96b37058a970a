"""Wyoming event framing: a JSON header line, then optional data and payload bytes.

A header is `{"type", "version", "data"?, "data_length"?, "payload_length"?}` and a newline;
`data_length` bytes of JSON follow (merged into `data`), then `payload_length` bytes of
payload. Everything a client sends is bounded before it is read.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from tts_server.errors import TTSError

# The protocol revision these events follow (streaming synthesis is part of it).
PROTOCOL_VERSION = "1.8.0"


class ProtocolError(Exception):
    """The byte stream is not Wyoming, or is over a limit: framing is lost, so the
    connection gets an error event and is closed."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


@dataclass
class Event:
    type: str
    data: dict[str, Any] = field(default_factory=dict)
    payload: bytes = b""


@dataclass(frozen=True)
class Limits:
    max_event_bytes: int
    max_payload_bytes: int


def _length(header: dict[str, Any], key: str, limit: int) -> int:
    value = header.get(key)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ProtocolError(f"{key} must be a non-negative integer", "invalid_event")
    if value > limit:
        raise ProtocolError(f"{key} {value} is over the limit of {limit} bytes",
                            "event_too_large")
    return value


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise ProtocolError(f"the event {what} is not JSON", "invalid_json") from None
    if not isinstance(value, dict):
        raise ProtocolError(f"the event {what} must be a JSON object", "invalid_event")
    return value


async def read_event(reader: asyncio.StreamReader, limits: Limits) -> Event | None:
    """The next event, or None at a clean end of stream (EOF between events)."""
    try:
        line = await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial.strip():
            return None
        raise ProtocolError("the connection ended inside an event header",
                            "truncated_event") from None
    except asyncio.LimitOverrunError:
        raise ProtocolError(f"an event header is over {limits.max_event_bytes} bytes",
                            "event_too_large") from None
    header = _json_object(line, "header")
    kind = header.get("type")
    if not isinstance(kind, str) or not kind:
        raise ProtocolError("an event needs a string 'type'", "invalid_event")
    data = header.get("data") or {}
    if not isinstance(data, dict):
        raise ProtocolError("an event's 'data' must be an object", "invalid_event")
    data_length = _length(header, "data_length", limits.max_event_bytes)
    payload_length = _length(header, "payload_length", limits.max_payload_bytes)
    try:
        if data_length:
            data = {**data, **_json_object(await reader.readexactly(data_length), "data")}
        payload = await reader.readexactly(payload_length) if payload_length else b""
    except asyncio.IncompleteReadError:
        raise ProtocolError("the connection ended inside an event", "truncated_event") from None
    return Event(kind, data, payload)


def encode_event(event: Event) -> bytes:
    """Header line, data block and payload, as the wyoming package writes them."""
    header: dict[str, Any] = {"type": event.type, "version": PROTOCOL_VERSION}
    data = json.dumps(event.data, ensure_ascii=False).encode() if event.data else b""
    if data:
        header["data_length"] = len(data)
    if event.payload:
        header["payload_length"] = len(event.payload)
    return json.dumps(header, ensure_ascii=False).encode() + b"\n" + data + (event.payload or b"")


class SlowReader(TTSError):
    """The client took none of its audio for the write timeout."""

    status = 408
    code = "slow_reader"


class EventWriter:
    """Writes events in one order from any task; waits for the socket, within a timeout."""

    def __init__(self, writer: asyncio.StreamWriter, timeout_s: float) -> None:
        self.writer = writer
        self.timeout_s = timeout_s
        self._lock = asyncio.Lock()

    async def send(self, kind: str, data: dict[str, Any] | None = None,
                   payload: bytes = b"") -> None:
        async with self._lock:
            self.writer.write(encode_event(Event(kind, data or {}, payload)))
            try:
                await asyncio.wait_for(self.writer.drain(), self.timeout_s)
            except TimeoutError:
                raise SlowReader(f"the client read nothing for {self.timeout_s:g} s") from None

    def send_now(self, kind: str, data: dict[str, Any]) -> None:
        """Queue an event without waiting (a last error before closing)."""
        if not self.writer.is_closing():
            self.writer.write(encode_event(Event(kind, data)))
