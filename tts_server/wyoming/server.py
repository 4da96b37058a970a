"""The Wyoming TCP listener, started and stopped with the application (same loop)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from tts_server import keys
from tts_server.wyoming.events import EventWriter
from tts_server.wyoming.handler import Connection, WyomingService

LOG = logging.getLogger("tts.wyoming")


class WyomingServer:
    def __init__(self, app: web.Application) -> None:
        self.service = WyomingService(app)
        self.config = self.service.config
        self._server: asyncio.Server | None = None
        self._connections: dict[asyncio.Task[None], Connection] = {}

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        # `limit` bounds one header line (readuntil) before it is parsed.
        self._server = await asyncio.start_server(
            self._accept, self.config.host, self.config.port, reuse_address=True,
            limit=self.config.max_event_bytes)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._connections) >= self.config.max_connections:
            await self._refuse(writer)
            return
        connection = self._connections[task] = Connection(self.service, reader, writer)
        try:
            await connection.serve()
        finally:
            self._connections.pop(task, None)

    async def _refuse(self, writer: asyncio.StreamWriter) -> None:
        out = EventWriter(writer, self.config.write_timeout_s)
        with contextlib.suppress(Exception):
            limit = self.config.max_connections
            await out.send("error", {"text": f"more than {limit} connections at once; "
                                             "retry shortly", "code": "too_many_connections"})
        writer.close()

    async def stop(self) -> None:
        """Stop listening; busy connections get wyoming.drain_timeout_s, then are closed."""
        if self._server is None:
            return
        self._server.close()
        for task, connection in list(self._connections.items()):
            if connection.idle:
                task.cancel()
        busy = set(self._connections)
        if busy:
            await asyncio.wait(busy, timeout=self.config.drain_timeout_s)
        for task in self._connections:
            task.cancel()
        if self._connections:
            await asyncio.wait(set(self._connections))
        LOG.info("wyoming: stopped")


async def wyoming_context(app: web.Application) -> AsyncIterator[None]:
    """aiohttp cleanup context: after the pools, cache and gateway (it uses them), so it
    stops before them."""
    settings = app[keys.SETTINGS].wyoming
    if not settings.enabled:
        yield
        return
    server = WyomingServer(app)
    await server.start()
    LOG.info("wyoming: serving on tcp://%s:%d (access: %s)", settings.host, server.port,
             settings.access)
    yield
    await server.stop()
