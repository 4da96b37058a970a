"""Application factory: routes, middlewares and resources started in dependency order."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from inference import protocol
from inference.pool import InferencePool, PoolOptions

from . import keys
from .config import Settings
from .handlers import setup_routes
from .middlewares import MIDDLEWARES
from .synthesis import Synthesizer
from .voices import VoiceRegistry


def build_pool(settings: Settings, registry: VoiceRegistry) -> InferencePool:
    pool_settings = settings.pool
    solo_threads = pool_settings.solo_thread_count if pool_settings.worker_count > 0 else 1

    def make_spec(index: int, slab_name: str) -> protocol.WorkerSpec:
        return protocol.WorkerSpec(
            index=index,
            slab_name=slab_name,
            slab_bytes=pool_settings.shm_slab_bytes,
            voices=registry.files,
            intra_op_threads=pool_settings.intra_op_threads,
            inter_op_threads=pool_settings.inter_op_threads,
            allow_spinning=pool_settings.allow_spinning,
            solo_threads=solo_threads,
            noise_scale=settings.synthesis.noise_scale,
            noise_w_scale=settings.synthesis.noise_w_scale,
        )

    options = PoolOptions(
        workers=pool_settings.worker_count,
        unit_timeout_s=pool_settings.unit_timeout_s,
        max_unit_retries=pool_settings.max_unit_retries,
        max_queued_units=pool_settings.max_queued_units,
        ready_timeout_s=pool_settings.ready_timeout_s,
        restart_backoff_s=pool_settings.restart_backoff_s,
        stop_timeout_s=pool_settings.stop_timeout_s,
        solo_enabled=solo_threads > 1,
        log_level=settings.server.log_level,
    )
    return InferencePool(options, make_spec)


async def pool_context(app: web.Application) -> AsyncIterator[None]:
    """Start every worker before serving; stop them (and unlink shared memory) last."""
    pool = build_pool(app[keys.SETTINGS], app[keys.REGISTRY])
    app[keys.POOL] = pool
    await pool.start()
    settings = app[keys.SETTINGS].server
    app[keys.SYNTHESIZER] = Synthesizer(pool, settings.request_timeout_s, settings.retry_after_s)
    yield
    await pool.stop()


def create_app(settings: Settings) -> web.Application:
    app = web.Application(
        middlewares=list(MIDDLEWARES), client_max_size=settings.server.max_body_bytes
    )
    app[keys.SETTINGS] = settings
    app[keys.REGISTRY] = VoiceRegistry.from_settings(settings.voices)
    app[keys.RUN_STATE] = keys.RunState()
    app.cleanup_ctx.append(pool_context)
    setup_routes(app)
    return app
