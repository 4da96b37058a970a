"""Typed application state keys, declared in one place."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from aiohttp import web

from inference.pool import InferencePool
from tts_server.config import Settings
from tts_server.gateway import Gateway
from tts_server.metrics import Metrics
from tts_server.resilience.state import RunState
from tts_server.speech.service import SpeechService
from tts_server.speech.synthesizer import Synthesizer
from tts_server.speech.voices import VoiceRegistry

SETTINGS = web.AppKey("settings", Settings)
REGISTRY = web.AppKey("registry", VoiceRegistry)
# One inference pool per engine: "piper", "espeak".
POOLS = web.AppKey("pools", dict[str, InferencePool])
SYNTHESIZER = web.AppKey("synthesizer", Synthesizer)
RUN_STATE = web.AppKey("run_state", RunState)
SPEECH = web.AppKey("speech", SpeechService)
GATEWAY = web.AppKey("gateway", Gateway)
# The Redis the cache uses (private or external), shared with the rate limiter.
REDIS_URL = web.AppKey("redis_url", str)
METRICS = web.AppKey("metrics", Metrics)
# Bounded pool that encodes audio off the event loop.
ENCODERS = web.AppKey("encoders", ThreadPoolExecutor)
