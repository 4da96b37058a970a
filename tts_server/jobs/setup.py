"""Wiring of the job API into the app.

setup_jobs(app) registers the routes and one cleanup context, appended after the pools,
cache and gateway it uses: at startup it opens the store (Redis when the cache has one,
else memory) and starts the runner and the webhook sender; at shutdown it stops them
first, handing running jobs back to the queue.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from aiohttp import web

from tts_server import keys
from tts_server.config import JobSettings
from tts_server.jobs.routes import BASE_PATH, JOBS, JobsRuntime, add_routes
from tts_server.jobs.runner import JobRunner
from tts_server.jobs.stores.base import JobStore
from tts_server.jobs.stores.memory import MemoryJobStore
from tts_server.jobs.stores.redis import RedisJobStore
from tts_server.jobs.webhook import WebhookSender

LOG = logging.getLogger("tts.jobs")


def setup_jobs(app: web.Application) -> None:
    """Register the job routes and the runner's cleanup context (nothing if disabled)."""
    settings = app[keys.SETTINGS].jobs
    if not settings.enabled:
        return
    app[JOBS] = JobsRuntime(settings)
    app.cleanup_ctx.append(jobs_context)
    add_routes(app)


def _open_store(app: web.Application, settings: JobSettings) -> JobStore:
    url = app.get(keys.REDIS_URL)
    if url is None:
        LOG.warning("jobs: no Redis; jobs are kept in memory and lost at restart")
        return MemoryJobStore(settings)
    tls_ca_file = app[keys.SETTINGS].cache.redis_tls_ca_file
    return RedisJobStore.from_url(url, settings, tls_ca_file)


def _batch_units(app: web.Application, settings: JobSettings) -> int:
    if settings.batch_units:
        return settings.batch_units
    workers = max((pool.options.workers for pool in app[keys.POOLS].values()), default=1)
    return 2 * workers


async def jobs_context(app: web.Application) -> AsyncIterator[None]:
    runtime = app[JOBS]
    settings = runtime.settings
    store = _open_store(app, settings)
    webhooks = WebhookSender(store, settings, BASE_PATH)
    runner = JobRunner(store, settings, app[keys.SYNTHESIZER], app[keys.REGISTRY],
                       app[keys.ENCODERS], app[keys.RUN_STATE], _batch_units(app, settings),
                       on_finished=webhooks.wake.set)
    runtime.store, runtime.wake_runner = store, runner.wake.set
    runner.start()
    webhooks.start()
    yield
    runtime.store = None
    await runner.stop()
    await webhooks.stop()
    await store.close()
