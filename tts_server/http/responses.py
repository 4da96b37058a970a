"""Audio responses: whole, streamed (one continuous encoder per response) or as SSE events.

Encoding is CPU work and runs on a bounded thread pool, never on the event loop. Headers
leave with the first encoded bytes, so an error before any audio keeps its real status.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator

from aiohttp import web

from tts_server import keys
from tts_server.encoding.encoders import (
    StreamEncoder,
    encode_stream,
)
from tts_server.encoding.wav import duration_s
from tts_server.speech.request import SynthesisRequest
from tts_server.speech.service import Speech
from tts_server.speech.synthesizer import SynthesisTrace


def server_timing(trace: SynthesisTrace) -> str:
    first = trace.first_audio_ms or 0.0
    return (
        f"queue;dur={trace.queue_ms:.1f}, synth;dur={trace.synthesis_ms:.1f}, "
        f"first-audio;dur={first:.1f}"
    )


def audio_headers(synthesis: SynthesisRequest, speech: Speech, output_rate: int) -> dict[str, str]:
    return {
        "Content-Type": synthesis.audio_format.content_type,
        "X-Sample-Rate": str(output_rate),
        "X-Voice": synthesis.voice.name,
        "X-Engine": speech.trace.engine or synthesis.voice.engine,
        "X-Cache": speech.cache_status,
        "Server-Timing": server_timing(speech.trace),
    }


class TimedEncoder:
    """Adds up the time one response spends encoding (in the executor's threads)."""

    def __init__(self, encoder: StreamEncoder) -> None:
        self.inner = encoder
        self.output_rate = encoder.output_rate
        self.seconds = 0.0

    def feed(self, pcm: bytes) -> bytes:
        started = time.perf_counter()
        try:
            return self.inner.feed(pcm)
        finally:
            self.seconds += time.perf_counter() - started

    def finish(self) -> bytes:
        started = time.perf_counter()
        try:
            return self.inner.finish()
        finally:
            self.seconds += time.perf_counter() - started


class AudioResponder:
    """Writes one request's audio and records what the access log and metrics report."""

    def __init__(self, request: web.Request, speech: Speech) -> None:
        self.request = request
        self.synthesis = speech.request
        self.speech = speech
        self.executor = request.app[keys.ENCODERS]
        self.metrics = request.app.get(keys.METRICS)
        self.info = request[keys.REQUEST_INFO]
        self.info.cache = speech.cache_status
        self.info.trace = speech.trace
        self.info.sample_rate = speech.sample_rate

    async def _pcm(self) -> AsyncIterator[bytes]:
        async for chunk in self.speech.chunks:
            self.info.audio_bytes += len(chunk)
            self.info.engine = self.speech.trace.engine or self.synthesis.voice.engine
            self.info.cache = self.speech.cache_status
            yield chunk

    def _observe_encoding(self, seconds: float) -> None:
        if self.metrics is not None:
            label = self.synthesis.audio_format.name
            self.metrics.child(self.metrics.encoding_seconds, label).observe(seconds)

    async def whole(self) -> web.StreamResponse:
        pcm = b"".join([chunk async for chunk in self._pcm()])
        fmt, rate = self.synthesis.audio_format, self.speech.sample_rate
        if fmt.inline:
            return await self._whole_inline(pcm)
        started = time.perf_counter()
        body = await asyncio.get_running_loop().run_in_executor(
            self.executor, fmt.encode_whole, pcm, rate
        )
        self._observe_encoding(time.perf_counter() - started)
        return web.Response(body=body, headers=self._whole_headers(len(pcm)))

    async def _whole_inline(self, pcm: bytes) -> web.StreamResponse:
        """Header and samples written as they are: joining them would copy the whole audio
        (most of the cost of an L1 hit), while the cached samples go out untouched."""
        pcm = pcm[: len(pcm) - len(pcm) % 2]
        header = self.synthesis.audio_format.inline_header(self.speech.sample_rate, len(pcm))
        self._observe_encoding(0.0)
        response = web.StreamResponse(headers=self._whole_headers(len(pcm)))
        response.content_length = len(header) + len(pcm)
        await response.prepare(self.request)
        if header:
            await response.write(header)
        await response.write(pcm)
        await response.write_eof()
        return response

    def _whole_headers(self, pcm_bytes: int) -> dict[str, str]:
        rate = self.synthesis.audio_format.output_rate(self.speech.sample_rate)
        headers = audio_headers(self.synthesis, self.speech, rate)
        headers["X-Audio-Duration"] = f"{duration_s(pcm_bytes, self.speech.sample_rate):.3f}"
        return headers

    async def _encoded(self, encoder: TimedEncoder) -> AsyncIterator[bytes]:
        async for data in encode_stream(self._pcm(), encoder, self.executor):  # type: ignore[arg-type]
            yield data
        self._observe_encoding(encoder.seconds)

    async def _start(self, headers: dict[str, str], chunked: bool) -> web.StreamResponse:
        response = web.StreamResponse(headers=headers)
        if chunked:
            response.enable_chunked_encoding()
        await response.prepare(self.request)
        self.info.first_byte_at = time.monotonic()
        return response

    async def streamed(self) -> web.StreamResponse:
        """Chunked audio from one continuous encoder; headers leave with the first bytes."""
        encoder = TimedEncoder(self.synthesis.audio_format.open(self.speech.sample_rate))
        response: web.StreamResponse | None = None
        async for data in self._encoded(encoder):
            if response is None:
                headers = audio_headers(self.synthesis, self.speech, encoder.output_rate)
                response = await self._start(headers, chunked=True)
            await response.write(data)
        assert response is not None  # an encoder always emits at least its final bytes
        await response.write_eof()
        return response

    async def sse(self) -> web.StreamResponse:
        """OpenAI's stream_format "sse": speech.audio.delta events, then speech.audio.done."""
        encoder = TimedEncoder(self.synthesis.audio_format.open(self.speech.sample_rate))
        response: web.StreamResponse | None = None
        async for data in self._encoded(encoder):
            if response is None:
                headers = audio_headers(self.synthesis, self.speech, encoder.output_rate)
                headers.update({"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
                response = await self._start(headers, chunked=False)
            delta = {"type": "speech.audio.delta", "audio": base64.b64encode(data).decode()}
            await response.write(sse_event(delta))
        assert response is not None
        characters = len(self.synthesis.text)
        usage = {"input_tokens": characters, "output_tokens": 0, "total_tokens": characters}
        await response.write(sse_event({"type": "speech.audio.done", "usage": usage}))
        await response.write_eof()
        return response


def sse_event(payload: dict[str, object]) -> bytes:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()
