"""Typed application state keys, declared in one place."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from aiohttp import web

from inference.pool import InferencePool

from .config import Settings
from .gateway import Gateway
from .memo import ParsedBodies
from .metrics import Metrics
from .speech import SpeechService
from .synthesis import Synthesizer
from .voices import VoiceRegistry


@dataclass
class RunState:
    """Mutable server state that handlers read: set by the shutdown sequence."""

    draining: bool = False
    # The degradation ladder's level (0 = normal); level 1 and up turn the web preview off.
    degradation_level: int = 0

    @property
    def preview_enabled(self) -> bool:
        return self.degradation_level < 1


SETTINGS = web.AppKey("settings", Settings)
REGISTRY = web.AppKey("registry", VoiceRegistry)
# One inference pool per engine: "piper", "espeak".
POOLS = web.AppKey("pools", dict[str, InferencePool])
SYNTHESIZER = web.AppKey("synthesizer", Synthesizer)
RUN_STATE = web.AppKey("run_state", RunState)
SPEECH = web.AppKey("speech", SpeechService)
# Recently parsed identical request bodies (memo.ParsedBodies).
PARSED_BODIES = web.AppKey("parsed_bodies", ParsedBodies)
GATEWAY = web.AppKey("gateway", Gateway)
# The Redis the cache uses (private or external), shared with the rate limiter.
REDIS_URL = web.AppKey("redis_url", str)
METRICS = web.AppKey("metrics", Metrics)
# Bounded pool that encodes audio off the event loop.
ENCODERS = web.AppKey("encoders", ThreadPoolExecutor)
