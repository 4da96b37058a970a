"""Mutable server state that handlers read: the drain flag and the degradation level."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

# The lane the ladder never degrades: priority-0 tiers stay on the primary engine.
PROTECTED_PRIORITY = 0


class Level(IntEnum):
    """The degradation ladder's steps; each one keeps what the one below it does."""

    NORMAL = 0
    NO_PREVIEW = 1  # the web page's preview is off; the API is untouched
    FALLBACK = 2  # unprotected tiers are spoken by the fallback engine
    SHED = 3  # unprotected tiers get only cached audio (503 for anything new)

    @property
    def previews(self) -> bool:
        return self < Level.NO_PREVIEW

    def prefers_fallback(self, priority: int) -> bool:
        return self >= Level.FALLBACK and priority != PROTECTED_PRIORITY

    def sheds(self, priority: int) -> bool:
        return self >= Level.SHED and priority != PROTECTED_PRIORITY


@dataclass
class RunState:
    """Set by the shutdown sequence (draining) and the degradation ladder (level)."""

    draining: bool = False
    degradation_level: Level = Level.NORMAL
    # Requests inside the middleware chain: the drain waits for these to finish.
    in_flight: int = 0

    @property
    def preview_enabled(self) -> bool:
        return self.degradation_level.previews

    def pauses_jobs(self, pause_at_level: int) -> bool:
        """jobs.pause_at_degradation_level: 0 never pauses."""
        return 0 < pause_at_level <= self.degradation_level
