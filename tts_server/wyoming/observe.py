"""One access-log line and the request metrics per Wyoming exchange, route label `wyoming`.

The same metrics and logger as the HTTP routes (tts_server/http/observe.py), so a
dashboard sees Home Assistant's traffic beside the API's; statuses are the HTTP codes
the same outcome has on the API (200, or the error's status).
"""

from __future__ import annotations

import itertools
import random
import secrets
import time
from dataclasses import dataclass, field

from tts_server import keys
from tts_server.config import Settings
from tts_server.http.observe import ACCESS_LOG, ADMISSION_CODES
from tts_server.metrics import Metrics
from tts_server.speech.service import Speech
from tts_server.speech.synthesizer import SynthesisTrace
from tts_server.speech.textstream import add_trace

ROUTE = "wyoming"
_IDS = (f"wy{secrets.token_hex(7)}{n:016x}" for n in itertools.count(1))


@dataclass
class Exchange:
    """One request event and everything it caused: a describe, a synthesize, or a stream
    from synthesize-start to synthesize-stopped."""

    kind: str
    client: str
    tier: str = ""
    request_id: str = field(default_factory=lambda: next(_IDS))
    started: float = field(default_factory=time.monotonic)
    info: keys.RequestInfo = field(default_factory=lambda: keys.RequestInfo(
        audio_format="pcm", trace=SynthesisTrace()))
    sentences: int = 0
    cache_hits: int = 0

    def spoke(self, speech: Speech, metrics: Metrics | None) -> None:
        """After one Speech (a whole text, or one sentence of a stream) is written."""
        info = self.info
        info.voice = info.voice or speech.request.voice.name
        info.engine = info.engine or speech.trace.engine or speech.request.voice.engine
        info.cache = info.cache or speech.cache_status
        info.sample_rate = info.sample_rate or speech.sample_rate
        assert info.trace is not None
        add_trace(info.trace, speech.trace)
        self.sentences += 1
        self.cache_hits += speech.cache_status.startswith("hit")
        if metrics is not None:
            metrics.child(metrics.cache_results, speech.cache_status).inc()

    def first_audio(self) -> None:
        if self.info.first_byte_at is None:
            self.info.first_byte_at = time.monotonic()


class Observer:
    """Counts exchanges in flight and records each one when it ends."""

    def __init__(self, settings: Settings, metrics: Metrics | None) -> None:
        self.settings = settings.server
        self.metrics = metrics

    def begin(self, exchange: Exchange) -> Exchange:
        if self.metrics is not None:
            self.metrics.child(self.metrics.in_flight, ROUTE).inc()
        return exchange

    def end(self, exchange: Exchange, status: int, error: str | None = None) -> None:
        total_s = time.monotonic() - exchange.started
        if self.metrics is not None:
            self.metrics.child(self.metrics.in_flight, ROUTE).dec()
            self._count(exchange, status, error, total_s)
        self._log(exchange, status, error, total_s)

    def _count(self, exchange: Exchange, status: int, error: str | None,
               total_s: float) -> None:
        metrics, info = self.metrics, exchange.info
        assert metrics is not None
        metrics.child(metrics.requests, ROUTE, str(status), info.engine or "",
                      info.voice or "", exchange.tier).inc()
        metrics.child(metrics.request_seconds, ROUTE).observe(total_s)
        if exchange.kind != "describe":
            metrics.request_chars.observe(info.chars)
        if info.first_byte_at is not None:
            metrics.child(metrics.first_audio_seconds, ROUTE).observe(
                info.first_byte_at - exchange.started)
        if error in ADMISSION_CODES:
            metrics.child(metrics.admission_rejections, error).inc()

    def _log(self, exchange: Exchange, status: int, error: str | None, total_s: float) -> None:
        if not self.settings.access_log:
            return
        if status < 400 and random.random() >= self.settings.access_log_sample_rate:
            return
        info, trace = exchange.info, exchange.info.trace
        fields = {
            "request_id": exchange.request_id, "method": exchange.kind, "route": ROUTE,
            "status": status, "total_ms": round(total_s * 1000, 1), "client": exchange.client,
            **({"error": error} if error else {}),
            "voice": info.voice, "engine": info.engine, "chars": info.chars,
            "cache": info.cache, "format": info.audio_format, "audio_s": round(info.audio_s, 3),
            "sentences": exchange.sentences, "cache_hits": exchange.cache_hits,
            "queue_ms": round(trace.queue_ms, 1) if trace else None,
            "synthesis_ms": round(trace.synthesis_ms, 1) if trace else None,
        }
        ACCESS_LOG.info("WYOMING %s %d", exchange.kind, status, extra={"fields": fields})
