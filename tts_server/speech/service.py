"""The speech layer's one entry point: route, key, cache lookup, admission, single flight.

`SpeechService.speak(request, admission)` is what every front (HTTP, OpenAI, warm-up)
calls: the breaker and the degradation ladder pick the engine, the cache answers if it
can, and otherwise the request is admitted and flown.

Identical requests that arrive while one is being synthesized follow the same flight:
each follower gets every chunk as it is produced (so a coalesced stream still streams).
A flight runs as its own task and is cancelled when its last follower leaves, so a
client that hangs up does not leave work behind unless someone else still wants it.

Word timings. A request with `timestamps` needs audio whose units were synthesized with
them: it is answered by a cache entry that holds timings, or by a timed flight (its own
key, so a plain request may follow it, never the other way round). A timed flight places
each unit's words in the request's coordinates (speech/timings.py) and stores them with the
audio; a plain request never computes or stores any.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from inference.timing import WordTiming
from tts_server.cache.tiers import AudioCache, CachedAudio, cache_key
from tts_server.errors import ServiceUnavailable
from tts_server.speech.request import SynthesisRequest
from tts_server.speech.synthesizer import Admission, SynthesisTrace, Synthesizer, UnitAudio
from tts_server.speech.timings import place_unit, unit_maps

LOG = logging.getLogger("tts.speech")
PEER_POLL_S = 0.05
KEY_MEMO_ENTRIES = 4096
TIMED_SUFFIX = "+words"  # the flight (and cross-instance marker) of a timed synthesis

# One chunk's audio and the words heard in it (request coordinates; see speech/timings.py).
Piece = tuple[bytes, tuple[WordTiming, ...]]


class Flight:
    """One synthesis in progress, with any number of followers reading its chunks."""

    def __init__(self, key: str, sample_rate: int, timed: bool = False) -> None:
        self.key = key
        self.sample_rate = sample_rate
        self.timed = timed
        self.chunks: list[bytes] = []
        self.words: list[tuple[WordTiming, ...]] = []  # per chunk, when timed
        self.trace = SynthesisTrace()
        self.origin = "miss"
        self.done = False
        self.error: BaseException | None = None
        self.task: asyncio.Task[None] | None = None
        self.followers = 0
        self.holds_marker = False
        self._changed = asyncio.Event()

    def push(self, chunk: bytes, words: tuple[WordTiming, ...] = ()) -> None:
        self.chunks.append(chunk)
        self.words.append(words)
        self._wake()

    def finish(self, error: BaseException | None = None) -> None:
        self.done, self.error = True, error
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def follow(self) -> AsyncIterator[bytes]:
        async for chunk, _ in self.follow_timed():
            yield chunk

    async def follow_timed(self) -> AsyncIterator[Piece]:
        self.followers += 1
        try:
            index = 0
            while True:
                while index < len(self.chunks):
                    index += 1
                    yield self.chunks[index - 1], self.words[index - 1]
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
    # For a request with timestamps (else None): the chunks with their words. A response
    # reads either this or `chunks`, never both.
    pieces: AsyncIterator[Piece] | None = None

    @property
    def cache_status(self) -> str:
        """hit-l1 | hit-l2 | miss | coalesced; final once the first chunk has arrived."""
        if self._flight is not None and self._status == "miss":
            return self._flight.origin
        return self._status


async def _one_chunk(pcm: bytes) -> AsyncIterator[bytes]:
    yield pcm


async def _one_piece(pcm: bytes, words: tuple[WordTiming, ...]) -> AsyncIterator[Piece]:
    yield pcm, words


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
        timed = request.timestamps
        if self.cache is not None:
            audio, status = await self.cache.lookup(key)
            if audio is not None and timed and audio.words is not None:
                trace = SynthesisTrace(estimated_timings=audio.estimated)
                return Speech(request, audio.sample_rate, _one_chunk(audio.pcm), trace,
                              status, pieces=_one_piece(audio.pcm, audio.words))
            if audio is not None and not timed:
                return Speech(request, audio.sample_rate, _one_chunk(audio.pcm),
                              SynthesisTrace(), status)
        flight = self._flights.get(key + TIMED_SUFFIX)
        if flight is None and not timed:
            flight = self._flights.get(key)
        if flight is not None:
            if self.cache is not None:
                self.cache.coalesced += 1
            return self._seat(request, rate, flight, "coalesced")
        if level.sheds(admission.priority):
            raise ServiceUnavailable("shedding load: only cached audio is served now",
                                     code="shedding", retry_after_s=self.synthesizer.retry_after_s)
        self.synthesizer.admit(request, admission)
        flight = self._start_flight(request, key, admission.priority)
        return self._seat(request, rate, flight, "miss")

    @staticmethod
    def _seat(request: SynthesisRequest, rate: int, flight: Flight, status: str) -> Speech:
        pieces = flight.follow_timed() if request.timestamps else None
        return Speech(request, rate, flight.follow(), flight.trace, status, flight, pieces)

    def _start_flight(self, request: SynthesisRequest, key: str, priority: int) -> Flight:
        flight = Flight(key, request.voice.sample_rate, request.timestamps)
        self._flights[self._flight_key(flight)] = flight
        flight.task = asyncio.get_running_loop().create_task(self._fly(flight, request, priority))
        return flight

    @staticmethod
    def _flight_key(flight: Flight) -> str:
        return flight.key + TIMED_SUFFIX if flight.timed else flight.key

    async def _fly(self, flight: Flight, request: SynthesisRequest, priority: int) -> None:
        l2_write: asyncio.Task[None] | None = None
        try:
            if not await self._peer_delivered(flight):
                placer = _WordPlacer(request) if flight.timed else None
                async for unit in self.synthesizer.stream(request, flight.trace, priority):
                    words = placer.place(unit) if placer is not None else ()
                    flight.push(unit.pcm, words)
                if self.cache is not None and not flight.trace.degraded:
                    words = tuple(w for chunk in flight.words for w in chunk) if placer else None
                    value = CachedAudio(flight.sample_rate, b"".join(flight.chunks), words,
                                        flight.trace.estimated_timings)
                    l2_write = self.cache.store(flight.key, value)
            flight.finish()
        except asyncio.CancelledError:
            flight.finish(asyncio.CancelledError())
            raise
        except Exception as exc:
            flight.finish(exc)
        finally:
            self._flights.pop(self._flight_key(flight), None)
            if flight.holds_marker:  # a peer's marker is the peer's to release
                if l2_write is not None:
                    # Peers waiting on the marker read L2 next: the value must be there
                    # first (the write is bounded by cache.redis_timeout_ms).
                    await asyncio.wait({l2_write})
                await self._release_marker(flight)

    async def _peer_delivered(self, flight: Flight) -> bool:
        """Across instances: if another instance holds the marker, wait for its L2 value."""
        l2 = self.cache.l2 if self.cache is not None else None
        if l2 is None or self.cross_instance_wait_s <= 0:
            return False
        ttl_ms = int(self.cross_instance_wait_s * 1000)
        if await l2.claim(self._flight_key(flight) + ":inflight", ttl_ms):
            flight.holds_marker = True
            return False
        deadline = asyncio.get_running_loop().time() + self.cross_instance_wait_s
        while asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(PEER_POLL_S)
            audio = await l2.get(flight.key)
            if audio is not None and (audio.words is not None or not flight.timed):
                flight.origin = "coalesced"
                flight.push(audio.pcm, audio.words or ())
                return True
        return False

    async def _release_marker(self, flight: Flight) -> None:
        l2 = self.cache.l2 if self.cache is not None else None
        if l2 is not None and self.cross_instance_wait_s > 0:
            await l2.release(self._flight_key(flight) + ":inflight")


class _WordPlacer:
    """Puts each unit's words, in order, into the request's coordinates."""

    def __init__(self, request: SynthesisRequest) -> None:
        self.maps = iter(unit_maps(request.text, request.units))
        self.samples = 0

    def place(self, unit: UnitAudio) -> tuple[WordTiming, ...]:
        words = place_unit(unit.words, next(self.maps, []), self.samples)
        self.samples += len(unit.pcm) // 2
        return words
