"""One upstream call, POST {base}/v1/audio/speech, and its answer decoded to canonical PCM.

Every way a call can go wrong ends as an UpstreamError whose `outcome` names it (refused,
timeout, disconnected, http_5xx, http_4xx, http_other, rate_limited, bad_audio); the pool counts
outcomes and the Synthesizer hands the unit to the voice's fallback.
"""

from __future__ import annotations

import email.utils
import struct
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import numpy as np
import soxr

from inference.pool import PoolError
from tts_server.config import RemoteEngineSettings

WAVE_FORMAT_PCM = 1
WAVE_FORMAT_FLOAT = 3
WAVE_FORMAT_EXTENSIBLE = 0xFFFE
# A streamed WAV (ours, ffmpeg's, sox's) states this size: the data runs to the end.
UNKNOWN_SIZES = (0, 0xFFFFFFFF)
NOT_AUDIO_TYPES = ("application/json", "text/")
ERROR_SNIPPET_CHARS = 200


class UpstreamError(PoolError):
    """The upstream failed this unit; the fallback voice speaks it instead."""

    code = "upstream_error"

    def __init__(self, outcome: str, message: str, retry_after_s: float | None = None,
                 attempted: bool = True) -> None:
        super().__init__(message)
        self.outcome = outcome
        self.retry_after_s = retry_after_s
        # False: never sent (its request already fell back, or the upstream asked for a
        # pause), so the circuit breaker does not count it.
        self.attempted = attempted


@dataclass(frozen=True)
class Answer:
    pcm: bytes
    sample_rate: int
    seconds: float


def request_body(settings: RemoteEngineSettings, upstream_voice: str, text: str,
                 speed: float) -> dict[str, Any]:
    body: dict[str, Any] = {"input": text, settings.voice_field: upstream_voice,
                            "response_format": settings.response_format, "speed": speed}
    if settings.model:
        body["model"] = settings.model
    return {**settings.extra, **body}


def timeouts(settings: RemoteEngineSettings) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=settings.unit_timeout_s,
                                 sock_connect=settings.connect_timeout_s,
                                 sock_read=settings.read_timeout_s)


async def synthesize(session: aiohttp.ClientSession, settings: RemoteEngineSettings,
                     body: dict[str, Any], request_id: str) -> Answer:
    """One call; its audio at settings.sample_rate, or an UpstreamError."""
    headers = {"X-Request-Id": request_id}
    if settings.api_key:
        headers["Authorization"] = f"Bearer {settings.api_key}"
    started = time.monotonic()
    try:
        async with session.post(settings.speech_url, json=body, headers=headers,
                                allow_redirects=False) as response:
            await _check_status(response, settings.max_retry_after_s)
            _check_content_type(response)
            data = await _read_limited(response, settings.max_response_bytes)
    except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
        raise UpstreamError("timeout", f"no answer in time ({type(exc).__name__})") from None
    except aiohttp.ClientConnectorError as exc:
        raise UpstreamError("refused", f"cannot connect: {exc.os_error}") from None
    except aiohttp.ClientError as exc:
        raise UpstreamError("disconnected", f"{type(exc).__name__}: {exc}") from None
    pcm = decode_audio(data, settings.response_format, settings.sample_rate)
    return Answer(pcm, settings.sample_rate, time.monotonic() - started)


async def _check_status(response: aiohttp.ClientResponse, max_retry_after_s: float) -> None:
    status = response.status
    if status == 200:
        return
    snippet = (await response.content.read(ERROR_SNIPPET_CHARS)).decode("utf-8", "replace")
    message = f"HTTP {status}: {snippet.strip()}"
    if status == 429:
        retry = parse_retry_after(response.headers.get("Retry-After"))
        raise UpstreamError("rate_limited", message, min(retry, max_retry_after_s))
    kind = "http_5xx" if status >= 500 else "http_4xx" if status >= 400 else "http_other"
    raise UpstreamError(kind, message)


def _check_content_type(response: aiohttp.ClientResponse) -> None:
    """A JSON error page with status 200 would otherwise pass as raw PCM."""
    kind = response.headers.get("Content-Type", "").lower()
    if kind.startswith(NOT_AUDIO_TYPES):
        raise UpstreamError("bad_audio", f"the answer is {kind}, not audio")


async def _read_limited(response: aiohttp.ClientResponse, limit: int) -> bytes:
    data = bytearray()
    async for block in response.content.iter_any():
        data += block
        if len(data) > limit:
            raise UpstreamError("bad_audio", f"the answer exceeds {limit} bytes "
                                             "(max_response_bytes)")
    return bytes(data)


def parse_retry_after(value: str | None, now: float | None = None) -> float:
    """Seconds from a Retry-After header (delta seconds or an HTTP date); 0 if absent/bad."""
    if not value:
        return 0.0
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return 0.0
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


# ---- decoding ------------------------------------------------------------------------------


@dataclass(frozen=True)
class WavFormat:
    tag: int
    channels: int
    sample_rate: int
    bits: int

    @property
    def block_align(self) -> int:
        return self.channels * self.bits // 8


def decode_audio(data: bytes, response_format: str, sample_rate: int) -> bytes:
    """s16le mono at `sample_rate` from a WAV (any rate, 8-32 bit PCM or float) or raw PCM."""
    if response_format == "pcm":
        if len(data) % 2:
            raise UpstreamError("bad_audio", "raw PCM with an odd number of bytes (truncated)")
        return data
    fmt, samples = parse_wav(data)
    return to_canonical(fmt, samples, sample_rate)


def parse_wav(data: bytes) -> tuple[WavFormat, bytes]:
    """The fmt chunk and the sample bytes; a truncated or malformed file is bad_audio."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise UpstreamError("bad_audio", "the answer is not a WAV file")
    offset, fmt = 12, None
    while offset + 8 <= len(data):
        chunk, size = data[offset:offset + 4], struct.unpack_from("<I", data, offset + 4)[0]
        body_at = offset + 8
        if chunk == b"fmt ":
            fmt = _parse_fmt(data[body_at:body_at + size])
        elif chunk == b"data":
            if fmt is None:
                raise UpstreamError("bad_audio", "WAV data before its fmt chunk")
            return fmt, _data_bytes(data, body_at, size, fmt)
        offset = body_at + size + (size & 1)  # chunks are padded to even sizes
    raise UpstreamError("bad_audio", "WAV without a data chunk (truncated)")


def _parse_fmt(chunk: bytes) -> WavFormat:
    if len(chunk) < 16:
        raise UpstreamError("bad_audio", "WAV fmt chunk too short")
    tag, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", chunk)
    if tag == WAVE_FORMAT_EXTENSIBLE and len(chunk) >= 26:
        tag = struct.unpack_from("<H", chunk, 24)[0]  # the sub-format GUID's first field
    fmt = WavFormat(tag, channels, rate, bits)
    supported = (tag == WAVE_FORMAT_PCM and bits in (8, 16, 24, 32)) or (
        tag == WAVE_FORMAT_FLOAT and bits in (32, 64))
    if not supported or not 1 <= channels <= 8 or not 1000 <= rate <= 384000:
        raise UpstreamError("bad_audio", f"unsupported WAV format {fmt}")
    return fmt


def _data_bytes(data: bytes, start: int, size: int, fmt: WavFormat) -> bytes:
    available = len(data) - start
    if size in UNKNOWN_SIZES:
        size = available
    elif size > available:
        raise UpstreamError("bad_audio", f"truncated WAV: {available} of {size} data bytes")
    if size % fmt.block_align:
        raise UpstreamError("bad_audio", "truncated WAV: a partial sample frame at the end")
    return data[start:start + size]


def to_canonical(fmt: WavFormat, samples: bytes, sample_rate: int) -> bytes:
    """Mono s16le at `sample_rate`; the common case (already that) is returned as is."""
    if fmt.tag == WAVE_FORMAT_PCM and fmt.bits == 16 and fmt.channels == 1:
        if fmt.sample_rate == sample_rate:
            return samples
        audio = np.frombuffer(samples, dtype="<i2").astype(np.float32) / 32768
    else:
        audio = _as_float(fmt, samples)
    if fmt.sample_rate != sample_rate:
        audio = soxr.resample(audio, fmt.sample_rate, sample_rate)
    return (np.clip(audio, -1.0, 32767 / 32768) * 32768).astype("<i2").tobytes()


def _as_float(fmt: WavFormat, samples: bytes) -> np.ndarray:
    """Float32 mono in -1..1 from any supported sample layout."""
    if fmt.tag == WAVE_FORMAT_FLOAT:
        audio = np.frombuffer(samples, dtype="<f4" if fmt.bits == 32 else "<f8")
    elif fmt.bits == 8:
        audio = (np.frombuffer(samples, dtype=np.uint8).astype(np.float32) - 128) / 128
    elif fmt.bits == 24:
        raw = np.frombuffer(samples, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        values = raw[:, 0] | (raw[:, 1] << 8) | (raw[:, 2] << 16)
        audio = np.where(values >= 1 << 23, values - (1 << 24), values) / float(1 << 23)
    else:
        audio = np.frombuffer(samples, dtype=f"<i{fmt.bits // 8}") / float(1 << (fmt.bits - 1))
    audio = np.nan_to_num(audio.astype(np.float32).reshape(-1, fmt.channels).mean(axis=1))
    return audio
