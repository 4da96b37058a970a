"""The speech layer's one entry point: route, key, cache lookup, admission, single flight.

`SpeechService.speak(request, admission)` is what every front (HTTP, OpenAI, warm-up)
calls: the breaker and the degradation ladder pick the engine, the cache answers if it
can, and otherwise the request is admitted and flown.

Identical requests that arrive while one is being synthesized follow the same flight:
each follower gets every chunk as it is produced (so a coalesced stream still streams).
A flight runs as its own task and is cancelled when its last follower leaves, so a
client that hangs up does not leave work behind unless someone else still wants it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from tts_server.cache.tiers import AudioCache, CachedAudio, cache_key
from tts_server.errors import ServiceUnavailable
from tts_server.speech.request import SynthesisRequest
from tts_server.speech.synthesizer import Admission, SynthesisTrace, Synthesizer

LOG = logging.getLogger("tts.speech")
PEER_POLL_S = 0.05
KEY_MEMO_ENTRIES = 4096


class Flight:
    """One synthesis in progress, with any number of followers reading its chunks."""

    def __init__(self, key: str, sample_rate: int) -> None:
        self.key = key
        self.sample_rate = sample_rate
        self.chunks: list[bytes] = []
        self.trace = SynthesisTrace()
        self.origin = "miss"
        self.done = False
        self.error: BaseException | None = None
        self.task: asyncio.Task[None] | None = None
        self.followers = 0
        self.holds_marker = False
        self._changed = asyncio.Event()

    def push(self, chunk: bytes) -> None:
        self.chunks.append(chunk)
        self._wake()

    def finish(self, error: BaseException | None = None) -> None:
        self.done, self.error = True, error
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def follow(self) -> AsyncIterator[bytes]:
        self.followers += 1
        try:
            index = 0
            while True:
                while index < len(self.chunks):
                    index += 1
                    yield self.chunks[index - 1]
                if self.done:
                    if self.error is not None:
                        raise self.error
                    return
                await self._changed.wait()
        finally:
            self.followers -= 1
            if self.followers == 0 and not self.done and self.task is not None:
                self.task.cancel()  # nobody wants this audio any more


@dataclass
class Speech:
    """The audio for one request: where it comes from, and its chunks in order."""

    # The request as routed: its voice is the one that speaks (maybe the fallback).
    request: SynthesisRequest
    sample_rate: int
    chunks: AsyncIterator[bytes]
    trace: SynthesisTrace
    _status: str = "miss"
    _flight: Flight | None = None

    @property
    def cache_status(self) -> str:
        """hit-l1 | hit-l2 | miss | coalesced; final once the first chunk has arrived."""
        if self._flight is not None and self._status == "miss":
            return self._flight.origin
        return self._status


async def _one_chunk(pcm: bytes) -> AsyncIterator[bytes]:
    yield pcm


class SpeechService:
    def __init__(
        self,
        synthesizer: Synthesizer,
        cache: AudioCache | None,
        identity_extra: dict[str, Any],
        cross_instance_wait_s: float = 0.0,
        namespace: str = "tts:v1",
    ) -> None:
        self.synthesizer = synthesizer
        self.namespace = namespace
        self.cache = cache
        self.identity_extra = identity_extra
        self.cross_instance_wait_s = cross_instance_wait_s
        self._flights: dict[str, Flight] = {}
        # Hashing a canonical JSON per request costs more than the rest of an L1 hit; the
        # key is a pure function of these fields, so recent ones are remembered.
        self._key = functools.lru_cache(maxsize=KEY_MEMO_ENTRIES)(self._compute_key)

    def key_for(self, request: SynthesisRequest) -> str:
        voice = request.voice
        return self._key(self.namespace, request.text, voice.name, voice.model_id, voice.engine,
                         request.speed, request.speaker_id, voice.sample_rate)

    def _compute_key(
        self, namespace: str, text: str, voice: str, model: str, engine: str, speed: float,
        speaker: int | None, sample_rate: int,
    ) -> str:
        identity = {
            "text": text,
            "voice": voice,
            "model": model,
            "engine": engine,
            "speed": speed,
            "speaker": speaker,
            "sample_rate": sample_rate,
            **self.identity_extra,
        }
        return cache_key(namespace, identity)

    async def speak(self, request: SynthesisRequest, admission: Admission | None = None
                    ) -> Speech:
        """A hit, a seat on a flight already in the air, or (if admitted) a new flight."""
        admission = admission or Admission()
        level = admission.level
        request = self.synthesizer.route(request, level.prefers_fallback(admission.priority))
        key = self.key_for(request)
        rate = request.voice.sample_rate
        if self.cache is not None:
            audio, status = await self.cache.lookup(key)
            if audio is not None:
                return Speech(request, audio.sample_rate, _one_chunk(audio.pcm),
                              SynthesisTrace(), status)
        flight = self._flights.get(key)
        if flight is not None:
            if self.cache is not None:
                self.cache.coalesced += 1
            return Speech(request, rate, flight.follow(), flight.trace, "coalesced", flight)
        if level.sheds(admission.priority):
            raise ServiceUnavailable("shedding load: only cached audio is served now",
                                     code="shedding", retry_after_s=self.synthesizer.retry_after_s)
        self.synthesizer.admit(request, admission)
        flight = self._start_flight(request, key, admission.priority)
        return Speech(request, rate, flight.follow(), flight.trace, "miss", flight)

    def _start_flight(self, request: SynthesisRequest, key: str, priority: int) -> Flight:
        flight = Flight(key, request.voice.sample_rate)
        self._flights[key] = flight
        flight.task = asyncio.get_running_loop().create_task(self._fly(flight, request, priority))
        return flight

    async def _fly(self, flight: Flight, request: SynthesisRequest, priority: int) -> None:
        l2_write: asyncio.Task[None] | None = None
        try:
            if not await self._peer_delivered(flight):
                async for pcm in self.synthesizer.stream(request, flight.trace, priority):
                    flight.push(pcm)
                if self.cache is not None and not flight.trace.degraded:
                    l2_write = self.cache.store(flight.key, CachedAudio(flight.sample_rate,
                                                                        b"".join(flight.chunks)))
            flight.finish()
        except asyncio.CancelledError:
            flight.finish(asyncio.CancelledError())
            raise
        except Exception as exc:
            flight.finish(exc)
        finally:
            self._flights.pop(flight.key, None)
            if flight.holds_marker:  # a peer's marker is the peer's to release
                if l2_write is not None:
                    # Peers waiting on the marker read L2 next: the value must be there
                    # first (the write is bounded by cache.redis_timeout_ms).
                    await asyncio.wait({l2_write})
                await self._release_marker(flight.key)

    async def _peer_delivered(self, flight: Flight) -> bool:
        """Across instances: if another instance holds the marker, wait for its L2 value."""
        l2 = self.cache.l2 if self.cache is not None else None
        if l2 is None or self.cross_instance_wait_s <= 0:
            return False
        ttl_ms = int(self.cross_instance_wait_s * 1000)
        if await l2.claim(flight.key + ":inflight", ttl_ms):
            flight.holds_marker = True
            return False
        deadline = asyncio.get_running_loop().time() + self.cross_instance_wait_s
        while asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(PEER_POLL_S)
            audio = await l2.get(flight.key)
            if audio is not None:
                flight.origin = "coalesced"
                flight.push(audio.pcm)
                return True
        return False

    async def _release_marker(self, key: str) -> None:
        l2 = self.cache.l2 if self.cache is not None else None
        if l2 is not None and self.cross_instance_wait_s > 0:
            await l2.release(key + ":inflight")
