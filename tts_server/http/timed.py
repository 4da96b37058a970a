"""Responses with word timings: JSON (audio base64 + words), a caption file (SRT/WebVTT),
or a stream of NDJSON / SSE events with each unit's words after its audio.

Only requests that asked for timings come here; the plain audio responses
(http/responses.py) are unchanged. Words are in the client's own text (speech/timings.py).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time

from aiohttp import web

from tts_server import keys
from tts_server.encoding.encoders import encode_in_executor
from tts_server.encoding.wav import duration_s
from tts_server.http.responses import AudioResponder, TimedEncoder, audio_headers, sse_event
from tts_server.speech.timings import CAPTION_TYPES, SourceMap, captions, public_words

NDJSON_TYPE = "application/x-ndjson"


class TimedResponder(AudioResponder):
    """An AudioResponder whose request asked for word timings (speech.pieces is set)."""

    def __init__(self, request: web.Request, speech) -> None:
        super().__init__(request, speech)
        assert speech.pieces is not None
        # The client's text (a request built without it, like warm-up's: the normalized).
        self.source = SourceMap(self.synthesis.source_text or self.synthesis.text)

    async def _pieces(self):
        async for pcm, words in self.speech.pieces:  # type: ignore[union-attr]
            self.info.audio_bytes += len(pcm)
            self.info.engine = self.speech.trace.engine or self.synthesis.voice.engine
            self.info.cache = self.speech.cache_status
            yield pcm, words

    def _words(self, words) -> list[dict[str, object]]:
        found = public_words(words, self.source, self.speech.sample_rate)
        return [word.as_dict() for word in found]

    def _source_of_timings(self) -> str:
        return "estimated" if self.speech.trace.estimated_timings else "engine"

    async def whole(self) -> web.StreamResponse:
        """JSON with the encoded audio and its words, or the caption file asked for."""
        chunks, words = [], []
        async for pcm, unit_words in self._pieces():
            chunks.append(pcm)
            words.extend(unit_words)
        pcm = b"".join(chunks)
        rate, fmt = self.speech.sample_rate, self.synthesis.audio_format
        headers = audio_headers(self.synthesis, self.speech, fmt.output_rate(rate))
        headers["X-Audio-Duration"] = f"{duration_s(len(pcm), rate):.3f}"
        headers["X-Timings"] = self._source_of_timings()
        caption_format = self.synthesis.captions
        if caption_format is not None:
            text = captions(public_words(words, self.source, rate), self.source.source,
                            caption_format, self.request.app[keys.SETTINGS].text)
            headers["Content-Type"] = f"{CAPTION_TYPES[caption_format]}; charset=utf-8"
            return web.Response(body=text.encode(), headers=headers)
        started = time.perf_counter()
        audio = await asyncio.get_running_loop().run_in_executor(
            self.executor, fmt.encode_whole, pcm, rate)
        self._observe_encoding(time.perf_counter() - started)
        body = {
            "audio": base64.b64encode(audio).decode(),
            "format": fmt.extension,
            "content_type": fmt.content_type,
            "sample_rate": fmt.output_rate(rate),
            "duration_s": round(duration_s(len(pcm), rate), 3),
            "voice": self.synthesis.voice.name,
            "timings": self._source_of_timings(),
            "words": self._words(words),
        }
        headers["Content-Type"] = "application/json"
        return web.Response(body=json.dumps(body, ensure_ascii=False).encode(), headers=headers)

    async def streamed(self) -> web.StreamResponse:
        """NDJSON: {"type": "audio"} lines (base64, one continuous encoder), each unit's
        {"type": "words"} after its audio, then {"type": "done"}."""
        return await self._events(ndjson_line, NDJSON_TYPE, "audio", "words", "done")

    async def sse(self) -> web.StreamResponse:
        """OpenAI's SSE (speech.audio.delta / speech.audio.done) with speech.words events."""
        return await self._events(sse_event, "text/event-stream", "speech.audio.delta",
                                  "speech.words", "speech.audio.done")

    async def _events(self, frame, content_type: str, audio_type: str, words_type: str,
                      done_type: str) -> web.StreamResponse:
        rate = self.speech.sample_rate
        encoder = TimedEncoder(self.synthesis.audio_format.open(rate))
        response: web.StreamResponse | None = None
        samples = 0

        async def send(payload: dict[str, object]) -> None:
            nonlocal response
            if response is None:
                headers = audio_headers(self.synthesis, self.speech, encoder.output_rate)
                headers.update({"Content-Type": content_type, "Cache-Control": "no-cache"})
                response = await self._start(headers, chunked=False)
            await response.write(frame(payload))

        async for pcm, words in self._pieces():
            samples += len(pcm) // 2
            data = await encode_in_executor(self.executor, encoder, pcm)
            if data:
                await send({"type": audio_type, "audio": base64.b64encode(data).decode()})
            if words:
                await send({"type": words_type, "words": self._words(words)})
        if data := await encode_in_executor(self.executor, encoder, None):
            await send({"type": audio_type, "audio": base64.b64encode(data).decode()})
        self._observe_encoding(encoder.seconds)
        characters = len(self.synthesis.text)
        await send({"type": done_type, "duration_s": round(samples / rate, 3),
                    "sample_rate": encoder.output_rate, "timings": self._source_of_timings(),
                    "usage": {"input_tokens": characters, "output_tokens": 0,
                              "total_tokens": characters}})
        assert response is not None
        await response.write_eof()
        return response


def ndjson_line(payload: dict[str, object]) -> bytes:
    return (json.dumps(payload, separators=(",", ":"), ensure_ascii=False) + "\n").encode()
