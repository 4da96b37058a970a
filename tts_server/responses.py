"""Audio responses: whole, streamed (one continuous encoder per response) or as SSE events.

Encoding is CPU work and runs on a bounded thread pool, never on the event loop. Headers
leave with the first encoded bytes, so an error before any audio keeps its real status.
"""

from __future__ import annotations

import asyncio
import base64
import json
from concurrent.futures import Executor

from aiohttp import web

from .audio import duration_s
from .encoding import encode_stream, encode_whole, get_format, open_encoder, output_rate
from .schema import SynthesisRequest
from .speech import Speech
from .synthesis import SynthesisTrace


def server_timing(trace: SynthesisTrace) -> str:
    first = trace.first_audio_ms or 0.0
    return (
        f"queue;dur={trace.queue_ms:.1f}, synth;dur={trace.synthesis_ms:.1f}, "
        f"first-audio;dur={first:.1f}"
    )


def audio_headers(req: SynthesisRequest, speech: Speech, output_rate: int) -> dict[str, str]:
    return {
        "Content-Type": get_format(req.audio_format).content_type,
        "X-Sample-Rate": str(output_rate),
        "X-Voice": req.voice.name,
        "X-Engine": speech.trace.engine or req.voice.engine,
        "X-Cache": speech.cache_status,
        "Server-Timing": server_timing(speech.trace),
    }


async def whole_audio(req: SynthesisRequest, speech: Speech, executor: Executor) -> web.Response:
    pcm = b"".join([chunk async for chunk in speech.chunks])
    loop = asyncio.get_running_loop()
    body = await loop.run_in_executor(
        executor, encode_whole, req.audio_format, pcm, speech.sample_rate
    )
    headers = audio_headers(req, speech, output_rate(req.audio_format, speech.sample_rate))
    headers["X-Audio-Duration"] = f"{duration_s(len(pcm), speech.sample_rate):.3f}"
    return web.Response(body=body, headers=headers)


async def streamed_audio(
    request: web.Request, req: SynthesisRequest, speech: Speech, executor: Executor
) -> web.StreamResponse:
    encoder = open_encoder(req.audio_format, speech.sample_rate)
    response: web.StreamResponse | None = None
    async for data in encode_stream(speech.chunks, encoder, executor):
        if response is None:
            response = web.StreamResponse(headers=audio_headers(req, speech, encoder.output_rate))
            response.enable_chunked_encoding()
            await response.prepare(request)
        await response.write(data)
    assert response is not None  # an encoder always emits at least its final bytes
    await response.write_eof()
    return response


def sse_event(payload: dict[str, object]) -> bytes:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()


async def sse_audio(
    request: web.Request, req: SynthesisRequest, speech: Speech, executor: Executor
) -> web.StreamResponse:
    """OpenAI's stream_format "sse": speech.audio.delta events, then speech.audio.done."""
    encoder = open_encoder(req.audio_format, speech.sample_rate)
    response: web.StreamResponse | None = None
    async for data in encode_stream(speech.chunks, encoder, executor):
        if response is None:
            headers = audio_headers(req, speech, encoder.output_rate)
            headers["Content-Type"] = "text/event-stream"
            headers["Cache-Control"] = "no-cache"
            response = web.StreamResponse(headers=headers)
            await response.prepare(request)
        delta = {"type": "speech.audio.delta", "audio": base64.b64encode(data).decode()}
        await response.write(sse_event(delta))
    assert response is not None
    characters = len(req.text)
    usage = {"input_tokens": characters, "output_tokens": 0, "total_tokens": characters}
    await response.write(sse_event({"type": "speech.audio.done", "usage": usage}))
    await response.write_eof()
    return response
