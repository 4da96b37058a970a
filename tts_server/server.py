"""Serve an app on uvloop with the documented shutdown order.

Shutdown: stop listening -> drain flag (503 + Retry-After) -> finish in-flight requests up
to server.drain_timeout_s -> stop workers (message, join, SIGTERM, SIGKILL) -> unlink
shared memory. A second SIGINT/SIGTERM exits at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal

import uvloop
from aiohttp import web

from inference.logconfig import configure_logging
from tts_server import keys
from tts_server.app import create_app
from tts_server.config import ConfigError, Settings

LOG = logging.getLogger("tts.server")
FORCED_EXIT_CODE = 130


class SignalRecorder:
    """Signal handlers only record; the serve loop acts. Tests call record() directly."""

    def __init__(self) -> None:
        self.received: list[int] = []
        self.stop_requested = asyncio.Event()
        self.reload_requested = asyncio.Event()

    def record(self, signum: int) -> None:
        if signum == signal.SIGHUP:
            self.reload_requested.set()
            return
        self.received.append(signum)
        if len(self.received) > 1:
            LOG.warning("second signal: exiting now")
            os._exit(FORCED_EXIT_CODE)
        LOG.info("received %s: shutting down", signal.Signals(signum).name)
        self.stop_requested.set()

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(signum, self.record, signum)


async def serve(settings: Settings, signals: SignalRecorder | None = None) -> None:
    signals = signals or SignalRecorder()
    signals.install(asyncio.get_running_loop())
    app = create_app(settings)
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log=None,  # ours is structured and written by observe_middleware
        shutdown_timeout=settings.server.drain_timeout_s,
        handler_cancellation=True,  # a client that hangs up cancels its queued work
    )
    await runner.setup()  # starts the pool: workers load and warm up their voices
    site = web.TCPSite(runner, settings.server.host, settings.server.port, reuse_address=True,
                       backlog=settings.server.listen_backlog)
    await site.start()
    LOG.info("serving on http://%s:%d", settings.server.host, settings.server.port)
    reloader = asyncio.get_running_loop().create_task(reload_on_sighup(app, signals))
    await signals.stop_requested.wait()
    reloader.cancel()
    app[keys.RUN_STATE].draining = True
    await runner.cleanup()  # stop listening, drain in-flight, then the pool's cleanup
    LOG.info("stopped")


async def reload_on_sighup(app: web.Application, signals: SignalRecorder) -> None:
    """SIGHUP re-reads auth.tokens_file: revoked tokens stop working without a restart."""
    while True:
        await signals.reload_requested.wait()
        signals.reload_requested.clear()
        try:
            app[keys.GATEWAY].tokens.reload()
        except ConfigError as exc:
            LOG.error("token reload failed, keeping the old tokens: %s", exc)


def run(settings: Settings) -> None:
    configure_logging(settings.server.log_level, settings.server.log_format)
    uvloop.run(serve(settings))
