"""Serve an app on uvloop with the documented shutdown order.

Shutdown: drain flag -> stop listening -> open connections still served for
server.drain_grace_s (new requests: 503 + Retry-After + Connection: close) while in-flight
requests finish, up to server.drain_timeout_s -> close connections -> stop workers
(message, join, SIGTERM, SIGKILL) -> unlink shared memory. A second SIGINT/SIGTERM exits
at once.
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
from tts_server.config import ConfigError, ServerSettings, Settings
from tts_server.http.connections import ConnectionLimits, GuardedSite

LOG = logging.getLogger("tts.server")
FORCED_EXIT_CODE = 130
DRAIN_POLL_S = 0.05


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
        shutdown_timeout=settings.server.drain_timeout_s,
        handler_cancellation=True,  # a client that hangs up cancels its queued work
    )
    await runner.setup()  # starts the pool: workers load and warm up their voices
    site = make_site(runner, app, settings)
    await site.start()
    LOG.info("serving on http://%s:%d", settings.server.host, settings.server.port)
    reloader = asyncio.get_running_loop().create_task(reload_on_sighup(app, signals))
    await signals.stop_requested.wait()
    reloader.cancel()
    await drain(app, site, settings.server)
    await runner.cleanup()  # close what is left, then the pool's and the cache's cleanup
    LOG.info("stopped")


def make_site(runner: web.AppRunner, app: web.Application, settings: Settings) -> GuardedSite:
    server = settings.server
    return GuardedSite(
        runner, server.host, server.port, backlog=server.listen_backlog,
        limits=ConnectionLimits.from_settings(server),
        exempt=app[keys.GATEWAY].addresses.is_trusted,
        # access_log=None: ours is structured and written by observe_middleware.
        handler_options={"access_log": None},
    )


async def drain(app: web.Application, site: web.BaseSite, server: ServerSettings) -> None:
    """Stop listening, then keep serving open connections: what arrives gets 503 +
    Retry-After + Connection: close (drain_middleware) for drain_grace_s, and requests in
    flight finish, up to drain_timeout_s. Only then does the runner close connections:
    closing them at once dropped requests already on their way (a client cannot tell
    "not processed, retry" from a crash)."""
    state = app[keys.RUN_STATE]
    state.draining = True
    await site.stop()
    loop = asyncio.get_running_loop()
    started = loop.time()
    grace_until = started + min(server.drain_grace_s, server.drain_timeout_s)
    deadline = started + server.drain_timeout_s
    quiet_polls = 0
    while loop.time() < deadline:
        # Two quiet polls in a row: a pipelined request parsed just after the one before
        # it finished is counted before we stop.
        quiet_polls = quiet_polls + 1 if state.in_flight == 0 else 0
        if quiet_polls >= 2 and loop.time() >= grace_until:
            break
        await asyncio.sleep(DRAIN_POLL_S)
    if state.in_flight:
        LOG.warning("drain: %d requests still running after %.1f s", state.in_flight,
                    server.drain_timeout_s)


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
