"""Request bodies: read within a limit, decoded as JSON, and parsed at most once.

One reader for /api/tts, /v1/audio/speech and the job API: 415 for another content type,
413 past the route's byte limit, 400 for anything that is not JSON (including JSON nested
too deep or with integers too long to convert).

Recently parsed identical bodies are remembered (ParsedBodies). A cache hit is a repeated
request, and a repeated request is usually the very same bytes
(an announcement, a UI button, a retried call). Parsing it again (JSON, Unicode
normalization, sentence splitting, language detection, voice resolution) costs more than
the rest of a hit, so identical bodies seen recently map straight to their parsed form.
Parsing is a pure function of the body and the static configuration, so the memo can never
serve a stale answer; bodies that fail validation are never stored.
"""

from __future__ import annotations

import asyncio
import collections
import json
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

from aiohttp import web

from tts_server import keys
from tts_server.config import Settings
from tts_server.errors import (
    BadRequest,
    PayloadTooLarge,
    RequestTimeout,
    UnsupportedMediaType,
    quote,
)
from tts_server.speech.voices import VoiceRegistry

V = TypeVar("V")
T = TypeVar("T")
JSON_TYPES = frozenset({"application/json"})
READ_CHUNK_BYTES = 1 << 16


class ParsedBodies(Generic[V]):
    """LRU of (route, body bytes) -> parsed value, bounded by entries and by body size."""

    def __init__(self, max_entries: int, max_body_bytes: int) -> None:
        self.max_entries = max_entries
        self.max_body_bytes = max_body_bytes
        self._entries: collections.OrderedDict[tuple[Hashable, bytes], V] = (
            collections.OrderedDict()
        )
        self.hits = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get_or_parse(self, route: Hashable, body: bytes, parse: Callable[[bytes], V]) -> V:
        if self.max_entries <= 0 or len(body) > self.max_body_bytes:
            return parse(body)
        key = (route, body)
        found = self._entries.get(key)
        if found is not None:
            self._entries.move_to_end(key)
            self.hits += 1
            return found
        value = parse(body)  # raises on invalid input: nothing is stored
        self._entries[key] = value
        if len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return value


async def read_body(request: web.Request, limit: int) -> bytes:
    """The raw JSON body, with 415/413 for the wrong type or size (read in chunks, so a
    route may allow more than the app's client_max_size)."""
    if request.content_type not in JSON_TYPES:
        raise UnsupportedMediaType(
            f"Content-Type must be application/json, got {quote(request.content_type)}",
            code="unsupported_media_type",
        )
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"body exceeds {limit} bytes", code="body_too_large")
    timeout_s = request.app[keys.SETTINGS].server.body_timeout_s
    raw = bytearray()
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.content.iter_chunked(READ_CHUNK_BYTES):
                raw += chunk
                if len(raw) > limit:
                    raise PayloadTooLarge(f"body exceeds {limit} bytes", code="body_too_large")
    except TimeoutError:
        request[keys.CLOSE_AFTER] = True  # the rest of the body is never read
        raise RequestTimeout(f"request body not received within {timeout_s:g} s",
                             code="body_timeout") from None
    return bytes(raw)


def decode_json(raw: bytes) -> Any:
    """json.loads, with every way it can refuse a body as 400 invalid_json."""
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"invalid JSON: {exc}", code="invalid_json") from None
    except RecursionError:
        raise BadRequest("invalid JSON: nested too deeply", code="invalid_json") from None
    except ValueError as exc:  # e.g. an integer past sys.get_int_max_str_digits()
        raise BadRequest(f"invalid JSON: {str(exc)[:100]}", code="invalid_json") from None


async def parse_body(
    request: web.Request, parser: Callable[[Any, VoiceRegistry, Settings], T]
) -> T:
    """The body through `parser`, or the parse of the same bytes seen moments ago:
    parsing depends only on the body and the static configuration."""
    app = request.app
    raw = await read_body(request, app[keys.SETTINGS].server.max_body_bytes)

    def parse(body: bytes) -> T:
        return parser(decode_json(body), app[keys.REGISTRY], app[keys.SETTINGS])

    return app[PARSED_BODIES].get_or_parse(parser, raw, parse)


# Declared here, beside its class: keys.py stays below the HTTP layer.
PARSED_BODIES = web.AppKey("parsed_bodies", ParsedBodies)
