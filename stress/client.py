"""The HTTP side: one pooled aiohttp session per level, one `Sample` per request."""

from __future__ import annotations

import asyncio
import resource
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiohttp

from .audio import audio_seconds
from .samples import CLIENT_ERROR, CONNECTION, PAYLOAD, TIMEOUT, Sample, http_error

clock = time.monotonic


@dataclass(frozen=True)
class TargetOptions:
    """Where requests go and how long one may take."""

    base_url: str = "http://127.0.0.1:8080"
    path: str = "/api/tts"
    token: str = ""  # sent as "Authorization: Bearer <token>" when not empty
    timeout_s: float = 60.0  # per request, connecting included

    @property
    def url(self) -> str:
        return self.base_url.rstrip("/") + self.path

    def headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers


def classify(exc: BaseException) -> str:
    """Error kind of a request that got no complete response."""
    # ServerTimeoutError is also a ClientConnectionError: timeouts must be tested first.
    if isinstance(exc, TimeoutError):
        return TIMEOUT
    if isinstance(exc, aiohttp.ClientConnectionError | ConnectionError):
        return CONNECTION
    if isinstance(exc, aiohttp.ClientPayloadError):
        return PAYLOAD
    return CLIENT_ERROR


class TTSClient:
    """Sends request bodies over a shared session and times them against a level origin."""

    def __init__(self, session: aiohttp.ClientSession, target: TargetOptions, origin: float):
        self._session = session
        self._url = target.url
        self._headers = target.headers()
        self.origin = origin

    def now(self) -> float:
        """Seconds since the level's origin."""
        return clock() - self.origin

    async def send(self, body: bytes, scheduled_s: float) -> Sample:
        sent_s = self.now()
        first_byte_s: float | None = None
        status: int | None = None
        try:
            async with self._session.post(self._url, data=body, headers=self._headers) as response:
                first_byte_s = self.now()
                status = response.status
                payload = await response.read()
                done_s = self.now()
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            return Sample(scheduled_s, sent_s, first_byte_s, self.now(), status, classify(exc))
        if not 200 <= status < 300:
            return Sample(scheduled_s, sent_s, first_byte_s, done_s, status, http_error(status))
        audio_s = audio_seconds(response.headers, payload)
        cache = response.headers.get("X-Cache")
        return Sample(scheduled_s, sent_s, first_byte_s, done_s, status, None, audio_s, cache)


FD_HEADROOM = 256  # files, pipes and the listening sockets besides the pool's connections


def raise_open_file_limit(connections: int) -> None:
    """Lift the soft descriptor limit (often 1024) toward the hard one so big levels can connect."""
    wanted = connections + FD_HEADROOM
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return
    new_soft = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (new_soft, hard))


@asynccontextmanager
async def open_session(
    target: TargetOptions, connections: int
) -> AsyncIterator[aiohttp.ClientSession]:
    """A session whose pool holds exactly `connections` keep-alive connections to the target."""
    raise_open_file_limit(connections)
    connector = aiohttp.TCPConnector(limit=connections, limit_per_host=0, ttl_dns_cache=300)
    timeout = aiohttp.ClientTimeout(total=target.timeout_s)
    session = aiohttp.ClientSession(
        connector=connector,
        timeout=timeout,
        cookie_jar=aiohttp.DummyCookieJar(),  # a load generator keeps no cookies
        auto_decompress=False,
    )
    try:
        yield session
    finally:
        await session.close()
        await asyncio.sleep(0)  # let the transports close before the loop moves on
