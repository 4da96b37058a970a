"""Two-tier audio cache: an in-process LRU bounded by bytes, then Redis; Redis fails open.

Values are canonical audio (int16 PCM + sample rate, msgpack), so any output format can
be produced from a hit. Redis errors, timeouts and garbage are counted and treated as a
miss; after a failure Redis is skipped for a backoff period that doubles up to a limit.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import msgpack
import redis.asyncio as aioredis
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from inference.timing import WordTiming

LOG = logging.getLogger("tts.cache")
VALUE_VERSION = 1
MIN_BACKOFF_S = 0.25


@dataclass(frozen=True)
class CachedAudio:
    sample_rate: int
    pcm: bytes
    # Word timings (start_char, end_char, start_sample, end_sample) in the request's
    # normalized text and this audio, when the synthesis computed them; None: it did not.
    words: tuple[WordTiming, ...] | None = None
    # The words are estimates (their engine gives no timings: a remote one).
    estimated: bool = False

    def encode(self) -> bytes:
        body: dict[str, Any] = {"v": VALUE_VERSION, "sample_rate": self.sample_rate,
                                "pcm": self.pcm}
        if self.words is not None:
            body["words"] = [list(word) for word in self.words]
            body["estimated"] = self.estimated
        return msgpack.packb(body, use_bin_type=True)

    @classmethod
    def decode(cls, data: bytes) -> CachedAudio:
        """Raise ValueError on anything that is not a value this version wrote."""
        try:
            body = msgpack.unpackb(data, raw=False)
        except Exception as exc:
            raise ValueError("not msgpack") from exc
        valid = (
            isinstance(body, dict)
            and body.get("v") == VALUE_VERSION
            and isinstance(body.get("sample_rate"), int)
            and isinstance(body.get("pcm"), bytes)
            and len(body["pcm"]) % 2 == 0
        )
        if not valid:
            raise ValueError("not a cached audio value")
        return cls(body["sample_rate"], body["pcm"], _decode_words(body.get("words")),
                   body.get("estimated") is True)


def _decode_words(raw: Any) -> tuple[WordTiming, ...] | None:
    """Values written before timings existed have none; anything else malformed is garbage."""
    if raw is None:
        return None
    if not isinstance(raw, list) or not all(
        isinstance(w, list) and len(w) == 4 and all(type(x) is int for x in w) for w in raw
    ):
        raise ValueError("malformed word timings")
    return tuple(WordTiming(*w) for w in raw)


def cache_key(namespace: str, identity: dict[str, Any]) -> str:
    """SHA-256 over everything that changes the sound, under a versioned namespace."""
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return f"{namespace}:audio:{hashlib.sha256(canonical.encode()).hexdigest()}"


@dataclass
class TierStats:
    hits: int = 0
    misses: int = 0
    stores: int = 0
    evictions: int = 0
    errors: int = 0
    timeouts: int = 0  # L2 calls slower than redis_timeout_ms (also counted in errors)


class MemoryLRU:
    """L1: least-recently-used entries go first once the byte budget is exceeded."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.stats = TierStats()
        self._entries: collections.OrderedDict[str, CachedAudio] = collections.OrderedDict()

    def get(self, key: str) -> CachedAudio | None:
        entry = self._entries.get(key)
        if entry is None:
            self.stats.misses += 1
            return None
        self._entries.move_to_end(key)
        self.stats.hits += 1
        return entry

    def put(self, key: str, audio: CachedAudio) -> None:
        if len(audio.pcm) > self.max_bytes:
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self.bytes -= len(old.pcm)
        self._entries[key] = audio
        self.bytes += len(audio.pcm)
        self.stats.stores += 1
        while self.bytes > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self.bytes -= len(evicted.pcm)
            self.stats.evictions += 1

    def snapshot(self) -> dict[str, int]:
        return {**vars(self.stats), "bytes": self.bytes, "entries": len(self._entries),
                "max_bytes": self.max_bytes}


@dataclass
class RedisTier:
    """L2 through redis.asyncio; every call bounded by timeout_s, every failure a miss.

    A refused or broken connection puts Redis in backoff at once. A timeout only does after
    `timeouts_before_backoff` in a row: an event loop saturated by hits answers Redis late
    too, and skipping L2 then would turn cheap hits into syntheses and saturate it more.
    """

    client: aioredis.Redis
    ttl_s: int
    timeout_s: float
    backoff_max_s: float
    timeouts_before_backoff: int = 3
    stats: TierStats = field(default_factory=TierStats)
    _skip_until: float = 0.0
    _backoff_s: float = 0.0
    _timeouts_in_a_row: int = 0

    @classmethod
    def from_url(cls, url: str, ttl_s: int, timeout_s: float, backoff_max_s: float,
                 tls_ca_file: str = "", timeouts_before_backoff: int = 3) -> RedisTier:
        options: dict[str, Any] = {"socket_timeout": timeout_s,
                                   "socket_connect_timeout": timeout_s}
        if tls_ca_file:
            options["ssl_ca_certs"] = tls_ca_file
        client = aioredis.Redis.from_url(url, **options)
        return cls(client, ttl_s, timeout_s, backoff_max_s, timeouts_before_backoff)

    @property
    def available(self) -> bool:
        return time.monotonic() >= self._skip_until

    async def _call(self, operation: str, *args: Any) -> Any:
        if not self.available:
            raise ConnectionError("redis in backoff")
        try:
            async with asyncio.timeout(self.timeout_s):  # no extra task, unlike wait_for
                result = await self.client.execute_command(operation, *args)
        except (RedisError, OSError, TimeoutError) as exc:
            self._record_failure(exc)
            raise ConnectionError(str(exc)) from exc
        self._backoff_s = 0.0
        self._timeouts_in_a_row = 0
        return result

    def _record_failure(self, exc: BaseException) -> None:
        self.stats.errors += 1
        if isinstance(exc, TimeoutError | RedisTimeoutError):
            self.stats.timeouts += 1
            self._timeouts_in_a_row += 1
            if self._timeouts_in_a_row < self.timeouts_before_backoff:
                return
        self._timeouts_in_a_row = 0
        self._backoff_s = min(max(self._backoff_s * 2, MIN_BACKOFF_S), self.backoff_max_s)
        self._skip_until = time.monotonic() + self._backoff_s
        LOG.warning("redis unavailable (%s: %s); retrying in %.2fs",
                    type(exc).__name__, exc, self._backoff_s)

    async def get(self, key: str) -> CachedAudio | None:
        try:
            data = await self._call("GET", key)
        except ConnectionError:
            return None
        if data is None:
            self.stats.misses += 1
            return None
        try:
            audio = CachedAudio.decode(data)
        except ValueError:
            self.stats.errors += 1
            LOG.warning("redis returned garbage for %s: ignored", key)
            return None
        self.stats.hits += 1
        return audio

    async def put(self, key: str, audio: CachedAudio) -> None:
        try:
            await self._call("SET", key, audio.encode(), "EX", self.ttl_s)
            self.stats.stores += 1
        except ConnectionError:
            pass

    async def claim(self, marker: str, ttl_ms: int) -> bool:
        """SET NX on a marker: True when this instance should synthesize (or Redis is down)."""
        try:
            return bool(await self._call("SET", marker, b"1", "NX", "PX", ttl_ms))
        except ConnectionError:
            return True

    async def release(self, marker: str) -> None:
        try:
            await self._call("DEL", marker)
        except ConnectionError:
            pass

    def recovered(self) -> None:
        """Redis answers again (its watcher saw it): stop skipping it now, not after the
        backoff, which may have grown to redis_backoff_max_s during the outage."""
        self._skip_until = 0.0
        self._backoff_s = 0.0
        self._timeouts_in_a_row = 0

    def snapshot(self) -> dict[str, Any]:
        return {**vars(self.stats), "available": self.available}

    async def close(self) -> None:
        await self.client.aclose()


class AudioCache:
    """L1 then L2 on lookup; a store fills L1 now and L2 in the background."""

    def __init__(self, l1: MemoryLRU, l2: RedisTier | None, max_entry_bytes: int) -> None:
        self.l1 = l1
        self.l2 = l2
        self.max_entry_bytes = max_entry_bytes
        self.coalesced = 0
        self._writes: set[asyncio.Task[None]] = set()

    async def lookup(self, key: str) -> tuple[CachedAudio | None, str]:
        audio = self.l1.get(key)
        if audio is not None:
            return audio, "hit-l1"
        if self.l2 is not None:
            audio = await self.l2.get(key)
            if audio is not None:
                self.l1.put(key, audio)
                return audio, "hit-l2"
        return None, "miss"

    def store(self, key: str, audio: CachedAudio) -> asyncio.Task[None] | None:
        """Into L1 now; into L2 in the background (the returned task, if any)."""
        if len(audio.pcm) > self.max_entry_bytes:
            return None
        self.l1.put(key, audio)
        if self.l2 is None:
            return None
        task = asyncio.get_running_loop().create_task(self.l2.put(key, audio))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)
        return task

    def snapshot(self) -> dict[str, Any]:
        return {
            "l1": self.l1.snapshot(),
            "l2": self.l2.snapshot() if self.l2 is not None else None,
            "coalesced": self.coalesced,
        }

    async def close(self) -> None:
        if self._writes:
            await asyncio.wait(self._writes, timeout=1.0)
        if self.l2 is not None:
            await self.l2.close()
