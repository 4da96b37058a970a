"""Runs a SynthesisRequest on the engine pools and yields its audio unit by unit, in order.

Admission happens here too: a request whose estimated wait would miss its deadline is
refused at once. An admitted request's characters are reserved in its pool's estimate
until `stream` queues its units (or the task that admitted it ends without that: a client
gone before its flight started, audio a peer instance delivered), so a burst admitted in
one event-loop turn is judged against its own work, not an empty queue. And the estimate
is checked against what happens: each engine's admitted requests' measured time to done
over their estimate (`Lateness`) scales the estimates that follow, so whatever the pool's
model of its queue misses (other work on the machine, a busy event loop) still counts.

A unit the primary engine fails (crashed or stuck worker, engine error, no worker able to
start) is synthesized again by the voice's fallback engine, and the voice's circuit
breaker hears of it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import soxr

from inference import protocol
from inference.mandarin import ENGINE_NAME as MANDARIN_ENGINE
from inference.mandarin import frontend as mandarin_frontend
from inference.pool import (
    InferencePool,
    PoolBusy,
    PoolClosed,
    PoolError,
    PoolUnavailable,
    Reservation,
    UnitRejected,
    UnitResult,
    WorkerCrashed,
)
from inference.timing import WordTiming
from tts_server.batching.pool import BatchingPool
from tts_server.errors import ServiceUnavailable, Unprocessable
from tts_server.resilience.breaker import CircuitBreaker
from tts_server.resilience.state import Level
from tts_server.speech.request import SynthesisRequest
from tts_server.speech.timings import estimated_words
from tts_server.speech.voices import VoiceInfo, VoiceRegistry

CLIENT_FAULTS = (protocol.FAIL_BAD_INPUT, protocol.FAIL_AUDIO_TOO_LONG)
# How the pools' wait estimate is held to account: per engine, a moving ratio of the
# admitted requests' measured time to done over their estimate at admission (both summed,
# so long waits weigh more than short ones), applied to later estimates within these bounds.
LATENESS_EWMA_ALPHA = 0.05
LATENESS_BOUNDS = (0.5, 4.0)
# engine, queue ms, synthesis ms, samples, sample rate, characters: called per unit.
UnitObserver = Callable[[str, float, float, int, int, int], None]


def unit_gap_s(engine: str, text: str) -> float:
    """Silence owed after a unit that ends inside a sentence.

    The Mandarin engine pauses after each clause of a unit but not after the unit's last
    one; a unit that ends at a clause mark (a text's lead clause, text.split_units, or a
    clause of an over-long sentence) gets that clause's pause here, so a text sounds the
    same however it is cut into units. Sentence ends stay as they are (no engine adds a
    pause between sentence units)."""
    if engine != MANDARIN_ENGINE or text[-1:].isalnum():
        return 0.0
    found = mandarin_frontend.clauses(mandarin_frontend.normalize(text))
    pause = found[-1].pause_s if found else 0.0
    return pause if pause < mandarin_frontend.PAUSE_SENTENCE_S else 0.0


def silence(seconds: float, sample_rate: int) -> bytes:
    """int16 zeros, rounded as the engines round their own pauses."""
    return bytes(round(seconds * sample_rate) * protocol.SAMPLE_WIDTH_BYTES)


def _chain(source: asyncio.Future[UnitResult], target: asyncio.Future[UnitResult]) -> None:
    """target follows source's outcome; target cancelled cancels source."""

    def settle(_: object) -> None:
        if target.done():
            return
        if source.cancelled():
            target.cancel()
        elif source.exception() is not None:
            target.set_exception(source.exception())
        else:
            target.set_result(source.result())

    source.add_done_callback(settle)
    target.add_done_callback(lambda _: target.cancelled() and source.cancel())


class EngineFailure(Exception):
    """The engine, not the request, is at fault: the fallback engine gets the unit."""

    def __init__(self, message: str, counts: bool = True) -> None:
        super().__init__(message)
        # False: the engine never tried the unit (a remote pool skipped it), so the breaker
        # does not count it.
        self.counts = counts


@dataclass(frozen=True)
class Admission:
    """How a request is scheduled: its priority lane and the latency it can accept."""

    priority: int = 1
    deadline_s: float = 30.0
    # The degradation ladder's level when the request arrived (Level says what it does).
    level: Level = Level.NORMAL


@dataclass
class SynthesisTrace:
    """Timings of one request, for Server-Timing and the access log."""

    started: float = field(default_factory=time.monotonic)
    first_audio_ms: float | None = None
    queue_ms: float = 0.0
    synthesis_ms: float = 0.0
    audio_bytes: int = 0
    # The engine of the first unit (what X-Engine reports); None until then.
    engine: str | None = None
    # Some unit came from the fallback engine: the result is not cached as the voice's.
    degraded: bool = False
    # Some unit's word timings are estimates (its engine gives none: a remote one).
    estimated_timings: bool = False

    def add(self, result: UnitResult, engine: str) -> None:
        if self.first_audio_ms is None:
            self.first_audio_ms = (time.monotonic() - self.started) * 1000
            self.queue_ms = result.queue_ms
            self.engine = engine
        self.synthesis_ms += result.synthesis_ms
        self.audio_bytes += len(result.pcm)


@dataclass(frozen=True)
class UnitAudio:
    """One unit's audio at the voice's rate and, when the request asked, its words
    (in the unit's text and audio: inference/timing.WordTiming)."""

    pcm: bytes
    words: tuple[WordTiming, ...] = ()


@dataclass(eq=False)
class _Admitted:
    """An admitted request until its units are queued: its reservation in the pool's
    estimate, and what the estimate said (checked against what happened)."""

    request: SynthesisRequest
    reservation: Reservation
    estimate_s: float
    at: float = field(default_factory=time.monotonic)


class Lateness:
    """EWMA of measured over estimated time to done, for one engine's admissions."""

    def __init__(self) -> None:
        self._measured = 0.0
        self._estimated = 0.0
        self.samples = 0

    @property
    def factor(self) -> float:
        if self._estimated <= 0:
            return 1.0
        low, high = LATENESS_BOUNDS
        return min(high, max(low, self._measured / self._estimated))

    def observe(self, estimated_s: float, measured_s: float) -> None:
        self.samples += 1
        alpha = max(LATENESS_EWMA_ALPHA, 1.0 / self.samples)
        self._measured += alpha * (measured_s - self._measured)
        self._estimated += alpha * (estimated_s - self._estimated)


class Synthesizer:
    def __init__(
        self,
        # An engine's pool, or for Piper with batching on the batcher in front of it
        # (batching/pool.py: the same submit/estimated_wait_s/new_request_key).
        pools: Mapping[str, InferencePool | BatchingPool],
        registry: VoiceRegistry,
        breakers: dict[str, CircuitBreaker],
        request_timeout_s: float,
        retry_after_s: int,
        on_unit: UnitObserver | None = None,
        stream_lead_alone: bool = False,
    ):
        self.on_unit = on_unit
        # A streamed request on an idle pool: its first unit runs alone (see _submit_all).
        self.stream_lead_alone = stream_lead_alone
        self.pools = pools
        self.registry = registry
        self.breakers = breakers
        self.request_timeout_s = request_timeout_s
        self.retry_after_s = retry_after_s
        # Admitted requests whose units are not queued yet, by id (the entry keeps the
        # request alive, so its id is not reused meanwhile).
        self._reserved: dict[int, list[_Admitted]] = {}
        self.lateness: dict[str, Lateness] = {}

    def route(self, request: SynthesisRequest, prefer_fallback: bool = False) -> SynthesisRequest:
        """An open breaker (or the degradation ladder) sends the voice to its fallback."""
        fallback = self.registry.fallback_for(request.voice)
        if fallback is None or fallback.engine not in self.pools:
            return request
        breaker = self.breakers.get(request.voice.name)
        # The ladder relieves this machine's CPU: a remote voice costs it nothing, its
        # local fallback would.
        prefer_fallback = prefer_fallback and not request.voice.remote
        if prefer_fallback or (breaker is not None and not breaker.allow()):
            return dataclasses.replace(request, voice=fallback)
        return request

    def admit(self, request: SynthesisRequest, admission: Admission) -> None:
        """Refuse now (503 + Retry-After) what would miss its deadline in the queue; what
        is admitted is reserved in the estimate until stream() queues it, or until the
        task that admitted it ends (whichever comes first: nothing stays reserved)."""
        engine = request.voice.engine
        pool = self.pools[engine]
        chars, units = len(request.text), len(request.units)
        estimate_s = pool.estimated_wait_s(admission.priority, chars, units)
        lateness = self.lateness.setdefault(engine, Lateness())
        wait_s = estimate_s * lateness.factor
        if wait_s > admission.deadline_s:
            retry = max(self.retry_after_s, math.ceil(wait_s - admission.deadline_s))
            raise ServiceUnavailable(
                f"busy: estimated {wait_s:.1f}s exceeds the {admission.deadline_s:g}s deadline",
                code="would_miss_deadline", retry_after_s=retry)
        admitted = _Admitted(request, pool.reserve(admission.priority, chars, units),
                             estimate_s)
        self._reserved.setdefault(id(request), []).append(admitted)
        task = asyncio.current_task()
        if task is not None:
            task.add_done_callback(lambda _t: self._unreserve(request, admitted))

    @property
    def reserved_requests(self) -> int:
        """Admitted requests whose units are not queued yet (0 when nothing is pending)."""
        return sum(len(held) for held in self._reserved.values())

    def _unreserve(self, request: SynthesisRequest, admitted: _Admitted | None = None
                   ) -> _Admitted | None:
        """Release `admitted` of `request`, or (None) the oldest one it holds; returns it."""
        held = self._reserved.get(id(request))
        if not held:
            return None
        found = None
        for index, entry in enumerate(held):
            if admitted is None or entry is admitted:
                found = held.pop(index)
                found.reservation.release()
                break
        if not held:
            del self._reserved[id(request)]
        return found

    @staticmethod
    def _units(voice: VoiceInfo, texts: list[str], request: SynthesisRequest
               ) -> list[protocol.SynthesizeUnit]:
        return [
            protocol.SynthesizeUnit(work_id=0, voice=voice.name, text=text, speed=request.speed,
                                    speaker_id=request.speaker_id if voice is request.voice
                                    else None, timings=request.timestamps)
            for text in texts
        ]

    def _submit(
        self, voice: VoiceInfo, texts: list[str], request: SynthesisRequest, priority: int
    ) -> list[asyncio.Future[UnitResult]]:
        pool = self.pools[voice.engine]
        try:
            return pool.submit(pool.new_request_key(), self._units(voice, texts, request),
                               priority)
        except (PoolBusy, PoolClosed) as exc:
            raise ServiceUnavailable(
                str(exc), code=exc.code, retry_after_s=self.retry_after_s
            ) from None

    def _submit_all(self, request: SynthesisRequest, priority: int
                    ) -> list[asyncio.Future[UnitResult]]:
        """Every unit of the request into its pool. A streamed request that finds at least
        two workers idle and nothing queued (and a pool without a solo session, which
        already runs a lone request's units one by one) has its first unit run alone: the
        rest is reserved in the estimate and queued, at the head of its lane, when the
        first is done. Its first audio then has the machine to itself rather than sharing
        it with its own second unit; the rest is ready long before that audio has played."""
        pool = self.pools[request.voice.engine]
        texts = list(request.units)
        if not request.stream:
            return self._submit_longest_first(request, texts, priority)
        if not (self.stream_lead_alone and len(texts) > 1
                and isinstance(pool, InferencePool) and not pool.options.solo_enabled
                and pool.idle_workers >= 2):
            return self._submit(request.voice, texts, request, priority)
        (first,) = self._submit(request.voice, texts[:1], request, priority)
        rest_units = self._units(request.voice, texts[1:], request)
        held = pool.reserve(priority, sum(len(t) for t in texts[1:]), len(rest_units))
        loop = asyncio.get_running_loop()
        rest: list[asyncio.Future[UnitResult]] = [loop.create_future() for _ in rest_units]

        def queue_rest(_first: object) -> None:
            held.release()
            if all(f.done() for f in rest):  # the request is gone
                return
            try:
                queued = pool.submit(pool.new_request_key(), rest_units, priority,
                                     admitted=True, front=True)
            except PoolError as exc:  # closing, or no worker left: as if it had failed there
                for future in rest:
                    if not future.done():
                        future.set_exception(exc)
                return
            for source, target in zip(queued, rest, strict=True):
                _chain(source, target)

        first.add_done_callback(queue_rest)
        return [first, *rest]

    def _submit_longest_first(self, request: SynthesisRequest, texts: list[str],
                              priority: int) -> list[asyncio.Future[UnitResult]]:
        """A response sent whole is done when its last unit is: its units go to the queue
        longest first (one request on two workers then ends on its shortest unit, not on
        whichever came last in the text); the futures come back in text order."""
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        queued = self._submit(request.voice, [texts[i] for i in order], request, priority)
        futures: list[asyncio.Future[UnitResult]] = [queued[0]] * len(texts)
        for position, index in enumerate(order):
            futures[index] = queued[position]
        return futures

    async def stream(
        self, request: SynthesisRequest, trace: SynthesisTrace, priority: int = 1
    ) -> AsyncIterator[UnitAudio]:
        """Yield each unit's audio in order; leftover units are cancelled on any exit."""
        deadline = time.monotonic() + self.request_timeout_s
        # Its admission's reservation ends as its units are queued (no await between).
        admitted = self._unreserve(request)
        try:
            futures = self._submit_all(request, priority)
        except PoolUnavailable:
            futures = []
        breaker = self.breakers.get(request.voice.name)
        try:
            for index, text in enumerate(request.units):
                engine = request.voice.engine
                try:
                    if not futures:
                        raise EngineFailure("the primary engine is unavailable")
                    result = await self._wait(futures[index], deadline)
                    if breaker is not None:
                        breaker.record_success()
                except EngineFailure as exc:
                    if breaker is not None and exc.counts:
                        breaker.record_failure()
                    result, engine = await self._fallback(request, text, deadline, priority)
                    trace.degraded = True
                trace.add(result, engine)
                if admitted is not None and index == len(request.units) - 1 \
                        and not trace.degraded:  # done: how good was the estimate?
                    self.lateness[request.voice.engine].observe(
                        admitted.estimate_s, time.monotonic() - admitted.at)
                if self.on_unit is not None:
                    self.on_unit(engine, result.queue_ms, result.synthesis_ms,
                                 len(result.pcm) // 2, result.sample_rate, len(text))
                yield self._unit_audio(request, text, result, trace, engine)
        finally:
            for future in futures:
                future.cancel()

    async def _fallback(
        self, request: SynthesisRequest, text: str, deadline: float, priority: int
    ) -> tuple[UnitResult, str]:
        fallback = self.registry.fallback_for(request.voice)
        if fallback is None or fallback.engine not in self.pools:
            raise ServiceUnavailable("the engine failed and no fallback is configured",
                                     code="engine_unavailable", retry_after_s=self.retry_after_s)
        try:
            (future,) = self._submit(fallback, [text], request, priority)
            return await self._wait(future, deadline), fallback.engine
        except (EngineFailure, PoolUnavailable):
            raise ServiceUnavailable("both engines failed", code="engine_unavailable",
                                     retry_after_s=self.retry_after_s) from None

    def _unit_audio(self, request: SynthesisRequest, text: str, result: UnitResult,
                    trace: SynthesisTrace, engine: str) -> UnitAudio:
        """The unit's audio at the voice's rate, with the pause owed after it (unit_gap_s:
        after its words, so their times are untouched) and its words when asked."""
        rate = request.voice.sample_rate
        pcm = self._at_rate(result, rate)
        gap_s = unit_gap_s(engine, text)
        gap = silence(gap_s, rate) if gap_s else b""
        if not request.timestamps:
            return UnitAudio(pcm + gap)
        words = result.words
        if words and result.sample_rate != rate:  # a fallback's audio was resampled
            ratio = rate / result.sample_rate
            words = tuple(w._replace(start_sample=round(w.start_sample * ratio),
                                     end_sample=round(w.end_sample * ratio)) for w in words)
        elif not words:
            words = estimated_words(text, len(pcm) // 2)
            trace.estimated_timings = trace.estimated_timings or bool(words)
        return UnitAudio(pcm + gap, words)

    @staticmethod
    def _at_rate(result: UnitResult, sample_rate: int) -> bytes:
        """Fallback audio at the primary voice's rate, so one response has one rate."""
        if result.sample_rate == sample_rate:
            return result.pcm
        samples = np.frombuffer(result.pcm, dtype="<i2").astype(np.float32)
        resampled = soxr.resample(samples, result.sample_rate, sample_rate)
        return resampled.clip(-32768, 32767).astype("<i2").tobytes()

    async def _wait(self, future: asyncio.Future[UnitResult], deadline: float) -> UnitResult:
        try:
            return await asyncio.wait_for(future, max(deadline - time.monotonic(), 0))
        except TimeoutError:
            raise ServiceUnavailable(
                "synthesis did not finish within server.request_timeout_s",
                code="deadline_exceeded", retry_after_s=self.retry_after_s,
            ) from None
        except PoolClosed as exc:
            raise ServiceUnavailable(str(exc), code=exc.code,
                                     retry_after_s=self.retry_after_s) from None
        except UnitRejected as exc:
            if exc.code in CLIENT_FAULTS:
                raise Unprocessable(str(exc), code=exc.code) from None
            raise EngineFailure(str(exc)) from None
        except (WorkerCrashed, PoolUnavailable, PoolError) as exc:
            raise EngineFailure(str(exc), getattr(exc, "attempted", True)) from None

    def snapshot(self) -> dict[str, object]:
        return {name: breaker.snapshot() for name, breaker in self.breakers.items()}

