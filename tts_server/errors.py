"""The error hierarchy clients see: each error carries a stable code and its HTTP status."""

from __future__ import annotations

from typing import Any

# Client input quoted in an error message is cut to this many characters, and a whole
# message to MAX_MESSAGE_CHARS: a 100 KB voice name must not come back as a 100 KB error.
MAX_QUOTE_CHARS = 64
MAX_MESSAGE_CHARS = 1024


def quote(value: Any, limit: int = MAX_QUOTE_CHARS) -> str:
    """repr() of client input, cut to `limit` characters (an ellipsis says it was cut)."""
    text = value if isinstance(value, str) else repr(value)
    return repr(text[:limit]) + ("…" if len(text) > limit else "")


def bounded(message: str) -> str:
    return message if len(message) <= MAX_MESSAGE_CHARS else message[:MAX_MESSAGE_CHARS] + "…"


class TTSError(Exception):
    status = 500
    code = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        retry_after_s: int | None = None,
        param: str | None = None,
    ):
        message = bounded(message)
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.retry_after_s = retry_after_s
        # The request field at fault, when there is one (OpenAI's error shape names it).
        self.param = param

    def to_json(self) -> dict[str, dict[str, str]]:
        return {"error": {"code": self.code, "message": self.message}}


class BadRequest(TTSError):
    status = 400
    code = "bad_request"


class Unauthorized(TTSError):
    status = 401
    code = "unauthorized"


class NotFound(TTSError):
    status = 404
    code = "not_found"


class RequestTimeout(TTSError):
    status = 408
    code = "request_timeout"


class PayloadTooLarge(TTSError):
    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(TTSError):
    status = 415
    code = "unsupported_media_type"


class Unprocessable(TTSError):
    status = 422
    code = "unprocessable"


class ServiceUnavailable(TTSError):
    """Busy, draining or the engine lost the work: always sent with Retry-After."""

    status = 503
    code = "unavailable"


class Forbidden(TTSError):
    status = 403
    code = "forbidden"


class TooManyRequests(TTSError):
    """Rate limited: sent with Retry-After and the X-RateLimit-* headers."""

    status = 429
    code = "rate_limited"
