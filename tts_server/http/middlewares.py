"""Request id, error rendering and the drain gate; the gateway (auth, limits) comes last."""

from __future__ import annotations

import itertools
import logging
import re
import secrets
from collections.abc import Awaitable, Callable

from aiohttp import web

from tts_server import keys
from tts_server.errors import ServiceUnavailable, TTSError
from tts_server.gateway import ratelimit_headers
from tts_server.http.connections import SERVER_NAME, GuardedHandler
from tts_server.http.observe import observe_middleware
from tts_server.http.openai import openai_error_body
from tts_server.http.routes import API_PREFIXES, METRICS_PATH, PROBE_PATHS

LOG = logging.getLogger("tts.server")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# Unique per server process without a system call per request (uuid4 reads urandom):
# a random prefix drawn once, then a counter.
_REQUEST_ID_PREFIX = secrets.token_hex(8)
_REQUEST_IDS = (f"{_REQUEST_ID_PREFIX}{n:016x}" for n in itertools.count(1))

_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def error_response(error: TTSError, openai_shape: bool = False) -> web.Response:
    headers = {}
    if error.retry_after_s is not None:
        headers["Retry-After"] = str(error.retry_after_s)
    if error.status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="tts"'
    body = openai_error_body(error) if openai_shape else error.to_json()
    return web.json_response(body, status=error.status, headers=headers)


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    given = request.headers.get("X-Request-Id", "")
    request_id = given if _CLIENT_REQUEST_ID.match(given) else next(_REQUEST_IDS)
    request[keys.REQUEST_ID] = request_id
    return await handler(request)


# The page's scripts and styles come from this server only; nothing inline, nothing else.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "media-src 'self' blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)


async def add_request_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: also reaches streamed responses, whose headers leave early."""
    response.headers["Server"] = SERVER_NAME  # aiohttp's default names its and Python's version
    if request.get(keys.CLOSE_AFTER) or response.status == 408:
        # aiohttp decided its Connection header before this hook: set both.
        response.force_close()
        response.headers["Connection"] = "close"
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    if response.content_type == "text/html":
        response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        response.headers["Referrer-Policy"] = "no-referrer"
    if keys.REQUEST_ID in request:
        response.headers["X-Request-Id"] = request[keys.REQUEST_ID]
    decision = request.get(keys.RATE_DECISION)
    if decision is not None:
        response.headers.update(ratelimit_headers(decision))
    if request.path.startswith(API_PREFIXES):
        level = request.app[keys.RUN_STATE].degradation_level
        response.headers["X-Degradation-Level"] = str(level)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure leaves as JSON {"error": {code, message}}; never a stack trace.

    Under /v1/ the shape is OpenAI's: {"error": {message, type, param, code}}.
    """
    openai_shape = request.path.startswith("/v1/")
    try:
        return await handler(request)
    except TTSError as error:
        request[keys.ERROR_CODE] = error.code
        return error_response(error, openai_shape)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "http_error")
        request[keys.ERROR_CODE] = code
        error = TTSError(exc.reason, code=code)
        error.status = exc.status
        return error_response(error, openai_shape)
    except Exception:
        LOG.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(TTSError("internal server error"), openai_shape)


@web.middleware
async def connection_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Tells the connection its request headers are complete (its header deadline is met)."""
    protocol = request.protocol
    if not isinstance(protocol, GuardedHandler):  # a test server's plain RequestHandler
        return await handler(request)
    protocol.request_started()
    try:
        return await handler(request)
    finally:
        protocol.request_finished()


@web.middleware
async def drain_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """While draining, what arrives gets 503 (probes still answer) and its connection
    closes after the answer; what arrived before is counted until it is done."""
    state = request.app[keys.RUN_STATE]
    if state.draining:
        request[keys.CLOSE_AFTER] = True
        if request.path not in PROBE_PATHS:
            retry = request.app[keys.SETTINGS].server.retry_after_s
            raise ServiceUnavailable("server is shutting down", code="draining",
                                     retry_after_s=retry)
        return await handler(request)
    state.in_flight += 1
    try:
        return await handler(request)
    finally:
        state.in_flight -= 1


@web.middleware
async def gateway_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    gateway = request.app[keys.GATEWAY]
    auth = request.app[keys.SETTINGS].auth
    path = request.path
    if path.startswith(API_PREFIXES):
        identity = gateway.identify(request)
        request[keys.IDENTITY] = identity
        decision = await gateway.check_requests(identity)
        if decision is not None:
            request[keys.RATE_DECISION] = decision
            gateway.enforce_requests(identity, decision)
    elif path in PROBE_PATHS:
        gateway.check_policy(request, auth.probe_access)
    elif path == METRICS_PATH:
        gateway.check_policy(request, auth.metrics_access)
    else:
        gateway.check_policy(request, auth.web_access)
    return await handler(request)


MIDDLEWARES = (
    connection_middleware,
    request_id_middleware,
    observe_middleware,
    error_middleware,
    drain_middleware,
    gateway_middleware,
)
