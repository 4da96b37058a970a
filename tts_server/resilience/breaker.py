"""Circuit breaker per primary voice: after repeated engine failures, send its traffic to
the fallback engine for a while, then let one probe through to see if it recovered."""

from __future__ import annotations

import collections
import enum
import time
from collections.abc import Callable
from dataclasses import dataclass


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True)
class BreakerPolicy:
    failure_threshold: int = 5
    window_s: float = 30.0
    open_s: float = 15.0


class CircuitBreaker:
    def __init__(self, policy: BreakerPolicy, clock: Callable[[], float] = time.monotonic):
        self.policy = policy
        self._clock = clock
        self._failures: collections.deque[float] = collections.deque()
        self._state = BreakerState.CLOSED
        self._opened_at = 0.0
        self._probe_out = False
        self._probe_at = 0.0
        self.opened_count = 0

    @property
    def state(self) -> BreakerState:
        if self._state is BreakerState.OPEN and self._cooled_down():
            return BreakerState.HALF_OPEN
        return self._state

    def _cooled_down(self) -> bool:
        return self._clock() - self._opened_at >= self.policy.open_s

    def allow(self) -> bool:
        """May a request use the primary? Half-open lets exactly one probe through."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        # A probe that never reported (its request was a cache hit, or was cancelled) expires.
        probe_lost = self._clock() - self._probe_at >= self.policy.open_s
        if state is BreakerState.HALF_OPEN and (not self._probe_out or probe_lost):
            self._state, self._probe_out = BreakerState.HALF_OPEN, True
            self._probe_at = self._clock()
            return True
        return False

    def record_success(self) -> None:
        if self._state is not BreakerState.CLOSED:
            self._state, self._probe_out = BreakerState.CLOSED, False
            self._failures.clear()

    def record_failure(self) -> None:
        now = self._clock()
        if self._state is BreakerState.HALF_OPEN:
            self._open(now)
            return
        self._failures.append(now)
        while self._failures and now - self._failures[0] > self.policy.window_s:
            self._failures.popleft()
        if self._state is BreakerState.CLOSED and (
            len(self._failures) >= self.policy.failure_threshold
        ):
            self._open(now)

    def _open(self, now: float) -> None:
        self._state, self._opened_at, self._probe_out = BreakerState.OPEN, now, False
        self.opened_count += 1

    def snapshot(self) -> dict[str, object]:
        return {"state": self.state.value, "recent_failures": len(self._failures),
                "times_opened": self.opened_count}
