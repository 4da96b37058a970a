"""Typed, frozen settings loaded once from config.toml plus environment overrides."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import tomllib
import types
import typing
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_PREFIX = "TTS_"
DEFAULT_CONFIG_PATH = Path(__file__).resolve().parent.parent / "config.toml"


class ConfigError(ValueError):
    """A setting is missing, unknown or out of range; the message names it."""


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    # Pending connections the kernel queues; too small and a burst of new clients sees
    # dropped SYNs and a 1 s retransmit (capped by net.core.somaxconn).
    listen_backlog: int = 2048
    max_body_bytes: int = 256 * 1024
    drain_timeout_s: float = 30.0
    # After SIGTERM, open connections stay served this long (what arrives gets 503 +
    # Retry-After + Connection: close) even once nothing is in flight.
    drain_grace_s: float = 1.0
    # Slow clients: complete request headers within header_timeout_s (a new connection,
    # or from the first byte of the next request), a whole body within body_timeout_s,
    # an idle kept-alive connection closes after keepalive_timeout_s, and a response whose
    # send buffer stays full for write_timeout_s is aborted.
    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    keepalive_timeout_s: float = 75.0
    write_timeout_s: float = 30.0
    # A request answered before its body was read (413, 408): the rest of the body is read
    # and dropped for up to this long, so the client sees the answer, then it closes.
    linger_s: float = 2.0
    # Open connections per client address (auth.trusted_proxies exempt); beyond: 429.
    max_connections_per_client: int = 1024
    # Whole-request deadline for synthesis; past it the client gets 503.
    request_timeout_s: float = 120.0
    # Threads encoding mp3/opus/aac/flac (and resampling) off the event loop.
    encode_threads: int = 2
    retry_after_s: int = 2
    access_log: bool = True
    # Successful requests logged (0..1); errors are always logged.
    access_log_sample_rate: float = 1.0
    log_level: str = "INFO"
    # "json" lines, "text", or "auto" (text on a terminal, JSON otherwise).
    log_format: str = "auto"
    # GET /metrics (Prometheus); off also skips the per-request observations.
    metrics: bool = True

    def __post_init__(self) -> None:
        _require(0 <= self.port <= 65535, f"server.port must be 0..65535, got {self.port}")
        _require(self.max_body_bytes >= 1024, "server.max_body_bytes must be >= 1024")
        _require(self.drain_timeout_s >= 0, "server.drain_timeout_s must be >= 0")
        _require(self.drain_grace_s >= 0, "server.drain_grace_s must be >= 0")
        for name in ("header_timeout_s", "body_timeout_s", "keepalive_timeout_s",
                     "write_timeout_s", "linger_s"):
            _require(getattr(self, name) > 0, f"server.{name} must be > 0")
        _require(self.max_connections_per_client >= 1,
                 "server.max_connections_per_client must be >= 1")
        _require(self.request_timeout_s > 0, "server.request_timeout_s must be > 0")
        _require(self.retry_after_s >= 1, "server.retry_after_s must be >= 1")
        _require(0.0 <= self.access_log_sample_rate <= 1.0,
                 "server.access_log_sample_rate must be within 0..1")
        _require(self.log_format in ("json", "text", "auto"),
                 "server.log_format must be json, text or auto")

    @property
    def binds_loopback_only(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


@dataclass(frozen=True)
class TextSettings:
    max_text_chars: int = 5000
    # Sentences longer than this are split at clause boundaries, then at spaces.
    max_chunk_chars: int = 400
    # A caption cue ends at a sentence end, or (at its last comma) before it holds more
    # characters or seconds than these.
    caption_max_chars: int = 84
    caption_max_s: float = 6.0

    def __post_init__(self) -> None:
        _require(self.max_text_chars >= 1, "text.max_text_chars must be >= 1")
        _require(self.max_chunk_chars >= 20, "text.max_chunk_chars must be >= 20")
        _require(self.caption_max_chars >= 1, "text.caption_max_chars must be >= 1")
        _require(self.caption_max_s > 0, "text.caption_max_s must be > 0")


@dataclass(frozen=True)
class PoolSettings:
    # 0 means one worker per CPU core.
    workers: int = 0
    intra_op_threads: int = 1
    inter_op_threads: int = 1
    allow_spinning: bool = False
    # Threads of each worker's second session, used while a single request has
    # the whole pool (one client, one sentence). 0 = CPU count, 1 = disabled.
    solo_threads: int = 0
    ready_timeout_s: float = 180.0
    # A unit running longer than this marks its worker as stuck: it is killed.
    unit_timeout_s: float = 60.0
    # Shared-memory slab per worker; bounds the audio of one sentence unit.
    shm_slab_bytes: int = 16 * 1024 * 1024
    # How often a unit is retried on another worker after its worker died.
    max_unit_retries: int = 1
    # Units waiting for a worker, across all requests; beyond it: 503.
    max_queued_units: int = 4096
    restart_backoff_s: float = 0.5
    stop_timeout_s: float = 5.0
    # Processes of the espeak-ng fallback engine (about 1000x real time each); 0 = none.
    espeak_workers: int = 1
    # The neural Mandarin voice's own pool (when voices.accept_noncommercial enables it):
    # processes (0 = one per CPU core) and the slab of each. Its audio is 24 kHz: a
    # 400-character unit at speed 0.25 measured 15-20 MB (numbers and Latin letters read
    # out are the longest), more than Piper's 16 MiB slab holds.
    mandarin_workers: int = 0
    mandarin_shm_slab_bytes: int = 32 * 1024 * 1024
    # Seconds of one worker per character, by engine: the admission estimate's speed
    # until the pool's first unit is measured (then the measured speed replaces it).
    # Mandarin measured 0.004 on an idle core: twice that, so a burst at start is not
    # admitted on an idle machine's speed.
    initial_seconds_per_char: Mapping[str, float] = field(default_factory=lambda: {
        "piper": 0.006, "espeak": 0.0002, "fastspeech2": 0.008})
    # A streamed request that finds two or more workers idle (and nothing queued) runs its
    # first unit alone, the rest after it: its first audio does not share the cores with
    # its own second unit (pools with a solo session already run a lone request so).
    stream_lead_alone: bool = True

    def __post_init__(self) -> None:
        _require(self.workers >= 0, "pool.workers must be >= 0")
        _require(self.intra_op_threads >= 1, "pool.intra_op_threads must be >= 1")
        _require(self.inter_op_threads >= 1, "pool.inter_op_threads must be >= 1")
        _require(self.solo_threads >= 0, "pool.solo_threads must be >= 0")
        _require(self.unit_timeout_s > 0, "pool.unit_timeout_s must be > 0")
        _require(self.shm_slab_bytes >= 1 << 20, "pool.shm_slab_bytes must be >= 1 MiB")
        _require(self.max_unit_retries >= 0, "pool.max_unit_retries must be >= 0")
        _require(self.max_queued_units >= 1, "pool.max_queued_units must be >= 1")
        _require(self.mandarin_workers >= 0, "pool.mandarin_workers must be >= 0")
        _require(self.mandarin_shm_slab_bytes >= 1 << 20,
                 "pool.mandarin_shm_slab_bytes must be >= 1 MiB")
        speeds = self.initial_seconds_per_char
        _require(set(speeds) == set(LOCAL_ENGINES),
                 f"pool.initial_seconds_per_char must give each of {', '.join(LOCAL_ENGINES)}")
        _require(all(isinstance(v, int | float) and v > 0 for v in speeds.values()),
                 "pool.initial_seconds_per_char values must be > 0")

    @property
    def worker_count(self) -> int:
        return self.workers or (os.cpu_count() or 1)

    @property
    def solo_thread_count(self) -> int:
        return self.solo_threads or (os.cpu_count() or 1)

    @property
    def mandarin_worker_count(self) -> int:
        return self.mandarin_workers or (os.cpu_count() or 1)


BATCHING_MODES = ("off", "on", "auto")


@dataclass(frozen=True)
class BatchingSettings:
    """The front's micro-batcher for Piper voices (tts_server/batching.py). Measured slower
    than one sentence per run on CPU (docs/int8_and_batching.md), so off by default; off
    bypasses it entirely (no batch engine in the workers, no window in the front)."""

    # "off", "on" (always batch), "auto" (batch a group only while measured cheaper per item).
    mode: str = "off"
    # Sentence units per batch; a window closes when it holds this many. 4 lost less than 8
    # through HTTP on 2 workers (8 clients' sentences made one batch of 8: one core idle).
    max_batch: int = 4
    # A window stays open this long after its first unit arrives.
    max_wait_ms: float = 10.0
    # Upper edges (characters) of the front's length buckets: units of one bucket batch
    # together; the worker re-buckets by real phoneme ids.
    bucket_chars: tuple[int, ...] = (24, 48, 80, 128)
    # mode "auto": EWMA weight of a new cost, runs of each kind needed before deciding, and
    # how often (dispatches) the losing side is tried again.
    alpha: float = 0.2
    min_samples: int = 3
    explore_every: int = 20

    def __post_init__(self) -> None:
        _require(self.mode in BATCHING_MODES, f"batching.mode must be one of {BATCHING_MODES}")
        _require(self.max_batch >= 2, "batching.max_batch must be >= 2")
        _require(self.max_wait_ms >= 0, "batching.max_wait_ms must be >= 0")
        edges = list(self.bucket_chars)
        _require(edges == sorted(set(edges)) and all(e >= 1 for e in edges),
                 "batching.bucket_chars must be increasing positive integers")
        _require(0 < self.alpha <= 1, "batching.alpha must be within (0, 1]")
        _require(self.min_samples >= 1, "batching.min_samples must be >= 1")
        _require(self.explore_every >= 2, "batching.explore_every must be >= 2")

    @property
    def enabled(self) -> bool:
        return self.mode != "off"


@dataclass(frozen=True)
class SynthesisSettings:
    # Overrides of every voice's own inference scales; None keeps the voice's.
    noise_scale: float | None = None
    noise_w_scale: float | None = None
    min_speed: float = 0.25
    max_speed: float = 4.0

    def __post_init__(self) -> None:
        _require(0 < self.min_speed <= 1 <= self.max_speed, "synthesis speed range must hold 1.0")


@dataclass(frozen=True)
class BreakerSettings:
    """Per primary voice: this many engine failures within window_s open the breaker;
    its traffic then goes to the fallback engine for open_s, then one probe is let through."""

    failure_threshold: int = 5
    window_s: float = 30.0
    open_s: float = 15.0

    def __post_init__(self) -> None:
        _require(self.failure_threshold >= 1, "breaker.failure_threshold must be >= 1")
        _require(self.window_s > 0 and self.open_s > 0, "breaker windows must be > 0")


@dataclass(frozen=True)
class DegradationSettings:
    enabled: bool = True
    sample_interval_s: float = 1.0
    # Step up when the CPU average over window_s is at or above up_cpu_percent (the seed:
    # above 90 % for 10 s); step down when below down_cpu_percent over down_window_s.
    window_s: float = 10.0
    up_cpu_percent: float = 90.0
    down_window_s: float = 30.0
    down_cpu_percent: float = 70.0
    # Count CPU only while interactive requests (lanes 0 and 1) are queued or running: CPU
    # spent on background jobs alone never degrades interactive service.
    only_with_interactive_load: bool = True
    # Test seam: read the CPU % from this file instead of the machine ("" = the machine).
    cpu_reading_file: str = ""

    def __post_init__(self) -> None:
        _require(self.sample_interval_s > 0, "degradation.sample_interval_s must be > 0")
        _require(self.down_cpu_percent < self.up_cpu_percent,
                 "degradation.down_cpu_percent must be below up_cpu_percent")


@dataclass(frozen=True)
class VoiceSettings:
    default: str = "joe"
    # Extra voices: every *.onnx with its *.onnx.json in this directory.
    directory: str = ""
    # Alias -> voice name; an alias naming no voice is a startup error.
    aliases: Mapping[str, str] = field(default_factory=dict)
    # Per text language ("en", "zh"): alias (or "default") -> voice, consulted first, so an
    # alias like "female" finds a voice that speaks the text's language.
    language_aliases: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    # Primary voice -> fallback voice; unlisted voices get an espeak voice of their language.
    fallbacks: Mapping[str, str] = field(default_factory=dict)
    # Voice -> "male" | "female", for voices whose files do not say.
    genders: Mapping[str, str] = field(default_factory=dict)
    # Piper voices run as "int8" (a calibrated static-QDQ copy, built once and cached in
    # models_dir, measured ~1.6x FP32 throughput within the WER gate: docs/int8_and_batching.md)
    # or as shipped ("fp32").
    precision: str = "int8"
    int8_recipe: str = "qdq-dec-act-pc-u8"
    models_dir: str = ""
    # Voices whose training data allow NON-COMMERCIAL use only (zh-baker-female: the
    # Databaker CSMSC corpus) exist only when the operator accepts that here; off, they are
    # absent and Chinese is spoken by espeak-ng.
    accept_noncommercial: bool = False
    # Applied over language_aliases while those voices are available (accepted, built, not
    # corrupted): the entries fall back to language_aliases when they are not.
    noncommercial_language_aliases: Mapping[str, Mapping[str, str]] = field(
        default_factory=lambda: {"zh": {"default": "zh-baker-female",
                                        "female": "zh-baker-female"}})

    def __post_init__(self) -> None:
        _require(self.precision in ("int8", "fp32"), "voices.precision must be int8 or fp32")


@dataclass(frozen=True)
class CacheSettings:
    enabled: bool = True
    # "private": start our own redis-server; "off": in-process L1 only; else a redis URL
    # (redis://, rediss:// for TLS, unix://; user and password go in the URL).
    redis: str = "private"
    redis_tls_ca_file: str = ""
    redis_timeout_ms: int = 50
    redis_backoff_max_s: float = 30.0
    # Timeouts in a row before Redis is skipped (a refused connection is skipped at once).
    redis_timeouts_before_backoff: int = 3
    l1_max_bytes: int = 256 * 1024 * 1024
    max_entry_bytes: int = 16 * 1024 * 1024
    ttl_s: int = 7 * 24 * 3600
    namespace: str = "tts:v1"
    private_redis_maxmemory_bytes: int = 512 * 1024 * 1024
    # volatile-lru: cache and limiter keys all carry a TTL and are evicted as needed;
    # queued and running jobs (no TTL) never are.
    private_redis_policy: str = "volatile-lru"
    # How often Redis is pinged (and the private redis-server checked and restarted if it
    # died); two missed pings in a row mark Redis down in /readyz and tts_redis_up.
    redis_check_interval_s: float = 1.0
    # > 0: instances sharing Redis also coalesce, waiting up to this long for a peer.
    cross_instance_wait_ms: int = 0
    # Announcements synthesized and stored at start (the "fixed broadcast copy" case).
    warmup_texts: tuple[str, ...] = ()
    warmup_voice: str = ""
    # Recently parsed identical request bodies (up to parsed_body_max_bytes each): a repeated
    # request skips JSON parsing and text normalization. 0 disables.
    parsed_bodies: int = 4096
    parsed_body_max_bytes: int = 2048

    def __post_init__(self) -> None:
        _require(self.redis_timeout_ms >= 1, "cache.redis_timeout_ms must be >= 1")
        _require(self.redis_check_interval_s > 0, "cache.redis_check_interval_s must be > 0")
        _require(self.l1_max_bytes >= 0, "cache.l1_max_bytes must be >= 0")
        _require(self.ttl_s >= 1, "cache.ttl_s must be >= 1")
        _require(self.cross_instance_wait_ms >= 0, "cache.cross_instance_wait_ms must be >= 0")
        _require(bool(self.namespace), "cache.namespace must not be empty")
        _require(self.parsed_bodies >= 0, "cache.parsed_bodies must be >= 0")
        _require(self.redis_timeouts_before_backoff >= 1,
                 "cache.redis_timeouts_before_backoff must be >= 1")

    @property
    def redis_mode(self) -> str:
        return self.redis if self.redis in ("private", "off") else "url"


ACCESS_POLICIES = ("open", "token", "loopback")


@dataclass(frozen=True)
class TokenSettings:
    """One API token, stored only as the SHA-256 hex of its value."""

    name: str
    sha256: str
    tier: str = "standard"
    # Per-token overrides of the tier's limits; None keeps the tier's.
    requests_per_s: float | None = None
    burst: int | None = None
    chars_per_min: int | None = None

    def __post_init__(self) -> None:
        digest = self.sha256.lower()
        _require(
            len(digest) == 64 and all(c in "0123456789abcdef" for c in digest),
            f"token {self.name!r}: sha256 must be 64 hex characters",
        )


@dataclass(frozen=True)
class AuthSettings:
    # Anonymous access with no token. With no token configured at all, a loopback-only
    # server is anonymous anyway (a fresh ./run.sh just works); any other address refuses
    # to start unless this is true.
    allow_anonymous: bool = False
    anonymous_tier: str = "anonymous"
    tokens: tuple[TokenSettings, ...] = ()
    # TOML file with more [[tokens]]; re-read on SIGHUP (revocation without restart).
    tokens_file: str = ""
    # X-Forwarded-For is believed only from these peer addresses.
    trusted_proxies: tuple[str, ...] = ()
    # Who may reach the web page, /healthz + /readyz, and /metrics: open | token | loopback.
    web_access: str = "open"
    probe_access: str = "open"
    metrics_access: str = "loopback"

    def __post_init__(self) -> None:
        for name in ("web_access", "probe_access", "metrics_access"):
            value = getattr(self, name)
            _require(value in ACCESS_POLICIES, f"auth.{name} must be one of {ACCESS_POLICIES}")
        for address in self.trusted_proxies:
            try:
                ipaddress.ip_network(address, strict=False)
            except ValueError:
                raise ConfigError(
                    f"auth.trusted_proxies: {address!r} is not an address"
                ) from None

    @property
    def has_tokens(self) -> bool:
        return bool(self.tokens or self.tokens_file)


FEATURES = ("tts", "stream", "jobs")


@dataclass(frozen=True)
class TierSettings:
    requests_per_s: float = 5.0
    burst: int = 10
    chars_per_min: int = 20_000
    # Characters that may be spent at once; 0 = a full minute's quota.
    chars_burst: int = 0
    features: tuple[str, ...] = ("tts", "stream")
    # Queue lane: 0 runs before 1 (2 is for background jobs). The degradation ladder keeps
    # priority-0 tiers on the primary engine and never sheds them.
    priority: int = 1
    # Latency a request of this tier accepts; a client may ask for less (X-Deadline-Ms).
    # A request whose estimated wait exceeds it is refused at once with 503.
    deadline_s: float = 30.0

    def __post_init__(self) -> None:
        _require(self.requests_per_s > 0, "tier requests_per_s must be > 0")
        _require(self.priority in (0, 1, 2), "tier priority must be 0, 1 or 2")
        _require(self.deadline_s > 0, "tier deadline_s must be > 0")
        _require(self.burst >= 1, "tier burst must be >= 1")
        _require(self.chars_per_min >= 1, "tier chars_per_min must be >= 1")
        unknown = set(self.features) - set(FEATURES)
        _require(not unknown, f"unknown tier feature(s) {sorted(unknown)}; known: {FEATURES}")


def _default_tiers() -> dict[str, TierSettings]:
    return {
        "vip": TierSettings(50.0, 100, 500_000, 0, FEATURES, priority=0, deadline_s=10.0),
        "standard": TierSettings(10.0, 20, 50_000, 0, FEATURES),
        "anonymous": TierSettings(20.0, 100, 200_000, 0, ("tts", "stream")),
    }


@dataclass(frozen=True)
class LimitsSettings:
    enabled: bool = True
    # "memory": per instance; "redis": one limit shared by every instance (atomic Lua).
    backend: str = "memory"
    # With backend = "redis": "cache" uses the cache's Redis, or give a redis:// URL.
    redis: str = "cache"
    redis_timeout_ms: int = 50
    # Redis unreachable: "local" falls back to this instance's limiter, "open" lets
    # requests through, "closed" answers 503.
    on_redis_error: str = "local"
    # After a Redis failure the limiter applies on_redis_error for this long before it
    # tries Redis again (one warning per outage, not one per request).
    redis_retry_s: float = 1.0
    tiers: Mapping[str, TierSettings] = field(default_factory=_default_tiers)

    def __post_init__(self) -> None:
        _require(self.backend in ("memory", "redis"), "limits.backend must be memory or redis")
        _require(self.on_redis_error in ("local", "open", "closed"),
                 "limits.on_redis_error must be local, open or closed")
        _require(bool(self.tiers), "limits.tiers must define at least one tier")
        _require(self.redis_retry_s > 0, "limits.redis_retry_s must be > 0")


def _default_openai_models() -> dict[str, str]:
    return {"tts-1": "piper", "tts-1-hd": "piper", "gpt-4o-mini-tts": "piper"}


def _default_openai_voices() -> dict[str, str]:
    names = ("alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage",
             "shimmer", "verse")
    return {name: "default" for name in names}


@dataclass(frozen=True)
class OpenAISettings:
    """POST /v1/audio/speech: OpenAI model names -> engine, OpenAI voice names -> our voice."""

    models: Mapping[str, str] = field(default_factory=_default_openai_models)
    voices: Mapping[str, str] = field(default_factory=_default_openai_voices)


@dataclass(frozen=True)
class JobSettings:
    enabled: bool = True
    # Texts longer than this get 413 (interactive requests stop at text.max_text_chars).
    max_text_chars: int = 100_000
    # Job bodies may be larger than server.max_body_bytes (the text is longer).
    max_body_bytes: int = 1_048_576
    # Jobs synthesized at once by one instance.
    max_concurrent: int = 2
    # Sentences a running job hands the pool at once; 0 = twice the piper pool's workers.
    batch_units: int = 0
    # Queued (not yet running) jobs: per owner (429 beyond) and in total (503 beyond).
    max_queued_per_owner: int = 20
    max_queued_total: int = 1000
    # Finished jobs and their audio are kept this long, then expire (404).
    result_ttl_s: int = 86_400
    # Claims of one job that may end without an outcome (a dead instance, an engine fault).
    max_attempts: int = 3
    # A running job's lease; an instance that stops renewing it loses the job to another.
    lease_ttl_s: float = 30.0
    # How often an idle runner looks for queued jobs submitted to other instances.
    poll_interval_s: float = 0.5
    # Delay before a job that hit a transient fault (engine down, deadline) runs again.
    retry_delay_s: float = 5.0
    # The runner starts no new batch while the degradation ladder is at this level or
    # above (0 = never pause): jobs alone keep the CPU busy, which the ladder reads as
    # overload and would answer by degrading interactive traffic.
    pause_at_degradation_level: int = 1
    # Redis key prefix of every job key.
    namespace: str = "tts:jobs:v1"
    # Completion webhooks go only to these hosts ("host" or "host:port"); others get 400.
    webhook_hosts: tuple[str, ...] = ()
    # HMAC-SHA256 key of X-TTS-Signature; "" sends webhooks unsigned.
    webhook_secret: str = ""
    webhook_attempts: int = 5
    webhook_timeout_s: float = 5.0
    # First delay between webhook attempts; doubles after each failure.
    webhook_backoff_s: float = 1.0

    def __post_init__(self) -> None:
        _require(self.max_text_chars >= 1, "jobs.max_text_chars must be >= 1")
        _require(self.max_body_bytes >= 1024, "jobs.max_body_bytes must be >= 1024")
        _require(self.max_concurrent >= 1, "jobs.max_concurrent must be >= 1")
        _require(self.batch_units >= 0, "jobs.batch_units must be >= 0")
        _require(self.max_queued_per_owner >= 1, "jobs.max_queued_per_owner must be >= 1")
        _require(self.max_queued_total >= 1, "jobs.max_queued_total must be >= 1")
        _require(self.result_ttl_s >= 1, "jobs.result_ttl_s must be >= 1")
        _require(self.max_attempts >= 1, "jobs.max_attempts must be >= 1")
        _require(self.lease_ttl_s >= 1, "jobs.lease_ttl_s must be >= 1")
        _require(self.poll_interval_s > 0, "jobs.poll_interval_s must be > 0")
        _require(self.retry_delay_s >= 0, "jobs.retry_delay_s must be >= 0")
        _require(0 <= self.pause_at_degradation_level <= 3,
                 "jobs.pause_at_degradation_level must be 0..3")
        _require(bool(self.namespace), "jobs.namespace must not be empty")
        _require(self.webhook_attempts >= 1, "jobs.webhook_attempts must be >= 1")
        _require(self.webhook_timeout_s > 0, "jobs.webhook_timeout_s must be > 0")
        _require(self.webhook_backoff_s >= 0, "jobs.webhook_backoff_s must be >= 0")


WYOMING_ACCESS = ("loopback", "open", "token")


@dataclass(frozen=True)
class WyomingSettings:
    """The Wyoming protocol listener (Home Assistant), in the HTTP front's process and loop."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 10200
    # Who may use it: "loopback" peers, "open" (anyone who reaches the port), or "token":
    # every describe / synthesize / synthesize-start event carries an API token in
    # data.token. Home Assistant sends no token: it needs "loopback" or "open".
    access: str = "loopback"
    # The tier of callers without a token ("" = auth.anonymous_tier).
    tier: str = ""
    # The program's name in `info` (what Home Assistant shows).
    program_name: str = "tts-server"
    # Samples per audio-chunk event (wyoming-piper's default).
    samples_per_chunk: int = 1024
    # Connections served at once; more are told so in an error event and closed.
    max_connections: int = 64
    # Largest header line, and largest data block, of one event a client sends.
    max_event_bytes: int = 65536
    # Largest payload a client may attach (a TTS client sends none); larger: error, closed.
    max_payload_bytes: int = 65536
    # A connection with no event for this long is closed (with an error event).
    idle_timeout_s: float = 300.0
    # A client that takes none of its audio for this long is disconnected.
    write_timeout_s: float = 30.0
    # Characters one synthesize-start ... synthesize-stop stream may carry in all.
    max_stream_chars: int = 20000
    # Sentences synthesized ahead of the one being sent (the audio held per client is
    # bounded by it); later ones wait as text, bounded by max_stream_chars.
    lookahead_sentences: int = 4
    # At shutdown, connections still busy get this long to finish, then are closed.
    drain_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        _require(0 <= self.port <= 65535, f"wyoming.port must be 0..65535, got {self.port}")
        _require(self.access in WYOMING_ACCESS, f"wyoming.access must be one of {WYOMING_ACCESS}")
        _require(self.samples_per_chunk >= 64, "wyoming.samples_per_chunk must be >= 64")
        _require(self.max_connections >= 1, "wyoming.max_connections must be >= 1")
        _require(self.max_event_bytes >= 1024, "wyoming.max_event_bytes must be >= 1024")
        _require(self.max_payload_bytes >= 0, "wyoming.max_payload_bytes must be >= 0")
        _require(self.idle_timeout_s > 0 and self.write_timeout_s > 0,
                 "wyoming timeouts must be > 0")
        _require(self.max_stream_chars >= 1, "wyoming.max_stream_chars must be >= 1")
        _require(self.lookahead_sentences >= 1, "wyoming.lookahead_sentences must be >= 1")
        _require(self.drain_timeout_s >= 0, "wyoming.drain_timeout_s must be >= 0")


@dataclass(frozen=True)
class StreamInSettings:
    """GET /v1/audio/speech/stream: text in over a WebSocket, audio out per sentence."""

    # Characters of one text message; more closes the session with 1009.
    max_fragment_chars: int = 2000
    # Characters one session may send in all; more closes it with 4413.
    max_session_chars: int = 20000
    # Largest WebSocket message (bytes) read at all; larger closes with 1009.
    max_message_bytes: int = 65536
    # Sentences synthesized ahead of the one being sent (the audio held per client is
    # bounded by it); later ones wait as text, bounded by max_session_chars.
    lookahead_sentences: int = 4
    # A client that reads none of its audio for this long is disconnected with 4408.
    send_timeout_s: float = 10.0
    # After such a close, the time the client gets to take the close frame.
    close_timeout_s: float = 5.0
    # The first message (the config) must arrive within this.
    config_timeout_s: float = 10.0
    # No message for this long while nothing is being spoken: closed with 4408.
    idle_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        _require(self.max_fragment_chars >= 1, "stream_in.max_fragment_chars must be >= 1")
        _require(self.max_session_chars >= self.max_fragment_chars,
                 "stream_in.max_session_chars must be >= max_fragment_chars")
        _require(self.max_message_bytes >= 1024, "stream_in.max_message_bytes must be >= 1024")
        _require(self.lookahead_sentences >= 1, "stream_in.lookahead_sentences must be >= 1")
        _require(min(self.send_timeout_s, self.close_timeout_s, self.config_timeout_s,
                     self.idle_timeout_s) > 0, "stream_in timeouts must be > 0")

REMOTE_FORMATS = ("wav", "pcm")
# Engines of this server's own worker processes: a remote entry may not take their names.
LOCAL_ENGINES = ("piper", "espeak", "fastspeech2")
# Fields of the upstream's request body that this server sets itself.
REMOTE_RESERVED_FIELDS = ("model", "input", "response_format", "speed")


@dataclass(frozen=True)
class RemoteEngineSettings:
    """One OpenAI-shaped upstream, POST {base_url}/v1/audio/speech (tts_server/remote/), and
    the voices it speaks; units it fails go to each voice's local fallback."""

    # The engine's name: the pool's, X-Engine's and the voices' "engine" in /api/voices.
    name: str
    base_url: str
    # Our voice name -> the upstream's voice (or reference audio), sent as `voice_field`.
    voices: Mapping[str, str]
    model: str = ""
    voice_field: str = "voice"
    # Name of the environment variable holding the API key; "" sends no Authorization.
    api_key_env: str = ""
    language: str = "en_US"
    gender: str = ""
    # Local voice for units the upstream fails; "" = one of the same language and gender.
    fallback: str = ""
    response_format: str = "wav"
    # The voices' rate: raw PCM is read at it, WAV at another rate is resampled to it.
    sample_rate: int = 22050
    # Sentence units sent to the upstream at once; more wait in priority lanes.
    max_concurrent: int = 1
    max_queued_units: int = 1024
    connect_timeout_s: float = 2.0
    # Longest silence while waiting for the answer's bytes, and longest call in all.
    read_timeout_s: float = 30.0
    unit_timeout_s: float = 60.0
    # Idle connections are dropped after this; keep it under the upstream's keep-alive
    # (uvicorn's default is 5 s), or a reused connection may already be closed.
    keepalive_s: float = 4.0
    max_response_bytes: int = 64 * 1024 * 1024
    # Less audio than this per character (at speed 1.0) is a broken answer.
    min_audio_s_per_char: float = 0.01
    # A 429's Retry-After pauses the upstream for at most this long.
    max_retry_after_s: float = 60.0
    # Starting point of the wait estimate until calls have been measured.
    initial_seconds_per_char: float = 0.005
    # More JSON fields of every request body (e.g. IndexTTS-2's extra_params).
    extra: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        where = f"engines.remote {self.name!r}"
        _require(bool(re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,31}", self.name)),
                 f"engines.remote name {self.name!r} must be 1-32 of a-z, 0-9, _ and -")
        _require(self.name not in LOCAL_ENGINES, f"{where}: the name of a local engine")
        _check_base_url(where, self.base_url)
        _require(bool(self.voices), f"{where}: voices must map at least one voice")
        for voice, target in self.voices.items():
            _require(bool(voice) and bool(target), f"{where}: voices.{voice} is empty")
        _require(self.response_format in REMOTE_FORMATS,
                 f"{where}: response_format must be one of {REMOTE_FORMATS}")
        _require(self.gender in ("", "male", "female"), f"{where}: gender must be male or female")
        _require(bool(re.fullmatch(r"[a-z]{2,3}([_-][A-Za-z0-9]+)*", self.language)),
                 f"{where}: language must look like en_US, got {self.language!r}")
        reserved = set(REMOTE_RESERVED_FIELDS) & ({self.voice_field} | set(self.extra))
        _require(not reserved, f"{where}: {sorted(reserved)} are set by the server")
        _require(self.voice_field not in self.extra, f"{where}: extra sets voice_field")
        _require(not self.api_key_env or self.api_key_env in os.environ,
                 f"{where}: environment variable {self.api_key_env} (api_key_env) is not set")
        self._check_limits(where)

    def _check_limits(self, where: str) -> None:
        _require(8000 <= self.sample_rate <= 192000, f"{where}: sample_rate must be 8000..192000")
        _require(1 <= self.max_concurrent <= 256, f"{where}: max_concurrent must be 1..256")
        _require(self.max_queued_units >= 1, f"{where}: max_queued_units must be >= 1")
        for name in ("connect_timeout_s", "read_timeout_s", "unit_timeout_s", "keepalive_s",
                     "initial_seconds_per_char"):
            _require(getattr(self, name) > 0, f"{where}: {name} must be > 0")
        _require(self.max_response_bytes >= 1024, f"{where}: max_response_bytes must be >= 1024")
        _require(self.min_audio_s_per_char >= 0, f"{where}: min_audio_s_per_char must be >= 0")
        _require(self.max_retry_after_s >= 0, f"{where}: max_retry_after_s must be >= 0")

    @property
    def api_key(self) -> str:
        return os.environ.get(self.api_key_env, "") if self.api_key_env else ""

    @property
    def speech_url(self) -> str:
        return self.base_url.rstrip("/") + "/v1/audio/speech"


def _check_base_url(where: str, url: str) -> None:
    parts = urllib.parse.urlsplit(url)
    ok = parts.scheme in ("http", "https") and bool(parts.hostname)
    _require(ok and not parts.query and not parts.fragment,
             f"{where}: base_url must be http(s)://host[:port][/path], got {url!r}")
    try:
        parts.port  # noqa: B018 (raises on a bad port)
    except ValueError:
        raise ConfigError(f"{where}: base_url has a bad port: {url!r}") from None


@dataclass(frozen=True)
class EngineSettings:
    """Engines beyond the local pools: [[engines.remote]] entries (one upstream each)."""

    remote: tuple[RemoteEngineSettings, ...] = ()

    def __post_init__(self) -> None:
        names = [entry.name for entry in self.remote]
        twice = sorted({n for n in names if names.count(n) > 1})
        _require(not twice, f"engines.remote: name(s) {twice} used twice")
        voices = [voice for entry in self.remote for voice in entry.voices]
        twice = sorted({v for v in voices if voices.count(v) > 1})
        _require(not twice, f"engines.remote: voice(s) {twice} defined twice")


@dataclass(frozen=True)
class Settings:
    server: ServerSettings = field(default_factory=ServerSettings)
    text: TextSettings = field(default_factory=TextSettings)
    pool: PoolSettings = field(default_factory=PoolSettings)
    batching: BatchingSettings = field(default_factory=BatchingSettings)
    synthesis: SynthesisSettings = field(default_factory=SynthesisSettings)
    voices: VoiceSettings = field(default_factory=VoiceSettings)
    cache: CacheSettings = field(default_factory=CacheSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    limits: LimitsSettings = field(default_factory=LimitsSettings)
    openai: OpenAISettings = field(default_factory=OpenAISettings)
    breaker: BreakerSettings = field(default_factory=BreakerSettings)
    degradation: DegradationSettings = field(default_factory=DegradationSettings)
    jobs: JobSettings = field(default_factory=JobSettings)
    wyoming: WyomingSettings = field(default_factory=WyomingSettings)
    stream_in: StreamInSettings = field(default_factory=StreamInSettings)

    engines: EngineSettings = field(default_factory=EngineSettings)

    def __post_init__(self) -> None:
        guarded = self.auth.allow_anonymous or self.auth.has_tokens
        _require(
            self.server.binds_loopback_only or guarded,
            f"refusing to serve on {self.server.host} without an API token: add [[auth.tokens]]"
            " (python -m tts_server new-token) or set auth.allow_anonymous = true explicitly",
        )
        tiers = self.limits.tiers
        for token in self.auth.tokens:
            _require(token.tier in tiers, f"token {token.name!r}: unknown tier {token.tier!r}")
        _require(self.auth.anonymous_tier in tiers,
                 f"auth.anonymous_tier {self.auth.anonymous_tier!r} is not in limits.tiers")
        _require(self.wyoming.tier in ("", *tiers),
                 f"wyoming.tier {self.wyoming.tier!r} is not in limits.tiers")
        _require(self.wyoming.access != "token" or self.auth.has_tokens,
                 'wyoming.access = "token" needs API tokens ([[auth.tokens]] or tokens_file)')

    @property
    def anonymous_allowed(self) -> bool:
        return self.auth.allow_anonymous or (
            not self.auth.has_tokens and self.server.binds_loopback_only
        )

    @property
    def local_only(self) -> bool:
        """No token at all and only a loopback address: one local user, the whole API."""
        return not self.auth.has_tokens and self.server.binds_loopback_only

    def replace(self, **sections: Mapping[str, Any]) -> Settings:
        """A copy with some keys of some sections changed (used by the CLI and tests)."""
        merged = _as_dict(self)
        for section, values in sections.items():
            merged.setdefault(section, {}).update(values)
        return settings_from_dict(merged)


def _as_dict(settings: Settings) -> dict[str, dict[str, Any]]:
    return {f.name: dict(vars(getattr(settings, f.name))) for f in dataclasses.fields(settings)}


def coerce(path: str, value: Any, annotation: Any) -> Any:
    """Check a value against its annotation, building nested dataclasses, tuples and tables."""
    origin = typing.get_origin(annotation)
    if origin in (types.UnionType, typing.Union):
        if value is None:
            return None
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
        origin = typing.get_origin(annotation)
    if dataclasses.is_dataclass(annotation):
        if isinstance(value, annotation):
            return value
        _require(isinstance(value, Mapping), f"{path} must be a table")
        return _build_section(path, annotation, value)
    if origin is tuple:
        _require(isinstance(value, list | tuple), f"{path} must be a list")
        item = typing.get_args(annotation)[0]
        return tuple(coerce(f"{path}[{i}]", v, item) for i, v in enumerate(value))
    if origin is not None and issubclass(origin, Mapping):
        _require(isinstance(value, Mapping), f"{path} must be a table")
        item = typing.get_args(annotation)[1]
        return {str(k): coerce(f"{path}.{k}", v, item) for k, v in value.items()}
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    ok = isinstance(value, annotation) and not (annotation is int and isinstance(value, bool))
    _require(ok, f"{path} must be {annotation.__name__}, got {value!r}")
    return value


def _build_section(section: str, cls: type, values: Mapping[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    _require(not unknown, f"unknown setting(s) in [{section}]: {', '.join(unknown)}")
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in values
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    _require(not missing, f"[{section}] needs {', '.join(missing)}")
    kwargs = {k: coerce(f"{section}.{k}", v, hints[k]) for k, v in values.items()}
    return cls(**kwargs)


def settings_from_dict(data: Mapping[str, Mapping[str, Any]]) -> Settings:
    hints = typing.get_type_hints(Settings)
    unknown = sorted(set(data) - set(hints))
    _require(not unknown, f"unknown config section(s): {', '.join(unknown)}")
    sections = {name: _build_section(name, hints[name], data.get(name, {})) for name in hints}
    return Settings(**sections)


def _parse_env_value(raw: str) -> Any:
    """Environment values are TOML literals (8080, true, 0.5, "x"); anything else is a string."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def env_overrides(environ: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """TTS_<SECTION>__<KEY>=value, e.g. TTS_POOL__WORKERS=4 or TTS_SERVER__LOG_FORMAT=json."""
    out: dict[str, dict[str, Any]] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        section, _, key = name[len(ENV_PREFIX) :].lower().partition("__")
        out.setdefault(section, {})[key] = _parse_env_value(raw)
    return out


def load_settings(
    path: Path | str | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Read the TOML file, apply environment overrides, validate; raise ConfigError on any fault."""
    path = Path(path) if path else DEFAULT_CONFIG_PATH
    try:
        data: dict[str, dict[str, Any]] = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"config file not found: {path}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    deep_update(data, env_overrides(os.environ if environ is None else environ))
    return settings_from_dict(data)


def deep_update(target: dict[str, Any], changes: Mapping[str, Any]) -> None:
    """Tables merge key by key (so one tier can change alone); other values replace."""
    for key, value in changes.items():
        if isinstance(value, Mapping) and isinstance(target.get(key), dict):
            deep_update(target[key], value)
        else:
            target[key] = value
