"""Application factory: routes, middlewares and resources started in dependency order."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor

import redis.asyncio as aioredis
from aiohttp import web

from inference import mandarin, protocol
from inference.options import ThreadPlan
from inference.pool import InferencePool, PoolOptions, PoolStartError
from tts_server import keys
from tts_server.batching.pool import BatchingPool
from tts_server.cache.redis_server import RedisProcess, find_redis_server, remove_stale_folders
from tts_server.cache.supervisor import RedisWatch
from tts_server.cache.tiers import AudioCache, MemoryLRU, RedisTier
from tts_server.config import BatchingSettings, CacheSettings, ConfigError, Settings
from tts_server.errors import TTSError
from tts_server.gateway import Gateway
from tts_server.gateway.ratelimit import RedisLimiter
from tts_server.http.middlewares import MIDDLEWARES, add_request_headers
from tts_server.http.routes import setup_routes
from tts_server.jobs import setup_jobs
from tts_server.metrics import LiveState, Metrics, StateCollector
from tts_server.remote.metrics import RemoteCollector
from tts_server.remote.pool import RemotePool, build_remote_pools
from tts_server.remote.voices import remote_voices, with_remote_fallbacks
from tts_server.resilience.breaker import BreakerPolicy, CircuitBreaker
from tts_server.resilience.degradation import DegradationLadder, file_cpu_reader, system_cpu_reader
from tts_server.resilience.state import RunState
from tts_server.speech.request import parse_tts_request
from tts_server.speech.service import SpeechService
from tts_server.speech.synthesizer import Synthesizer
from tts_server.speech.voices import VoiceRegistry
from tts_server.wyoming import wyoming_context

LOG = logging.getLogger("tts.server")
PRIVATE_REDIS = web.AppKey("private_redis", RedisProcess)


def worker_spec_factory(settings: Settings, files: tuple[protocol.VoiceFiles, ...],
                        solo_threads: int, max_batch: int = 0, slab_bytes: int = 0
                        ) -> Callable[[int, str], protocol.WorkerSpec]:
    pool_settings = settings.pool

    def make_spec(index: int, slab_name: str) -> protocol.WorkerSpec:
        return protocol.WorkerSpec(
            index=index,
            slab_name=slab_name,
            slab_bytes=slab_bytes or pool_settings.shm_slab_bytes,
            voices=files,
            threads=ThreadPlan(pool_settings.intra_op_threads, pool_settings.inter_op_threads,
                               pool_settings.allow_spinning, solo_threads),
            noise_scale=settings.synthesis.noise_scale,
            noise_w_scale=settings.synthesis.noise_w_scale,
            max_batch=max_batch,
            log_level=settings.server.log_level,
            log_format=settings.server.log_format,
        )

    return make_spec


# The Mandarin voice's own pool: a model that cannot load then stops only this pool (its
# text goes to espeak-ng), never Piper's workers; measured in README "The Mandarin voice".
MANDARIN = mandarin.ENGINE_NAME


def build_pools(settings: Settings, registry: VoiceRegistry
                ) -> dict[str, InferencePool | RemotePool]:
    """One pool per engine: piper (one process per core), espeak (the fallback), when
    enabled the Mandarin voice (one process per core, its own slab size), and one per
    [[engines.remote]] upstream (no processes: HTTP calls from the front)."""
    pool_settings = settings.pool
    sizes = {"piper": pool_settings.worker_count, "espeak": pool_settings.espeak_workers,
             MANDARIN: pool_settings.mandarin_worker_count}
    pools = {}
    for engine, workers in sizes.items():
        files = registry.files_for(engine)
        if not files or workers < 1:
            continue
        # Piper's lone request runs on a wide second session (pool.solo_threads). The
        # Mandarin models gain nothing from a second intra-op thread on an idle machine
        # (measured: 1 process x 2 threads 42 audio-s/s, 2 processes x 1 thread 91), so
        # its units always fan out over the workers instead.
        solo_threads = pool_settings.solo_thread_count if engine == "piper" else 1
        options = PoolOptions(
            workers=workers,
            name=engine,
            unit_timeout_s=pool_settings.unit_timeout_s,
            max_unit_retries=pool_settings.max_unit_retries,
            max_queued_units=pool_settings.max_queued_units,
            ready_timeout_s=pool_settings.ready_timeout_s,
            restart_backoff_s=pool_settings.restart_backoff_s,
            stop_timeout_s=pool_settings.stop_timeout_s,
            solo_enabled=solo_threads > 1,
            initial_seconds_per_char=pool_settings.initial_seconds_per_char[engine],
        )
        batching = settings.batching
        max_batch = batching.max_batch if batching.enabled and engine == "piper" else 0
        slab = pool_settings.mandarin_shm_slab_bytes if engine == MANDARIN else 0
        make_spec = worker_spec_factory(settings, files, solo_threads, max_batch, slab)
        pools[engine] = InferencePool(options, make_spec)
    pools.update(build_remote_pools(settings.engines.remote))
    return pools


async def start_pools(pools: dict[str, InferencePool], registry: VoiceRegistry) -> None:
    """Start every pool. The Mandarin pool failing to start (a model that will not load)
    drops it and its voice, so Chinese goes to espeak-ng; any other failure stops all."""
    try:
        results = await asyncio.gather(*(pool.start() for pool in pools.values()),
                                       return_exceptions=True)
    except BaseException:  # cancelled while starting: no worker may be left behind
        await asyncio.gather(*(pool.stop() for pool in pools.values()))
        raise
    failed = dict(zip(pools, results, strict=True))
    mandarin_failure = failed.pop(MANDARIN, None)
    if isinstance(mandarin_failure, PoolStartError):
        LOG.error("the %s pool cannot start (%s): voice(s) %s off, Chinese falls back to "
                  "espeak-ng", MANDARIN, mandarin_failure,
                  ", ".join(registry.remove_engine(MANDARIN)))
        del pools[MANDARIN]
    elif mandarin_failure is not None:
        failed[MANDARIN] = mandarin_failure
    error = next((r for r in failed.values() if isinstance(r, BaseException)), None)
    if error is not None:
        await asyncio.gather(*(pool.stop() for pool in pools.values()))
        raise error


def batching_front(pools: dict[str, InferencePool], settings: BatchingSettings
                   ) -> dict[str, InferencePool | BatchingPool]:
    """What the Synthesizer submits to: the Piper pool behind the micro-batcher when
    batching is on or auto; with batching off, the pools themselves (no batcher at all)."""
    if not settings.enabled or "piper" not in pools:
        return dict(pools)
    return {**pools, "piper": BatchingPool(pools["piper"], settings)}


def build_breakers(settings: Settings, registry: VoiceRegistry) -> dict[str, CircuitBreaker]:
    policy = BreakerPolicy(settings.breaker.failure_threshold, settings.breaker.window_s,
                           settings.breaker.open_s)
    return {name: CircuitBreaker(policy) for name in registry.fallbacks}


async def pool_context(app: web.Application) -> AsyncIterator[None]:
    """Start every worker before serving; stop them (and unlink shared memory) last."""
    settings, registry = app[keys.SETTINGS], app[keys.REGISTRY]
    pools = build_pools(settings, registry)
    app[keys.POOLS] = pools
    await start_pools(pools, registry)
    LOG.info(registry.noncommercial_summary())
    metrics = app.get(keys.METRICS)
    front = batching_front(pools, settings.batching)
    app[keys.SYNTHESIZER] = Synthesizer(front, registry, build_breakers(settings, registry),
                                        settings.server.request_timeout_s,
                                        settings.server.retry_after_s,
                                        on_unit=metrics.observe_unit if metrics else None,
                                        stream_lead_alone=settings.pool.stream_lead_alone)
    yield
    await asyncio.gather(*(p.close() for p in front.values() if isinstance(p, BatchingPool)))
    await asyncio.gather(*(pool.stop() for pool in pools.values()))


async def _redis_url(settings: CacheSettings, app: web.Application) -> str | None:
    """The L2 URL: an external one, a private redis-server we start, or None (L1 only)."""
    if settings.redis_mode == "url":
        return settings.redis
    if settings.redis_mode == "off":
        LOG.info("cache: in-process L1 only (cache.redis = \"off\")")
        return None
    if find_redis_server() is None:
        LOG.warning("cache: no redis-server found; serving with the in-process cache only")
        return None
    for folder in remove_stale_folders():
        LOG.info("cache: removed %s, left by a server that was killed", folder)
    private = RedisProcess(settings.private_redis_maxmemory_bytes, settings.private_redis_policy)
    private.spawn()  # on the loop's thread: the child's parent-death signal follows it
    await asyncio.get_running_loop().run_in_executor(None, private.wait_ready)
    app[PRIVATE_REDIS] = private
    return private.url


async def cache_context(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.SETTINGS].cache
    cache = None
    if settings.enabled:
        url = await _redis_url(settings, app)
        if url is not None:
            app[keys.REDIS_URL] = url
        l2 = None
        if url is not None:
            l2 = RedisTier.from_url(url, settings.ttl_s, settings.redis_timeout_ms / 1000,
                                    settings.redis_backoff_max_s, settings.redis_tls_ca_file,
                                    settings.redis_timeouts_before_backoff)
        cache = AudioCache(MemoryLRU(settings.l1_max_bytes), l2, settings.max_entry_bytes)
        if url is not None:
            app[keys.REDIS_WATCH] = RedisWatch(url, app.get(PRIVATE_REDIS),
                                               settings.redis_check_interval_s,
                                               on_recovered=l2.recovered if l2 else lambda: None)
    extra = {"noise_scale": app[keys.SETTINGS].synthesis.noise_scale,
             "noise_w_scale": app[keys.SETTINGS].synthesis.noise_w_scale}
    app[keys.SPEECH] = SpeechService(app[keys.SYNTHESIZER], cache, extra,
                                     settings.cross_instance_wait_ms / 1000, settings.namespace)
    loop = asyncio.get_running_loop()
    warmup = loop.create_task(warm_up(app))
    watch = app.get(keys.REDIS_WATCH)
    watching = loop.create_task(watch.run()) if watch is not None else None
    yield
    warmup.cancel()
    if watching is not None:
        watching.cancel()  # before the private server stops: no restart at shutdown
        await asyncio.gather(watching, return_exceptions=True)
        await watch.close()
    if cache is not None:
        await cache.close()
    if PRIVATE_REDIS in app:
        app[PRIVATE_REDIS].stop()


async def gateway_context(app: web.Application) -> AsyncIterator[None]:
    """Tokens and limiter; with limits.backend = "redis" one limit spans every instance."""
    settings = app[keys.SETTINGS]
    limits = settings.limits
    client = None
    redis_limiter = None
    if limits.enabled and limits.backend == "redis":
        url = app.get(keys.REDIS_URL) if limits.redis == "cache" else limits.redis
        if url is None:
            raise ConfigError(
                'limits.backend = "redis" needs a Redis (cache.redis or limits.redis)'
            )
        timeout_s = limits.redis_timeout_ms / 1000
        client = aioredis.Redis.from_url(url, socket_timeout=timeout_s,
                                         socket_connect_timeout=timeout_s)
        redis_limiter = RedisLimiter(client, timeout_s)
    app[keys.GATEWAY] = Gateway(settings, redis_limiter)
    yield
    if client is not None:
        await client.aclose()


async def degradation_context(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.SETTINGS].degradation
    task = None
    if settings.enabled:
        reader = (file_cpu_reader(settings.cpu_reading_file) if settings.cpu_reading_file
                  else system_cpu_reader())
        pools = app[keys.POOLS]
        ladder = DegradationLadder(
            settings, app[keys.RUN_STATE], reader,
            interactive_load=lambda: any(p.busy_with(max_priority=1) for p in pools.values()),
        )
        task = asyncio.get_running_loop().create_task(ladder.run())
    yield
    if task is not None:
        task.cancel()


async def encoder_context(app: web.Application) -> AsyncIterator[None]:
    threads = app[keys.SETTINGS].server.encode_threads
    executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="encode")
    app[keys.ENCODERS] = executor
    yield
    executor.shutdown(wait=True, cancel_futures=True)


async def warm_up(app: web.Application) -> None:
    """Synthesize and store the configured announcements, one at a time, in the background."""
    settings = app[keys.SETTINGS]
    service = app[keys.SPEECH]
    for text in settings.cache.warmup_texts:
        body = {"text": text, "voice": settings.cache.warmup_voice or None}
        try:
            speech = await service.speak(parse_tts_request(body, app[keys.REGISTRY], settings))
            async for _ in speech.chunks:
                pass
        except TTSError as exc:
            LOG.error("cache warm-up of %r failed: %s", text[:40], exc.message)
    if settings.cache.warmup_texts:
        LOG.info("cache warm-up done: %d texts", len(settings.cache.warmup_texts))


def create_app(settings: Settings) -> web.Application:
    app = web.Application(
        middlewares=list(MIDDLEWARES), client_max_size=settings.server.max_body_bytes
    )
    app[keys.SETTINGS] = settings
    remote = settings.engines.remote
    app[keys.REGISTRY] = VoiceRegistry.from_settings(
        with_remote_fallbacks(settings.voices, remote), espeak=settings.pool.espeak_workers > 0,
        remote=remote_voices(remote),
    )
    app[keys.RUN_STATE] = RunState()
    if settings.server.metrics:
        app[keys.METRICS] = Metrics()
        live = LiveState(pools=lambda: app.get(keys.POOLS) or {},
                         synthesizer=lambda: app.get(keys.SYNTHESIZER),
                         run_state=lambda: app.get(keys.RUN_STATE),
                         speech=lambda: app.get(keys.SPEECH),
                         gateway=lambda: app.get(keys.GATEWAY),
                         redis=lambda: app.get(keys.REDIS_WATCH))
        app[keys.METRICS].registry.register(StateCollector(live))
        app[keys.METRICS].registry.register(RemoteCollector(live.pools))
    app.cleanup_ctx.append(encoder_context)
    app.cleanup_ctx.append(pool_context)
    app.cleanup_ctx.append(cache_context)
    app.cleanup_ctx.append(gateway_context)
    app.cleanup_ctx.append(degradation_context)
    setup_jobs(app)  # after the pools, cache and gateway it uses
    app.cleanup_ctx.append(wyoming_context)  # likewise; it stops first, before them
    app.on_response_prepare.append(add_request_headers)
    setup_routes(app)
    return app
