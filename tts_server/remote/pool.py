"""RemotePool: an upstream behind the interface the Synthesizer uses of an InferencePool.

No worker processes: units wait in priority lanes in the front and go to the upstream as
HTTP calls, at most `max_concurrent` at once, so a long text still streams in order sentence
by sentence. A unit's future cancelled (client gone, deadline passed) cancels its call, which
closes the connection: the upstream sees its client leave. The wait estimate learns the
upstream's measured seconds per character, like the local pools.

When a unit fails, the rest of its request still queued here fails at once too (never
sent, so the breaker does not count them): the request goes on in the fallback voice
instead of waiting for each of its sentences to time out. A 429 pauses the upstream for its
Retry-After: units meanwhile fall back without being sent.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import itertools
import logging
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import aiohttp

from inference import protocol
from inference.pool import PoolBusy, PoolClosed, PoolOptions, Reservation, UnitResult
from tts_server.config import RemoteEngineSettings
from tts_server.remote import client
from tts_server.remote.client import UpstreamError

LOG = logging.getLogger("tts.remote")
SPEED_EWMA_ALPHA = 0.1
OUTCOMES = ("ok", "refused", "timeout", "disconnected", "http_5xx", "http_4xx",
            "http_other", "rate_limited", "bad_audio", "too_short", "cancelled", "skipped")


@dataclass(eq=False)
class _Call:
    """One queued or running unit."""

    unit: protocol.SynthesizeUnit
    request_key: int
    priority: int
    future: asyncio.Future[UnitResult]
    enqueued_at: float = field(default_factory=time.monotonic)
    task: asyncio.Task[None] | None = None

    @property
    def chars(self) -> int:
        return len(self.unit.text)


class Lanes:
    """One FIFO per priority (0 first); characters per lane for the wait estimate."""

    def __init__(self) -> None:
        self._lanes: dict[int, collections.deque[_Call]] = collections.defaultdict(
            collections.deque)
        self.chars: collections.Counter[int] = collections.Counter()

    def __len__(self) -> int:
        return sum(len(lane) for lane in self._lanes.values())

    def push(self, call: _Call) -> None:
        self._lanes[call.priority].append(call)
        self.chars[call.priority] += call.chars

    def pop(self) -> _Call | None:
        for priority in sorted(self._lanes):
            if self._lanes[priority]:
                call = self._lanes[priority].popleft()
                self.chars[priority] -= call.chars
                return call
        return None

    def remove(self, call: _Call) -> bool:
        try:
            self._lanes[call.priority].remove(call)
        except ValueError:
            return False
        self.chars[call.priority] -= call.chars
        return True

    def calls(self) -> list[_Call]:
        return [c for lane in self._lanes.values() for c in lane]

    def of_request(self, request_key: int) -> list[_Call]:
        return [c for c in self.calls() if c.request_key == request_key]

    def drain(self) -> list[_Call]:
        calls = self.calls()
        self._lanes.clear()
        self.chars.clear()
        return calls

    def depth_by_priority(self) -> dict[int, int]:
        return {p: len(lane) for p, lane in sorted(self._lanes.items())}


class RemotePool:
    def __init__(self, settings: RemoteEngineSettings) -> None:
        self.settings = settings
        self.name = settings.name
        # What the rest of the server reads of a pool's options (jobs: batch size).
        self.options = PoolOptions(workers=settings.max_concurrent, name=settings.name)
        self.seconds_per_char = settings.initial_seconds_per_char
        self.outcomes: collections.Counter[str] = collections.Counter()
        self.max_in_flight_seen = 0
        self._lanes = Lanes()
        self._running: set[_Call] = set()
        # Admitted requests' characters by priority until their units are queued.
        self._reserved: collections.Counter[int] = collections.Counter()
        self._session: aiohttp.ClientSession | None = None
        self._paused_until = 0.0
        self._closing = False
        self._request_keys = itertools.count(1)
        self._unit_ids = itertools.count(1)
        self.last_error = ""
        # Tells this front's calls from another's in the upstream's logs.
        self._instance = secrets.token_hex(4)

    # ---- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the connection pool; the upstream is not contacted (it may come up later)."""
        connector = aiohttp.TCPConnector(limit=self.settings.max_concurrent,
                                         keepalive_timeout=self.settings.keepalive_s)
        self._session = aiohttp.ClientSession(connector=connector,
                                              timeout=client.timeouts(self.settings))
        LOG.info("remote engine %s: %s, %d at once, voices %s", self.name,
                 self.settings.speech_url, self.settings.max_concurrent,
                 ", ".join(self.settings.voices))

    async def stop(self) -> None:
        self._closing = True
        for call in self._lanes.drain():
            _fail(call, PoolClosed("server is shutting down"))
        tasks = [c.task for c in self._running if c.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    # ---- the pool interface ----------------------------------------------------------------

    def new_request_key(self) -> int:
        return next(self._request_keys)

    def submit(self, request_key: int, units: Sequence[protocol.SynthesizeUnit],
               priority: int = 1) -> list[asyncio.Future[UnitResult]]:
        """Queue every unit of one request, or none (PoolClosed, PoolBusy)."""
        if self._closing or self._session is None:
            raise PoolClosed("server is shutting down")
        if len(self._lanes) + len(units) > self.settings.max_queued_units:
            raise PoolBusy(f"the queue of remote engine {self.name} is full")
        loop = asyncio.get_running_loop()
        calls = [_Call(dataclasses.replace(u, work_id=next(self._unit_ids)), request_key,
                       priority, loop.create_future()) for u in units]
        for call in calls:
            call.future.add_done_callback(lambda _f, c=call: self._on_done(c))
            self._lanes.push(call)
        if self.paused:
            self._fail_queued(self._pause_error())
        self._dispatch()
        return [call.future for call in calls]

    def estimated_wait_s(self, priority: int, chars: int, units: int) -> float:
        """The characters ahead (queued at this priority or better, half of those running)
        over the concurrent calls, then the request's own over as many calls as it has
        units, at the measured seconds per character."""
        slots = self.settings.max_concurrent
        ahead = sum(c for p, c in self._lanes.chars.items() if p <= priority)
        ahead += sum(c for p, c in self._reserved.items() if p <= priority)
        ahead += sum(c.chars for c in self._running) / 2
        own = chars / max(1, min(slots, units))
        return (ahead / slots + own) * self.seconds_per_char

    def reserve(self, priority: int, chars: int, units: int) -> Reservation:
        """As InferencePool.reserve: counted in the estimate until released."""
        self._reserved[priority] += chars
        return Reservation(priority, chars, units, self._unreserve)

    def _unreserve(self, reservation: Reservation) -> None:
        self._reserved[reservation.priority] -= reservation.chars
        if self._reserved[reservation.priority] <= 0:
            del self._reserved[reservation.priority]

    def busy_with(self, max_priority: int) -> bool:
        calls = itertools.chain(self._running, self._lanes.calls())
        return any(c.priority <= max_priority for c in calls)

    @property
    def ready(self) -> bool:
        """Started and not stopping: an unreachable upstream is the fallback's business, not
        a reason to take this server out of rotation."""
        return self._session is not None and not self._closing

    @property
    def paused(self) -> bool:
        return time.monotonic() < self._paused_until

    def snapshot(self) -> dict[str, object]:
        return {
            "remote": self.settings.speech_url,
            "workers_total": self.settings.max_concurrent,
            "workers_ready": self.settings.max_concurrent if self.ready else 0,
            "queued_units": len(self._lanes),
            "queued_by_priority": self._lanes.depth_by_priority(),
            "seconds_per_char": round(self.seconds_per_char, 6),
            "busy_workers": len(self._running),
            "max_in_flight_seen": self.max_in_flight_seen,
            "restarts": 0,
            "units_completed": self.outcomes["ok"],
            "outcomes": dict(self.outcomes),
            "paused_s": round(max(0.0, self._paused_until - time.monotonic()), 3),
            "last_error": self.last_error,
            "workers": [],
        }

    def worker_states(self) -> list[dict[str, object]]:
        return []  # no processes of its own

    # ---- dispatch --------------------------------------------------------------------------

    def _dispatch(self) -> None:
        loop = asyncio.get_running_loop()
        while len(self._running) < self.settings.max_concurrent and not self._closing:
            call = self._lanes.pop()
            if call is None:
                return
            if call.future.done():
                continue
            self._running.add(call)
            self.max_in_flight_seen = max(self.max_in_flight_seen, len(self._running))
            call.task = loop.create_task(self._run(call))

    def _on_done(self, call: _Call) -> None:
        """A future cancelled by its reader: drop the queued unit, or cancel its call."""
        if not call.future.cancelled():
            call.future.exception()  # its reader may have left: no "never retrieved" noise
            return
        if self._lanes.remove(call):
            return
        if call.task is not None and not call.task.done():
            call.task.cancel()

    async def _run(self, call: _Call) -> None:
        started = time.monotonic()
        try:
            result = await self._call(call, started)
        except asyncio.CancelledError:
            _fail(call, PoolClosed("server is shutting down"))  # stop(), not its reader
            self.outcomes["cancelled"] += 1
            LOG.info("remote %s: unit %s cancelled after %.0f ms", self.name,
                     self._request_id(call), (time.monotonic() - started) * 1000)
            raise
        except UpstreamError as exc:
            self._failed(call, exc)
        else:
            self.outcomes["ok"] += 1
            if not call.future.done():
                call.future.set_result(result)
        finally:
            self._running.discard(call)
            if not self._closing:
                self._dispatch()

    async def _call(self, call: _Call, started: float) -> UnitResult:
        unit = call.unit
        assert self._session is not None
        body = client.request_body(self.settings, self.settings.voices[unit.voice], unit.text,
                                   unit.speed)
        answer = await client.synthesize(self._session, self.settings, body,
                                         self._request_id(call))
        self._check_length(answer, unit)
        if unit.text:
            self._learn_speed(answer.seconds / len(unit.text))
        queue_ms = (started - call.enqueued_at) * 1000
        return UnitResult(answer.pcm, answer.sample_rate, queue_ms, answer.seconds * 1000,
                          worker_index=0, attempts=1)

    def _check_length(self, answer: client.Answer, unit: protocol.SynthesizeUnit) -> None:
        audio_s = len(answer.pcm) / 2 / answer.sample_rate
        least_s = len(unit.text) * self.settings.min_audio_s_per_char / unit.speed
        if audio_s <= 0 or audio_s < least_s:
            raise UpstreamError("too_short", f"{audio_s:.3f} s of audio for {len(unit.text)}"
                                             f" characters (at least {least_s:.3f} s expected)")

    def _failed(self, call: _Call, error: UpstreamError) -> None:
        self.outcomes[error.outcome] += 1
        self.last_error = f"{error.outcome}: {error}"
        LOG.warning("remote %s: unit %s (%d chars) failed, to the fallback: %s", self.name,
                    self._request_id(call), call.chars, self.last_error)
        _fail(call, error)
        if error.outcome == "rate_limited":
            self._pause(error.retry_after_s or 0.0)
        skipped = UpstreamError("skipped", f"an earlier unit of this request failed ({error})",
                                attempted=False)
        for sibling in self._lanes.of_request(call.request_key):
            self._lanes.remove(sibling)
            self._skip(sibling, skipped)

    def _pause(self, seconds: float) -> None:
        if seconds <= 0:
            return
        self._paused_until = max(self._paused_until, time.monotonic() + seconds)
        LOG.warning("remote %s: paused for %.1f s (Retry-After)", self.name, seconds)
        self._fail_queued(self._pause_error())

    def _pause_error(self) -> UpstreamError:
        left = self._paused_until - time.monotonic()
        return UpstreamError("skipped", f"the upstream asked for a pause ({left:.1f} s left)",
                             attempted=False)

    def _fail_queued(self, error: UpstreamError) -> None:
        for call in self._lanes.drain():
            self._skip(call, error)

    def _skip(self, call: _Call, error: UpstreamError) -> None:
        if not call.future.done():
            self.outcomes["skipped"] += 1
            _fail(call, error)

    def _learn_speed(self, seconds_per_char: float) -> None:
        self.seconds_per_char += SPEED_EWMA_ALPHA * (seconds_per_char - self.seconds_per_char)

    def _request_id(self, call: _Call) -> str:
        """Sent as X-Request-Id: the upstream's access log names the same unit."""
        return f"{self.name}-{self._instance}-{call.request_key}-{call.unit.work_id}"


def _fail(call: _Call, error: Exception) -> None:
    if not call.future.done():
        call.future.set_exception(error)


def build_remote_pools(entries: Sequence[RemoteEngineSettings]) -> Mapping[str, RemotePool]:
    return {entry.name: RemotePool(entry) for entry in entries}
