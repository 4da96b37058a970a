"""Completion webhooks: allow-listed hosts only, signed bodies, retries from a durable outbox.

A finished job with a callback_url enters the store's outbox; a sender on every instance
takes due entries (hidden from the other instances while it tries), POSTs the job's status
document and records the outcome, retrying with a doubling delay. Delivery is at least
once: a receiver should deduplicate on X-TTS-Delivery (the job id; a job finishes once).
Redirects are never followed, so an allowed host cannot
bounce a request to another address.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import time
import urllib.parse
from typing import Any

import aiohttp

from tts_server.config import JobSettings
from tts_server.errors import BadRequest, quote
from tts_server.jobs.models import Job
from tts_server.jobs.stores.base import JobStore, StoreUnavailable

LOG = logging.getLogger("tts.jobs.webhook")
SIGNATURE_HEADER = "X-TTS-Signature"
MAX_URL_CHARS = 2048
BATCH = 16


def _invalid(message: str) -> BadRequest:
    return BadRequest(message, code="invalid_callback_url", param="callback_url")


def _host_port(url: urllib.parse.SplitResult) -> tuple[str, int | None]:
    try:
        port = url.port
    except ValueError:
        raise _invalid("callback_url has an invalid port") from None
    return (url.hostname or "").lower(), port


def _split(url: str) -> urllib.parse.SplitResult:
    """urlsplit, with its ValueError (an unclosed "[::1", say) as 400, never 500."""
    try:
        return urllib.parse.urlsplit(url)
    except ValueError:
        raise _invalid("callback_url is not a valid URL") from None


def host_allowed(url: str, allowed: tuple[str, ...]) -> bool:
    """`url`'s host matches an entry "host" (any port) or "host:port" (that port only)."""
    parsed = _split(url)
    host, port = _host_port(parsed)
    port = port or (443 if parsed.scheme == "https" else 80)
    for entry in allowed:
        allowed_url = urllib.parse.urlsplit("//" + entry.strip())
        allowed_host, allowed_port = (allowed_url.hostname or "").lower(), allowed_url.port
        if allowed_host == host and allowed_port in (None, port):
            return True
    return False


def check_callback_url(value: Any, allowed: tuple[str, ...]) -> str:
    """"" for no callback; the URL if its host is allowed; 400 otherwise."""
    if value is None or value == "":
        return ""
    if not isinstance(value, str) or len(value) > MAX_URL_CHARS:
        raise _invalid("callback_url must be a URL string")
    parsed = _split(value)
    host, _ = _host_port(parsed)
    if parsed.scheme not in ("http", "https") or not host or parsed.username is not None:
        raise _invalid("callback_url must be an http(s) URL without credentials")
    if not host_allowed(value, allowed):
        raise BadRequest(f"callback_url host {quote(host)} is not in jobs.webhook_hosts",
                         code="callback_not_allowed", param="callback_url")
    return value


def sign(body: bytes, secret: str) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class WebhookSender:
    def __init__(self, store: JobStore, settings: JobSettings, base_path: str) -> None:
        self.store = store
        self.settings = settings
        self.base_path = base_path
        self.wake = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self.run())

    async def stop(self) -> None:
        """Let deliveries in flight finish (a cut one would be sent again), then stop."""
        if self._task is None:
            return
        self._stopping = True
        self.wake.set()
        done, _ = await asyncio.wait([self._task], timeout=self.settings.webhook_timeout_s + 1)
        if not done:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self.settings.webhook_timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            self._session = session
            while not self._stopping:
                try:
                    jobs = await self.store.due_callbacks(self._lease_s, BATCH)
                except StoreUnavailable as exc:
                    LOG.warning("webhooks: store unavailable: %s", exc)
                    jobs = []
                if jobs:
                    await asyncio.gather(*(self._deliver(job) for job in jobs))
                    continue
                self.wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), self.settings.poll_interval_s)

    @property
    def _lease_s(self) -> float:
        return self.settings.webhook_timeout_s + 5.0

    def payload(self, job: Job) -> bytes:
        document = {"event": f"job.{job.status.value}", "sent_at": time.time(),
                    "job": job.public(self.base_path)}
        return json.dumps(document, separators=(",", ":")).encode()

    def headers(self, job: Job, body: bytes, attempt: int) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "X-TTS-Event": f"job.{job.status.value}",
                   "X-TTS-Delivery": job.id, "X-TTS-Attempt": str(attempt),
                   "User-Agent": "tts-server-webhook"}
        if self.settings.webhook_secret:
            headers[SIGNATURE_HEADER] = sign(body, self.settings.webhook_secret)
        return headers

    async def _deliver(self, job: Job) -> None:
        attempt = job.callback_attempts + 1
        if not host_allowed(job.callback_url, self.settings.webhook_hosts):
            await self._record(job, "refused", attempt, None)  # allow-list changed since
            return
        delivered = await self._post(job, attempt)
        if delivered:
            await self._record(job, "delivered", attempt, None)
        elif attempt >= self.settings.webhook_attempts:
            await self._record(job, "failed", attempt, None)
        else:
            delay = self.settings.webhook_backoff_s * 2 ** (attempt - 1)
            await self._record(job, "pending", attempt, delay)

    async def _post(self, job: Job, attempt: int) -> bool:
        assert self._session is not None
        body = self.payload(job)
        try:
            async with self._session.post(job.callback_url, data=body, allow_redirects=False,
                                          headers=self.headers(job, body, attempt)) as response:
                await response.read()
                ok = 200 <= response.status < 300
                if not ok:
                    LOG.warning("webhook for %s: HTTP %d", job.id, response.status)
                return ok
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            LOG.warning("webhook for %s failed: %s", job.id, exc or type(exc).__name__)
            return False

    async def _record(self, job: Job, status: str, attempt: int, retry_in_s: float | None) -> None:
        try:
            await self.store.record_callback(job.id, status, attempt, retry_in_s)
        except StoreUnavailable as exc:
            LOG.warning("webhook for %s: outcome not recorded: %s", job.id, exc)
