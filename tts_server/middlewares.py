"""Request id, error rendering, drain gate and the static bearer token."""

from __future__ import annotations

import hmac
import logging
import re
import uuid
from collections.abc import Awaitable, Callable

from aiohttp import web

from . import keys
from .errors import ServiceUnavailable, TTSError, Unauthorized

LOG = logging.getLogger("tts.server")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
REQUEST_ID = "request_id"
_CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# Routes that stay open during draining and without a token (probes).
PROBE_PATHS = frozenset({"/healthz", "/readyz"})

_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def error_response(error: TTSError, request_id: str | None = None) -> web.Response:
    headers = {}
    if error.retry_after_s is not None:
        headers["Retry-After"] = str(error.retry_after_s)
    if error.status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="tts"'
    if request_id:
        headers["X-Request-Id"] = request_id
    return web.json_response(error.to_json(), status=error.status, headers=headers)


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    given = request.headers.get("X-Request-Id", "")
    request_id = given if _CLIENT_REQUEST_ID.match(given) else uuid.uuid4().hex
    request[REQUEST_ID] = request_id
    response = await handler(request)
    if not response.prepared:
        response.headers["X-Request-Id"] = request_id
    return response


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure leaves as JSON {"error": {code, message}}; never a stack trace."""
    try:
        return await handler(request)
    except TTSError as error:
        return error_response(error, request.get(REQUEST_ID))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "http_error")
        error = TTSError(exc.reason, code=code)
        error.status = exc.status
        return error_response(error, request.get(REQUEST_ID))
    except Exception:
        LOG.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(TTSError("internal server error"), request.get(REQUEST_ID))


@web.middleware
async def drain_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.app[keys.RUN_STATE].draining and request.path not in PROBE_PATHS:
        retry = request.app[keys.SETTINGS].server.retry_after_s
        raise ServiceUnavailable("server is shutting down", code="draining", retry_after_s=retry)
    return await handler(request)


@web.middleware
async def token_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    token = request.app[keys.SETTINGS].server.api_token
    if token and request.path.startswith("/api/"):
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        valid = scheme.lower() == "bearer" and hmac.compare_digest(given.encode(), token.encode())
        if not valid:
            raise Unauthorized("a valid bearer token is required", code="invalid_token")
    return await handler(request)


MIDDLEWARES = (request_id_middleware, error_middleware, drain_middleware, token_middleware)
