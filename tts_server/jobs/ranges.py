"""HTTP byte ranges (RFC 9110 section 14) for job audio: one range per request.

No Range header, another unit, or several ranges: the whole body (a server may ignore
Range). A bytes range that is malformed or starts past the end: 416.
"""

from __future__ import annotations

from dataclasses import dataclass

from tts_server.errors import quote


class RangeNotSatisfiable(Exception):
    pass


@dataclass(frozen=True)
class ByteRange:
    start: int
    # Inclusive, as in Content-Range.
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start + 1

    def content_range(self, size: int) -> str:
        return f"bytes {self.start}-{self.end}/{size}"


def _number(text: str) -> int:
    text = text.strip()
    if not text.isascii() or not text.isdigit():
        raise RangeNotSatisfiable(f"not a byte position: {quote(text)}")
    return int(text)


def _one(spec: str, size: int) -> ByteRange:
    first, dash, last = spec.strip().partition("-")
    if not dash:
        raise RangeNotSatisfiable(f"not a byte range: {quote(spec)}")
    if not first.strip():  # "-N": the last N bytes
        suffix = _number(last)
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiable("empty suffix range")
        return ByteRange(max(0, size - suffix), size - 1)
    start = _number(first)
    end = _number(last) if last.strip() else size - 1
    if end < start or start >= size:
        raise RangeNotSatisfiable(f"range {spec.strip()} is outside 0-{size - 1}")
    return ByteRange(start, min(end, size - 1))


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """The one range asked for, None for the whole body; RangeNotSatisfiable for 416."""
    if header is None:
        return None
    unit, equals, specs = header.partition("=")
    if unit.strip().lower() != "bytes":
        return None
    if not equals:
        raise RangeNotSatisfiable("Range without '='")
    parts = specs.split(",")
    return _one(parts[0], size) if len(parts) == 1 else None
