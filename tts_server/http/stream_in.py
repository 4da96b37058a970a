"""GET /v1/audio/speech/stream: text in over a WebSocket, audio out sentence by sentence.

The client sends a JSON config, then text fragments as it has them, then "close"; each
sentence is synthesized as soon as its text is complete and its audio leaves in order as
binary frames, each followed by a small JSON "sentence" message. The bearer token, the
tier's features and its request rate are checked at the upgrade (the gateway middleware,
as for every /v1/ route); characters are charged as they arrive. Every refusal is an
"error" message and a close code with a JSON reason {"code", "message"}.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Coroutine
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from tts_server import keys
from tts_server.config import StreamInSettings
from tts_server.encoding.encoders import encode_in_executor
from tts_server.encoding.formats import get_format
from tts_server.errors import BadRequest, TTSError
from tts_server.speech.request import check_speed, parse_format
from tts_server.speech.service import Speech
from tts_server.speech.synthesizer import Admission, SynthesisTrace
from tts_server.speech.textstream import (
    SentenceCutter,
    SentencePipeline,
    SpokenSentence,
    VoiceChoice,
    add_trace,
    at_rate,
)

LOG = logging.getLogger("tts.stream_in")
PATH = "/v1/audio/speech/stream"
# Client "format" -> encoding format: pcm is s16le mono at the voice's rate.
FORMATS = {"pcm": "pcm_native", "opus": "opus", "mp3": "mp3"}
SESSIONS = web.AppKey("stream_in_sessions", set)
# Application close codes: 4000 + the HTTP status the same error has on the API.
APP_CLOSE_BASE = 4000
TIMED_OUT = 4408  # a slow reader, an idle or silent client
# Close codes aiohttp sends by itself (an oversize message, invalid UTF-8): their reason.
PROTOCOL_REASONS = {
    WSCloseCode.MESSAGE_TOO_BIG: ("message_too_big", "a message is over the size limit"),
    WSCloseCode.INVALID_TEXT: ("invalid_utf8", "a text message is not valid UTF-8"),
    WSCloseCode.PROTOCOL_ERROR: ("protocol_error", "not a valid WebSocket frame"),
}
MAX_REASON_BYTES = 123  # RFC 6455: a close frame's payload is at most 125 bytes


def close_reason(code: str, message: str) -> bytes:
    """{"code", "message"} as JSON, the message cut to fit a close frame."""
    for size in range(len(message), -1, -8):
        reason = json.dumps({"code": code, "message": message[:size]}, ensure_ascii=False)
        if len(reason.encode()) <= MAX_REASON_BYTES:
            return reason.encode()
    return json.dumps({"code": code[:100]}).encode()


class Close(Exception):
    """Ends the session: an error message, then a close frame with this code."""

    def __init__(self, code: int, error: str, message: str) -> None:
        super().__init__(message)
        self.code, self.error, self.message = code, error, message

    @classmethod
    def from_error(cls, error: TTSError) -> Close:
        """4000 + the API's status (4400, 4413, 4422, 4429, 4503); 1011 for a fault of ours."""
        internal = error.status >= 500 and error.status != 503
        code = WSCloseCode.INTERNAL_ERROR if internal else APP_CLOSE_BASE + error.status
        return cls(code, error.code, error.message)


class ClientGone(Exception):
    """The client closed the socket (or broke it): nothing more to send."""


class Socket(web.WebSocketResponse):
    """aiohttp closes by itself on an oversize message or bad UTF-8, with no reason: this
    gives those closes the JSON reason every other close has."""

    async def close(self, *, code: int = WSCloseCode.OK, message: bytes = b"",
                    drain: bool = True) -> bool:
        if not message and code in PROTOCOL_REASONS:
            message = close_reason(*PROTOCOL_REASONS[code])
        return await super().close(code=code, message=message, drain=drain)


def setup(app: web.Application) -> None:
    """The route, and the shutdown hook that ends open sessions gracefully."""
    app[SESSIONS] = set()
    app.router.add_get(PATH, speech_stream)
    app.on_shutdown.append(_drain_sessions)


async def _drain_sessions(app: web.Application) -> None:
    for session in list(app[SESSIONS]):
        session.drain()


async def speech_stream(request: web.Request) -> web.StreamResponse:
    gateway, identity = request.app[keys.GATEWAY], request[keys.IDENTITY]
    gateway.require_feature(identity, "tts")
    gateway.require_feature(identity, "stream")
    settings = request.app[keys.SETTINGS].stream_in
    ws = Socket(max_msg_size=settings.max_message_bytes, compress=False,
                timeout=settings.close_timeout_s)
    if not ws.can_prepare(request).ok:
        raise BadRequest(f"{PATH} is a WebSocket: send an Upgrade request",
                         code="websocket_required")
    request[keys.REQUEST_INFO] = keys.RequestInfo(trace=SynthesisTrace())
    await ws.prepare(request)
    session = StreamSession(request, ws)
    request.app[SESSIONS].add(session)
    try:
        await session.run()
    finally:
        request.app[SESSIONS].discard(session)
    return ws


class StreamSession:
    """One socket: a reader task (config, text, flush, cancel, close) and a sender task
    (each sentence's audio, then its "sentence" message), joined by a SentencePipeline."""

    def __init__(self, request: web.Request, ws: Socket) -> None:
        app = request.app
        self.request, self.ws, self.app = request, ws, app
        self.settings = app[keys.SETTINGS]
        self.limits: StreamInSettings = self.settings.stream_in
        self.identity = request[keys.IDENTITY]
        self.info: keys.RequestInfo = request[keys.REQUEST_INFO]
        tier = app[keys.GATEWAY].tier(self.identity)
        self.admission = Admission(priority=tier.priority, deadline_s=tier.deadline_s,
                                   level=app[keys.RUN_STATE].degradation_level)
        self.cutter = SentenceCutter(self.settings.text.max_chunk_chars)
        self.pipeline = SentencePipeline(self._speak, self.limits.lookahead_sentences)
        self.choice: VoiceChoice | None = None
        self.draining = False
        self._reader: asyncio.Task[None] | None = None
        self._send_lock = asyncio.Lock()

    # ---- the session -----------------------------------------------------------------------

    async def run(self) -> None:
        try:
            await self._serve()
        except Close as close:
            await self._close(close)
        except ClientGone:
            pass
        except TTSError as error:
            await self._close(Close.from_error(error))
        except Exception:
            LOG.exception("stream-in: unexpected failure")
            await self._close(Close(WSCloseCode.INTERNAL_ERROR, "internal_error",
                                    "internal server error"))
        finally:
            self.pipeline.cancel()  # a client gone or refused leaves no queued units behind

    async def _serve(self) -> None:
        sender = await self._configure()
        reader = self._reader = asyncio.get_running_loop().create_task(self._read())
        if self.draining:
            reader.cancel()
        tasks = {reader, sender}
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in tasks:
                if task.done() and not task.cancelled() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
            await sender
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        done = {"type": "done", "sentences": self.pipeline.count, "chars": self.info.chars,
                "audio_s": round(self.info.audio_s, 3)}
        await self._send_json(done)
        code = WSCloseCode.GOING_AWAY if self.draining else WSCloseCode.OK
        await self._close_socket(code, close_reason("draining" if self.draining else "done", ""))

    def drain(self) -> None:
        """Server shutdown: take no more text; what was sent is still spoken."""
        self.draining = True
        if self._reader is not None:
            self._reader.cancel()

    async def _close(self, close: Close) -> None:
        self.request[keys.ERROR_CODE] = close.error
        LOG.info("stream-in: closing %d %s: %s", close.code, close.error, close.message)
        if close.error != "slow_reader":  # it would not read it
            with contextlib.suppress(Close, ClientGone):
                await self._send_json({"type": "error", "code": close.error,
                                       "message": close.message})
        await self._close_socket(close.code, close_reason(close.error, close.message))

    async def _close_socket(self, code: int, reason: bytes) -> None:
        """The close frame; a client that takes no bytes gets close_timeout_s, then the
        connection is cut (its unsent audio is dropped, not kept)."""
        try:
            await asyncio.wait_for(self.ws.close(code=code, message=reason),
                                   self.limits.close_timeout_s)
        except (TimeoutError, ConnectionError):
            if self.request.transport is not None:
                self.request.transport.abort()

    # ---- reading ---------------------------------------------------------------------------

    async def _configure(self) -> asyncio.Task[None]:
        message = await self._next_message(self.limits.config_timeout_s, "config")
        if message["type"] != "config":
            raise Close(APP_CLOSE_BASE + 400, "config_expected",
                        'the first message must be {"type": "config", ...}')
        registry = self.app[keys.REGISTRY]
        fmt = get_format(FORMATS[parse_format(message.get("format", "pcm"), "format",
                                              tuple(FORMATS), "invalid_format")])
        speed = check_speed(message.get("speed", 1.0), self.settings)
        self.choice = VoiceChoice.checked(registry, message.get("voice"), speed,
                                          message.get("speaker"))
        voice = registry.resolve(self.choice.name)
        # The stream's rate is its voice's; a sentence routed to another voice is resampled.
        encoder = fmt.open(voice.sample_rate)
        info = self.info
        info.voice, info.audio_format = voice.name, message.get("format", "pcm")
        info.sample_rate = voice.sample_rate
        await self._send_json({"type": "start", "format": info.audio_format,
                               "content_type": fmt.content_type,
                               "sample_rate": encoder.output_rate, "voice": voice.name})
        sending = self._send_audio(encoder, voice.sample_rate)
        return asyncio.get_running_loop().create_task(sending)

    async def _read(self) -> None:
        try:
            while await self._handle(await self._next_message(None, "message")):
                pass
        except asyncio.CancelledError:
            if not self.draining:
                raise
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
        self._end_of_text()

    async def _next_message(self, timeout_s: float | None, what: str) -> dict[str, Any]:
        """The next JSON object from the client; the idle limit holds only while nothing
        is being spoken (a client listening to a long text sends nothing)."""
        while True:
            try:
                msg = await self.ws.receive(timeout_s or self.limits.idle_timeout_s)
                break
            except TimeoutError:
                if timeout_s is None and self.pipeline.busy:
                    continue
                raise Close(TIMED_OUT, "idle_timeout",
                            f"no {what} within {timeout_s or self.limits.idle_timeout_s:g} s"
                            ) from None
        return self._parse(msg)

    def _parse(self, msg: Any) -> dict[str, Any]:
        if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
            raise ClientGone()
        if msg.type is WSMsgType.ERROR:  # aiohttp has closed it, with its code
            self.request[keys.ERROR_CODE] = "protocol_error"
            raise ClientGone()
        if msg.type is not WSMsgType.TEXT:
            raise Close(WSCloseCode.UNSUPPORTED_DATA, "binary_message",
                        "messages to the server are JSON text, not binary")
        try:
            message = json.loads(msg.data)
        except ValueError:
            raise Close(WSCloseCode.INVALID_TEXT, "invalid_json",
                        "a message is not valid JSON") from None
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            raise Close(APP_CLOSE_BASE + 400, "invalid_message",
                        'every message is a JSON object with a string "type"')
        return message

    async def _handle(self, message: dict[str, Any]) -> bool:
        """One client message; False once the text has ended ("close")."""
        kind = message["type"]
        if kind == "text":
            await self._text(message.get("text"))
        elif kind == "flush":
            self._add(self.cutter.flush())
        elif kind == "cancel":
            self.cutter.clear()
            await self._send_json({"type": "cancelled", "dropped": self.pipeline.cancel()})
        elif kind == "close":
            return False
        else:
            raise Close(APP_CLOSE_BASE + 400, "unknown_type",
                        f"unknown message type {kind[:40]!r}: text, flush, cancel or close")
        return True

    async def _text(self, text: object) -> None:
        if not isinstance(text, str):
            raise Close(APP_CLOSE_BASE + 400, "invalid_text", '"text" must be a string')
        limits = self.limits
        if len(text) > limits.max_fragment_chars:
            raise Close(WSCloseCode.MESSAGE_TOO_BIG, "fragment_too_long",
                        f"a fragment has {len(text)} characters; the limit is "
                        f"{limits.max_fragment_chars}")
        if self.info.chars + len(text) > limits.max_session_chars:
            raise Close(APP_CLOSE_BASE + 413, "text_too_long",
                        f"the session's text is over {limits.max_session_chars} characters")
        self.info.chars += len(text)
        await self.app[keys.GATEWAY].charge_chars(self.identity, len(text))
        self._add(self.cutter.add(text))

    def _add(self, units: list[str]) -> None:
        for unit in units:
            self.pipeline.add(unit)

    def _end_of_text(self) -> None:
        self._add(self.cutter.flush())
        self.pipeline.close()

    # ---- speaking and sending -----------------------------------------------------------

    async def _speak(self, text: str) -> Speech:
        assert self.choice is not None
        synthesis = self.choice.request(text, self.app[keys.REGISTRY], self.settings)
        return await self.app[keys.SPEECH].speak(synthesis, self.admission)

    async def _send_audio(self, encoder: Any, rate: int) -> None:
        executor = self.app[keys.ENCODERS]
        position_s = 0.0
        async for sentence in self.pipeline.sentences():
            pcm_bytes = 0
            async for pcm in sentence.chunks():
                assert sentence.speech is not None
                pcm = at_rate(pcm, sentence.speech.sample_rate, rate)
                pcm_bytes += len(pcm)
                self.info.audio_bytes += len(pcm)
                await self._send_bytes(await encode_in_executor(executor, encoder, pcm))
            if sentence.dropped or sentence.speech is None:
                continue
            duration_s = pcm_bytes / 2 / rate
            await self._sentence_done(sentence, position_s, duration_s)
            position_s += duration_s
        await self._send_bytes(await encode_in_executor(executor, encoder, None))

    async def _sentence_done(self, sentence: SpokenSentence, start_s: float,
                             duration_s: float) -> None:
        speech = sentence.speech
        assert speech is not None and self.info.trace is not None
        info = self.info
        info.engine = info.engine or speech.trace.engine
        add_trace(info.trace, speech.trace)
        metrics = self.app.get(keys.METRICS)
        if metrics is not None:  # each sentence is a lookup of its own (info.cache stays
            # unset: the request middleware would count the session once more)
            metrics.child(metrics.cache_results, speech.cache_status).inc()
        await self._send_json({
            "type": "sentence", "index": sentence.index, "text": sentence.text,
            "start_s": round(start_s, 3), "duration_s": round(duration_s, 3),
            "voice": speech.request.voice.name, "cache": speech.cache_status})

    async def _send_bytes(self, data: bytes) -> None:
        if data:
            await self._send(self.ws.send_bytes(data))
            if self.info.first_byte_at is None:
                self.info.first_byte_at = time.monotonic()

    async def _send_json(self, message: dict[str, Any]) -> None:
        await self._send(self.ws.send_str(json.dumps(message, ensure_ascii=False)))

    async def _send(self, sending: Coroutine[Any, Any, None]) -> None:
        """One frame; a client that takes none of its audio for send_timeout_s is closed.

        The send is shielded from the timeout: aiohttp's writers share one drain waiter,
        and cancelling a wait on it would cancel it for the close frame that follows."""
        async with self._send_lock:
            task = asyncio.ensure_future(sending)
            try:
                await asyncio.wait_for(asyncio.shield(task), self.limits.send_timeout_s)
            except TimeoutError:
                task.add_done_callback(_retrieve)
                raise Close(TIMED_OUT, "slow_reader",
                            f"the client read no audio for {self.limits.send_timeout_s:g} s"
                            ) from None
            except (ConnectionError, RuntimeError):
                raise ClientGone() from None


def _retrieve(task: asyncio.Future[None]) -> None:
    """A send abandoned to a slow reader fails once the socket is cut: nobody awaits it."""
    if not task.cancelled():
        task.exception()
