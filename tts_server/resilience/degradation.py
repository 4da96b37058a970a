"""The degradation ladder: sustained high CPU steps the server down gracefully, level by level.

Level 1 turns the web page's preview off (the API stays), level 2 sends standard requests
to the fallback engine while the top lane stays on the primary, level 3 sheds standard
requests that need synthesis (503; cached audio is still served). Each step up needs the
CPU average over `window_s` above `up_cpu_percent`; each step down needs it below
`down_cpu_percent` for `down_window_s` (hysteresis, so the level does not flap).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from tts_server.config import DegradationSettings
from tts_server.resilience.state import Level, RunState

LOG = logging.getLogger("tts.degradation")


def system_cpu_reader() -> Callable[[], float]:
    """CPU % of the whole machine since the previous call (psutil)."""
    psutil.cpu_percent(None)
    return lambda: psutil.cpu_percent(None)


def file_cpu_reader(path: str) -> Callable[[], float]:
    """The test seam (degradation.cpu_reading_file): a CPU % written into a file."""

    def read() -> float:
        try:
            return float(Path(path).read_text().strip() or 0)
        except (OSError, ValueError):
            return 0.0

    return read


class DegradationLadder:
    def __init__(self, settings: DegradationSettings, state: RunState,
                 read_cpu: Callable[[], float], clock: Callable[[], float] = time.monotonic,
                 interactive_load: Callable[[], bool] = lambda: True):
        self.settings = settings
        self.state = state
        self.read_cpu = read_cpu
        self.clock = clock
        self.interactive_load = interactive_load
        self._samples: collections.deque[tuple[float, float]] = collections.deque()
        self._changed_at = clock()

    def _average_over(self, seconds: float, now: float) -> float | None:
        """Mean CPU over the last `seconds`, or None until that much history exists."""
        if not self._samples or now - self._samples[0][0] < seconds:
            return None
        recent = [cpu for at, cpu in self._samples if now - at <= seconds]
        return sum(recent) / len(recent) if recent else None

    def observe(self, cpu_percent: float) -> Level:
        """Record one reading; step at most one level; return the level."""
        now = self.clock()
        self._samples.append((now, cpu_percent))
        keep = max(self.settings.window_s, self.settings.down_window_s) + 1
        while now - self._samples[0][0] > keep:
            self._samples.popleft()
        level = self.state.degradation_level
        settled_for = now - self._changed_at
        high = self._average_over(self.settings.window_s, now)
        low = self._average_over(self.settings.down_window_s, now)
        step_up = settled_for >= self.settings.window_s and high is not None and (
            high >= self.settings.up_cpu_percent
        )
        step_down = settled_for >= self.settings.down_window_s and low is not None and (
            low < self.settings.down_cpu_percent
        )
        if step_up and level < max(Level):
            self._set(level + 1, now, high)
        elif step_down and level > Level.NORMAL:
            self._set(level - 1, now, low)
        return self.state.degradation_level

    def _set(self, level: int, now: float, cpu: float) -> None:
        LOG.warning("degradation level %d -> %d (CPU %.0f%%)",
                    self.state.degradation_level, level, cpu)
        self.state.degradation_level = Level(level)
        self._changed_at = now

    def reading(self) -> float:
        """The CPU % that counts: zero while no interactive work waits or runs."""
        cpu = self.read_cpu()
        if self.settings.only_with_interactive_load and not self.interactive_load():
            return 0.0
        return cpu

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.settings.sample_interval_s)
            self.observe(self.reading())
