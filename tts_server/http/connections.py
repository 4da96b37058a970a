"""Connections below HTTP: header, idle and write deadlines, a cap per client, JSON parse errors.

aiohttp has no request-header or write timeout, and its keep-alive timeout (3,630 s under
AppRunner) is the only thing that ever closes a connection that sends nothing; a slowloris
client could hold connections until the process ran out of descriptors. GuardedHandler is
aiohttp's RequestHandler with those deadlines added, and GuardedSite listens with it:

- headers: a new connection, or the next request on a kept-alive one (from its first
  byte), must deliver complete request headers within `header_timeout_s` (then 408, closed);
- idle: a kept-alive connection with no request closes after `keepalive_timeout_s`;
- writes: a response whose send buffer stays full for `write_timeout_s` (the client reads
  too slowly to drain it) is aborted;
- per client: at most `max_connections_per_client` open connections per address (trusted
  proxies exempt); past it a new connection is answered 429 and closed.

The body deadline lives where bodies are read (http/bodies.py). aiohttp's own answers to
unparseable requests (a bad request line, an oversized header) are text that quotes the
offending bytes; handle_error answers them as our JSON error instead, quoting nothing.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from tts_server.config import ServerSettings

LOG = logging.getLogger("tts.server")
SERVER_NAME = "tts-server"
# Why aiohttp refused to parse a request, by exception class; the bytes are never quoted.
PARSE_ERRORS = {
    "BadHttpMethod": "unknown or malformed HTTP method",
    "BadStatusLine": "malformed request line",
    "LineTooLong": "request line or header too long",
    "InvalidHeader": "invalid header",
    "InvalidURLError": "invalid request target",
    "TransferEncodingError": "invalid Transfer-Encoding",
    "ContentLengthError": "invalid Content-Length",
}


def raw_error(status: int, reason: str, code: str, message: str,
              extra_headers: str = "") -> bytes:
    """A complete HTTP/1.1 error response that closes the connection, for the paths that
    answer before (or instead of) aiohttp's own request handling."""
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\nServer: {SERVER_NAME}\r\n"
            f"{extra_headers}\r\n")
    return head.encode() + body


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout_s: float
    keepalive_timeout_s: float
    write_timeout_s: float
    linger_s: float
    max_per_client: int
    retry_after_s: int

    @classmethod
    def from_settings(cls, server: ServerSettings) -> ConnectionLimits:
        return cls(server.header_timeout_s, server.keepalive_timeout_s,
                   server.write_timeout_s, server.linger_s, server.max_connections_per_client,
                   server.retry_after_s)


class ClientCounter:
    """Open connections per client address; `exempt` addresses (trusted proxies) are not
    capped, since every client behind them shares their address."""

    def __init__(self, limit: int, exempt: Callable[[str], bool]) -> None:
        self.limit = limit
        self.exempt = exempt
        self.open: collections.Counter[str] = collections.Counter()
        self.refused = 0

    def admit(self, address: str) -> bool:
        if self.open[address] >= self.limit and not self.exempt(address):
            self.refused += 1
            return False
        self.open[address] += 1
        return True

    def release(self, address: str) -> None:
        self.open[address] -= 1
        if self.open[address] <= 0:
            del self.open[address]


class GuardedHandler(RequestHandler):
    """RequestHandler plus the deadlines and the per-client cap described above."""

    def __init__(self, manager: web.Server, *, loop: asyncio.AbstractEventLoop,
                 limits: ConnectionLimits, clients: ClientCounter, **kwargs: Any) -> None:
        super().__init__(manager, loop=loop, keepalive_timeout=limits.keepalive_timeout_s,
                         lingering_time=limits.linger_s, **kwargs)
        self.limits = limits
        self.clients = clients
        self.client: str | None = None
        self.in_request = False
        self.header_timer: asyncio.TimerHandle | None = None
        self.write_timer: asyncio.TimerHandle | None = None

    # ---- connection -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        address = _address(transport)
        if not self.clients.admit(address):
            transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
            transport.write(raw_error(
                429, "Too Many Requests", "too_many_connections",
                "too many open connections from this address",
                f"Retry-After: {self.limits.retry_after_s}\r\n"))
            transport.close()
            return
        self.client = address
        super().connection_made(transport)
        self._arm_header_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self.client is None:
            return  # refused at connection_made: aiohttp never saw this connection
        self.clients.release(self.client)
        self.client = None
        self._cancel_timers()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.client is None:
            return
        if data and not self.in_request and self.header_timer is None:
            self._arm_header_timer()  # the first bytes of the next request on this connection
        super().data_received(data)

    # ---- requests (told by http/middlewares.connection_middleware) --------------------------

    def request_started(self) -> None:
        """Headers are complete: the header deadline is met."""
        self.in_request = True
        if self.header_timer is not None:
            self.header_timer.cancel()
            self.header_timer = None

    def request_finished(self) -> None:
        self.in_request = False

    def _arm_header_timer(self) -> None:
        self.header_timer = self._loop.call_later(self.limits.header_timeout_s,
                                                  self._header_timeout)

    def _header_timeout(self) -> None:
        self.header_timer = None
        if self.in_request or self.transport is None:
            return
        LOG.debug("closing a connection from %s: no complete request headers in %.1f s",
                  self.client, self.limits.header_timeout_s)
        self.transport.write(raw_error(
            408, "Request Timeout", "header_timeout",
            f"request headers not received within {self.limits.header_timeout_s:g} s"))
        self.force_close()

    # ---- writes -----------------------------------------------------------------------------

    def pause_writing(self) -> None:
        super().pause_writing()
        if self.write_timer is None:
            self.write_timer = self._loop.call_later(self.limits.write_timeout_s,
                                                     self._write_timeout)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self.write_timer is not None:
            self.write_timer.cancel()
            self.write_timer = None

    def _write_timeout(self) -> None:
        self.write_timer = None
        if self.transport is not None:
            LOG.info("aborting a response to %s: its send buffer stayed full for %.1f s",
                     self.client, self.limits.write_timeout_s)
            self.transport.abort()

    def _cancel_timers(self) -> None:
        for timer in (self.header_timer, self.write_timer):
            if timer is not None:
                timer.cancel()
        self.header_timer = self.write_timer = None

    # ---- aiohttp's own errors ---------------------------------------------------------------

    def handle_error(self, request: Any, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """Errors aiohttp answers itself: unparseable requests (400) and anything that
        escaped the middlewares (500). JSON, no request bytes quoted, no traceback."""
        if status >= 500:
            LOG.error("unhandled error from %s", request.remote, exc_info=exc)
        else:
            LOG.info("unparseable request from %s: %s", request.remote, type(exc).__name__)
        if request.writer.output_size > 0:
            raise ConnectionError("response already started; cannot send an error")
        reason = PARSE_ERRORS.get(type(exc).__name__, "malformed HTTP request")
        code, text = ("internal_error", "internal server error") if status >= 500 else (
            "bad_http_request", reason)
        response = web.json_response({"error": {"code": code, "message": text}}, status=status)
        response.headers["Server"] = SERVER_NAME
        response.headers["Connection"] = "close"  # said for HTTP/1.0 too: the parse failed
        response.force_close()
        return response


def _address(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    return str(peer[0]) if isinstance(peer, tuple) and peer else "unknown"


class GuardedSite(web.BaseSite):
    """A TCP site whose connections are GuardedHandlers (aiohttp's TCPSite, otherwise)."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, *, backlog: int,
                 limits: ConnectionLimits, exempt: Callable[[str], bool],
                 handler_options: dict[str, Any]) -> None:
        super().__init__(runner, backlog=backlog)
        self.host, self.port = host, port
        self.limits = limits
        self.clients = ClientCounter(limits.max_per_client, exempt)
        self.handler_options = handler_options

    @property
    def name(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        manager = self._runner.server
        assert manager is not None

        def protocol() -> GuardedHandler:
            return GuardedHandler(manager, loop=loop, limits=self.limits, clients=self.clients,
                                  **self.handler_options)

        self._server = await loop.create_server(
            protocol, self.host, self.port, backlog=self._backlog, reuse_address=True,
            family=socket.AF_UNSPEC)


async def expect_continue(request: web.Request) -> web.StreamResponse | None:
    """Every route's Expect handler: 100-continue as aiohttp does it, anything else our JSON
    417 (aiohttp's own answer is text quoting the header, and skips the middlewares)."""
    expect = request.headers.get("Expect", "")
    if expect.lower() == "100-continue":
        if request.version >= (1, 1):
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0
        return None
    body = {"error": {"code": "expectation_failed",
                      "message": "only Expect: 100-continue is supported"}}
    response = web.json_response(body, status=417)
    response.force_close()
    return response


ROUTE_OPTIONS: dict[str, Any] = {"expect_handler": expect_continue}
