"""Which work runs next, and how long a new request would wait: lanes, solo mode, speed.

A work item is one sentence unit or one batch of them (`protocol.Work`); it waits in the
lane of its priority (0 vip, 1 standard, 2 background jobs) and goes to an idle worker,
one item per worker at a time, so the least-loaded worker is always an idle one.

The wait estimate counts what is queued and running and what is reserved: a request
admitted against the estimate holds a `Reservation` of its characters until its units are
queued (or it is dropped), so requests admitted in one event-loop turn, before any of them
has queued a unit, see each other's work. The speed it multiplies by is measured: the
seconds items held their workers (dispatch to reply, as the front sees it) over their
characters (a moving ratio of the two sums, so many short units do not outweigh a few
long ones); the configured starting guess only holds until the first unit is done.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from . import protocol

SPEED_EWMA_ALPHA = 0.1


@dataclass(eq=False)
class Reservation:
    """Characters and units of an admitted request not queued yet; release() once (again
    is a no-op): when its units are queued, or when it will never queue them."""

    priority: int
    chars: int
    units: int
    # What takes it out of the estimate (the scheduler's, or a remote pool's).
    _on_release: Callable[[Reservation], None] | None = None

    @property
    def held(self) -> bool:
        return self._on_release is not None

    def release(self) -> None:
        on_release, self._on_release = self._on_release, None
        if on_release is not None:
            on_release(self)


@dataclass(eq=False)
class WorkItem:
    """One queued work item: a sentence unit, or a batch of them under one future."""

    message: protocol.Work
    request_keys: tuple[int, ...]
    # A UnitResult, or for a batch a list of them (text order).
    future: asyncio.Future[Any]
    priority: int = 1
    enqueued_at: float = field(default_factory=time.monotonic)
    dispatched_at: float = 0.0
    attempts: int = 0
    finished: bool = False
    solo: bool = False

    @property
    def work_id(self) -> int:
        return self.message.work_id

    @property
    def texts(self) -> tuple[str, ...]:
        message = self.message
        return (message.text,) if isinstance(message, protocol.SynthesizeUnit) else message.texts

    @property
    def size(self) -> int:
        return len(self.texts)

    @property
    def chars(self) -> int:
        return sum(len(text) for text in self.texts)


class WorkQueue:
    """One FIFO of work items per priority, lowest number first; counts queued sentence
    units (a batch counts its items) and characters for estimates."""

    def __init__(self) -> None:
        self._lanes: dict[int, collections.deque[WorkItem]] = collections.defaultdict(
            collections.deque
        )
        self._chars: collections.Counter[int] = collections.Counter()
        self._units: collections.Counter[int] = collections.Counter()

    def __len__(self) -> int:
        return sum(self._units.values())

    def push(self, item: WorkItem, front: bool = False) -> None:
        lane = self._lanes[item.priority]
        lane.appendleft(item) if front else lane.append(item)
        self._chars[item.priority] += item.chars
        self._units[item.priority] += item.size

    def pop(self) -> WorkItem | None:
        for priority in sorted(self._lanes):
            lane = self._lanes[priority]
            if lane:
                item = lane.popleft()
                self._chars[item.priority] -= item.chars
                self._units[item.priority] -= item.size
                return item
        return None

    def chars_ahead(self, priority: int) -> int:
        """Characters that would run before a new item of this priority."""
        return sum(c for p, c in self._chars.items() if p <= priority)

    def depth_by_priority(self) -> dict[int, int]:
        return {p: self._units[p] for p in sorted(self._lanes)}


class Slot(Protocol):
    """What the scheduler needs to know of a worker slot."""

    work: WorkItem | None

    @property
    def ready(self) -> bool: ...

    @property
    def idle(self) -> bool: ...


class Scheduler:
    def __init__(self, solo_enabled: bool, initial_seconds_per_char: float) -> None:
        self.solo_enabled = solo_enabled
        self.queue = WorkQueue()
        # Seconds a worker takes per character: the starting guess until a unit has been
        # measured, then (EWMA of seconds) / (EWMA of characters).
        self.seconds_per_char = initial_seconds_per_char
        self._speed_seconds = 0.0
        self._speed_chars = 0.0
        self.speed_samples = 0
        self._active_requests: collections.Counter[int] = collections.Counter()
        # Admitted but not yet queued: characters by priority, units, reservations.
        self._reserved_chars: collections.Counter[int] = collections.Counter()
        self.reserved_units = 0
        self.reservations = 0

    def reserve(self, priority: int, chars: int, units: int) -> Reservation:
        reservation = Reservation(priority, chars, units, self._unreserve)
        self._reserved_chars[priority] += chars
        self.reserved_units += units
        self.reservations += 1
        return reservation

    def _unreserve(self, reservation: Reservation) -> None:
        self._reserved_chars[reservation.priority] -= reservation.chars
        if self._reserved_chars[reservation.priority] <= 0:
            del self._reserved_chars[reservation.priority]
        self.reserved_units -= reservation.units
        self.reservations -= 1

    def enqueue(self, message: protocol.Work, request_keys: tuple[int, ...], priority: int,
                front: bool = False) -> WorkItem:
        """Into its priority's lane, at the back (or the front: work admitted earlier)."""
        item = WorkItem(message, request_keys, asyncio.get_running_loop().create_future(),
                        priority)
        item.future.add_done_callback(lambda _f, i=item: self._finished(i))
        for key in request_keys:
            self._active_requests[key] += 1
        self.queue.push(item, front=front)
        return item

    def idle_workers(self, slots: Sequence[Slot]) -> int:
        """Workers that would start a new item now: idle ones, while nothing is queued."""
        return 0 if self.queue else sum(s.idle for s in slots)

    def _finished(self, item: WorkItem) -> None:
        if not item.finished:
            item.finished = True
            for key in item.request_keys:
                self._active_requests[key] -= 1
                if self._active_requests[key] <= 0:
                    del self._active_requests[key]

    def solo_mode(self) -> bool:
        """A single request has the whole pool: run its units one by one on wide sessions."""
        return self.solo_enabled and len(self._active_requests) == 1

    def next_assignment(self, slots: Sequence[Slot]) -> tuple[Slot, WorkItem, bool] | None:
        """The next (idle slot, item, solo?) to start, or None; cancelled items are dropped."""
        while self.queue:
            solo = self.solo_mode()
            if solo and any(s.work is not None for s in slots):
                return None  # the solo unit already uses every core
            slot = next((s for s in slots if s.idle), None)
            if slot is None:
                return None
            item = self.queue.pop()
            if item is None:
                return None
            if not item.finished:  # cancelled while it waited: never started
                return slot, item, solo
        return None

    def estimated_wait_s(self, slots: Sequence[Slot], priority: int, chars: int,
                         units: int) -> float:
        """Time until a request of `chars` characters at `priority` would be done: the
        work queued or reserved ahead of it and half the work running, spread over the
        ready workers, then its own units over as many workers as it has units."""
        ready = max(1, sum(s.ready for s in slots))
        running = sum(s.work.chars for s in slots if s.work is not None)
        reserved = sum(c for p, c in self._reserved_chars.items() if p <= priority)
        ahead = self.queue.chars_ahead(priority) + reserved + running / 2
        own = chars / max(1, min(ready, units))
        return (ahead / ready + own) * self.seconds_per_char

    def busy_with(self, slots: Sequence[Slot], max_priority: int) -> bool:
        """Items of priority <= max_priority are queued or running (interactive load)."""
        running = any(s.work is not None and s.work.priority <= max_priority for s in slots)
        queued = any(depth for priority, depth in self.queue.depth_by_priority().items()
                     if priority <= max_priority)
        return running or queued

    def learn_speed(self, seconds: float, chars: int) -> None:
        """One finished item: it held its worker `seconds` for `chars` characters. The first
        measurements replace the starting guess at once (weight 1/n up to the EWMA's)."""
        if chars <= 0:
            return
        self.speed_samples += 1
        alpha = max(SPEED_EWMA_ALPHA, 1.0 / self.speed_samples)
        self._speed_seconds += alpha * (seconds - self._speed_seconds)
        self._speed_chars += alpha * (chars - self._speed_chars)
        self.seconds_per_char = self._speed_seconds / self._speed_chars
