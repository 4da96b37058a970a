"""A small bounded memo of recently parsed request bodies.

A cache hit is a repeated request, and a repeated request is usually the very same bytes
(an announcement, a UI button, a retried call). Parsing it again (JSON, Unicode
normalization, sentence splitting, language detection, voice resolution) costs more than
the rest of a hit, so identical bodies seen recently map straight to their parsed form.
Parsing is a pure function of the body and the static configuration, so the memo can never
serve a stale answer; bodies that fail validation are never stored.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

V = TypeVar("V")


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
