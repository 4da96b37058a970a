"""Typed keys, declared in one place: the application's state and each request's."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from aiohttp import web

from inference.pool import InferencePool
from tts_server.cache.supervisor import RedisWatch
from tts_server.config import Settings
from tts_server.gateway import Gateway
from tts_server.gateway.auth import Identity
from tts_server.gateway.ratelimit import Decision
from tts_server.metrics import Metrics
from tts_server.remote.pool import RemotePool
from tts_server.resilience.state import RunState
from tts_server.speech.service import SpeechService
from tts_server.speech.synthesizer import SynthesisTrace, Synthesizer
from tts_server.speech.voices import VoiceRegistry

SETTINGS = web.AppKey("settings", Settings)
REGISTRY = web.AppKey("registry", VoiceRegistry)
# One pool per engine: "piper", "espeak", "fastspeech2" (worker processes), and one
# RemotePool per [[engines.remote]] upstream.
POOLS = web.AppKey("pools", dict[str, InferencePool | RemotePool])
SYNTHESIZER = web.AppKey("synthesizer", Synthesizer)
RUN_STATE = web.AppKey("run_state", RunState)
SPEECH = web.AppKey("speech", SpeechService)
GATEWAY = web.AppKey("gateway", Gateway)
# The Redis the cache uses (private or external), shared with the rate limiter.
REDIS_URL = web.AppKey("redis_url", str)
# Watches that Redis: restarts the private one, tells /readyz and /metrics whether it is up.
REDIS_WATCH = web.AppKey("redis_watch", RedisWatch)
METRICS = web.AppKey("metrics", Metrics)
# Bounded pool that encodes audio off the event loop.
ENCODERS = web.AppKey("encoders", ThreadPoolExecutor)

# ---- per request (aiohttp >= 3.14) ----------------------------------------------------------


@dataclass
class RequestInfo:
    voice: str | None = None
    engine: str | None = None
    chars: int = 0
    cache: str | None = None
    audio_format: str | None = None
    trace: SynthesisTrace | None = None
    audio_bytes: int = 0
    sample_rate: int = 0
    first_byte_at: float | None = None

    @property
    def audio_s(self) -> float:
        return self.audio_bytes / 2 / self.sample_rate if self.sample_rate else 0.0


REQUEST_ID = web.RequestKey("request_id", str)
# Who is calling (gateway middleware), and its per-request rate decision (for the headers).
IDENTITY = web.RequestKey("identity", Identity)
RATE_DECISION = web.RequestKey("rate_decision", Decision)
# What a synthesis route learned, for the access log and the metrics.
REQUEST_INFO = web.RequestKey("request_info", RequestInfo)
ERROR_CODE = web.RequestKey("error_code", str)
# When the request reached the front (time.monotonic()), for the access log's timings.
STARTED_AT = web.RequestKey("started_at", float)
# The response closes its connection (it arrived while draining, or its body timed out).
CLOSE_AFTER = web.RequestKey("close_after", bool)
