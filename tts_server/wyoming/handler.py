"""One Wyoming connection: describe, synthesize, and synthesize-start/-chunk/-stop streams.

Every request event is identified (access policy, optional token), rate limited and
charged like an API request, then spoken through the same SpeechService. Any refusal or
failure is sent as an `error` event {text, code} and the connection is then closed, as
the wyoming package's own servers do (a Home Assistant waiting for audio-stop sees the
end of the connection). Unknown event types are ignored, as the protocol asks.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from tts_server import keys
from tts_server.errors import BadRequest, Forbidden, ServiceUnavailable, TTSError, Unauthorized
from tts_server.gateway.auth import Identity
from tts_server.speech.synthesizer import Admission
from tts_server.speech.textstream import VoiceChoice
from tts_server.wyoming.audio import AudioOut
from tts_server.wyoming.events import (
    Event,
    EventWriter,
    Limits,
    ProtocolError,
    SlowReader,
    read_event,
)
from tts_server.wyoming.info import info_data
from tts_server.wyoming.observe import Exchange, Observer
from tts_server.wyoming.stream import WyomingStream

LOG = logging.getLogger("tts.wyoming")
# A client that hung up mid-request (nginx's convention; no HTTP code says it).
CLIENT_CLOSED = 499
# The last bytes (an error event behind unread audio) get this long to leave.
CLOSE_GRACE_S = 2.0


class WyomingService:
    """What every connection shares: the application's speech layer, gateway and settings."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.settings = app[keys.SETTINGS]
        self.config = self.settings.wyoming
        self.limits = Limits(self.config.max_event_bytes, self.config.max_payload_bytes)
        self.observer = Observer(self.settings, app.get(keys.METRICS))
        self.tier = self.config.tier or self.settings.auth.anonymous_tier

    def admission(self, identity: Identity) -> Admission:
        tier = self.app[keys.GATEWAY].tier(identity)
        return Admission(priority=tier.priority, deadline_s=tier.deadline_s,
                         level=self.app[keys.RUN_STATE].degradation_level)


def is_loopback(host: str) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def _speaker(raw: object) -> object:
    """Wyoming speakers are strings; "3" also means speaker id 3 (as in wyoming-piper)."""
    return int(raw) if isinstance(raw, str) and raw.isdecimal() else raw


class Connection:
    def __init__(self, service: WyomingService, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.service = service
        self.app = service.app
        self.reader = reader
        self.writer = writer
        self.out = EventWriter(writer, service.config.write_timeout_s)
        peer = writer.get_extra_info("peername")
        self.peer = str(peer[0]) if isinstance(peer, tuple) else "unknown"
        self.exchange: Exchange | None = None
        self.stream: WyomingStream | None = None
        self._failure: asyncio.Future[BaseException] = (
            asyncio.get_running_loop().create_future())
        self._handlers: dict[str, Callable[[Event], Awaitable[None]]] = {
            "describe": self._describe, "ping": self._ping, "synthesize": self._synthesize,
            "synthesize-start": self._start, "synthesize-chunk": self._chunk,
            "synthesize-stop": self._stop,
        }

    # ---- the connection's life -----------------------------------------------------------

    @property
    def idle(self) -> bool:
        """Between requests: nothing is lost by closing it now."""
        return self.exchange is None and self.stream is None

    async def serve(self) -> None:
        try:
            if self.service.config.access == "loopback" and not is_loopback(self.peer):
                raise Forbidden("this Wyoming listener serves this machine only",
                                code="loopback_only")
            await self._supervise(asyncio.get_running_loop().create_task(self._read_loop()))
        except (TTSError, ProtocolError) as exc:
            await self._fail(exc)
        except (ConnectionError, OSError):
            pass  # the client went away; the finally below drops its work
        except Exception:
            LOG.exception("wyoming: unexpected failure serving %s", self.peer)
            await self._fail(TTSError("internal server error"))
        finally:
            await self._close()

    async def _supervise(self, reader: asyncio.Task[None]) -> None:
        """The read loop, or a stream's sender failing first (it cannot raise in the
        reader's task): either way the first failure is what the client hears."""
        try:
            await asyncio.wait({reader, self._failure}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            reader.cancel()  # a no-op once it is done; at shutdown it ends with us
        if self._failure.done():
            with contextlib.suppress(BaseException):
                await reader
            raise self._failure.result()
        reader.result()

    def fail_soon(self, exc: BaseException) -> None:
        """From a stream's sender task: stop reading and report `exc`."""
        if not self._failure.done():
            self._failure.set_result(exc)

    async def _read_loop(self) -> None:
        while (event := await self._next_event()) is not None:
            handler = self._handlers.get(event.type)
            if handler is None:
                LOG.debug("wyoming: ignoring a %r event", event.type)
                continue
            await handler(event)

    async def _next_event(self) -> Event | None:
        """The idle limit holds only while nothing is being spoken: a client waiting for a
        stream's audio before it sends more text is not idle."""
        idle_s = self.service.config.idle_timeout_s
        reading = asyncio.ensure_future(read_event(self.reader, self.service.limits))
        try:
            while True:
                done, _ = await asyncio.wait({reading}, timeout=idle_s)
                if done:
                    return reading.result()
                if self.stream is None or not self.stream.pipeline.busy:
                    raise ProtocolError(f"no event for {idle_s:g} s", "idle_timeout")
        finally:
            reading.cancel()  # a no-op once it is done

    async def _fail(self, exc: TTSError | ProtocolError) -> None:
        status = exc.status if isinstance(exc, TTSError) else 400
        LOG.info("wyoming: %s from %s: %s", exc.code, self.peer, exc.message)
        self._end(status, exc.code)
        error = {"text": exc.message, "code": exc.code}
        if isinstance(exc, SlowReader):
            self.out.send_now("error", error)  # behind the audio it does not read
            return
        try:
            await self.out.send("error", error)
        except (ConnectionError, OSError, TTSError):
            pass  # nobody to tell

    def _end(self, status: int, error: str | None = None) -> None:
        """Record the exchange under way (or, for a refusal outside one, a bare line)."""
        exchange = self.exchange or Exchange("connection", self.peer)
        self.exchange = None
        if exchange.kind == "connection":
            self.service.observer.begin(exchange)
        self.service.observer.end(exchange, status, error)

    async def _close(self) -> None:
        if self.stream is not None:
            self.stream.cancel()  # queued sentences never run
            self.stream = None
        if self.exchange is not None:
            self._end(CLIENT_CLOSED, "client_closed")
        try:
            # Half-close and read what the peer still sends: closing with unread input
            # would reset the connection and could discard the error event in flight.
            if self.writer.can_write_eof():
                self.writer.write_eof()
            await asyncio.wait_for(self._discard_input(), CLOSE_GRACE_S)
            self.writer.close()
            await asyncio.wait_for(self.writer.wait_closed(), CLOSE_GRACE_S)
        except (TimeoutError, ConnectionError, OSError, RuntimeError):
            self.writer.transport.abort()  # a peer that takes no bytes keeps no socket

    async def _discard_input(self) -> None:
        while await self.reader.read(65536):
            pass

    # ---- who, and may they -----------------------------------------------------------------

    async def _authorize(self, event: Event, exchange: Exchange) -> Identity:
        app = self.app
        if app[keys.RUN_STATE].draining:
            raise ServiceUnavailable("server is shutting down", code="draining",
                                     retry_after_s=self.service.settings.server.retry_after_s)
        identity = self._identify(event.data.get("token"))
        exchange.client, exchange.tier = identity.name, identity.tier
        gateway = app[keys.GATEWAY]
        decision = await gateway.check_requests(identity)
        if decision is not None:
            gateway.enforce_requests(identity, decision)
        return identity

    def _identify(self, token: Any) -> Identity:
        if token is None and self.service.config.access != "token":
            return Identity(f"anonymous@{self.peer}", self.service.tier, f"ip:{self.peer}")
        if not isinstance(token, str) or not token:
            raise Unauthorized("this listener needs an API token in the event's data.token",
                               code="missing_token")
        found = self.app[keys.GATEWAY].tokens.find(token)
        if found is None:
            raise Unauthorized("unknown or revoked token", code="invalid_token")
        return Identity(found.name, found.tier, f"token:{found.name}", found)

    def _choice(self, data: dict[str, Any]) -> VoiceChoice:
        text_format = data.get("text_format")
        if text_format not in (None, "text"):
            raise BadRequest(f"text_format {text_format!r} is not spoken; send plain text",
                             code="unsupported_text_format")
        voice = data.get("voice") or {}
        if not isinstance(voice, dict):
            raise BadRequest("voice must be an object {name, language, speaker}",
                             code="invalid_voice")
        registry = self.app[keys.REGISTRY]
        language = voice.get("language")
        if voice.get("name") is None and language is not None:
            self._check_language(language)
        return VoiceChoice.checked(registry, voice.get("name"), 1.0,
                                   _speaker(voice.get("speaker")))

    def _check_language(self, language: object) -> None:
        """A language with no voice is refused; otherwise each text's own language
        picks the voice, as on the HTTP API."""
        families = {v.language_family for v in self.app[keys.REGISTRY].voices.values()}
        family = language.split("_")[0].split("-")[0].lower() if isinstance(language, str) else ""
        if family not in families:
            raise BadRequest(f"no voice speaks {language!r}", code="language_unsupported")

    # ---- events --------------------------------------------------------------------------

    def _begin(self, kind: str) -> Exchange:
        self.exchange = self.service.observer.begin(Exchange(kind, self.peer))
        return self.exchange

    async def _describe(self, event: Event) -> None:
        exchange = self._begin("describe")
        await self._authorize(event, exchange)
        data = info_data(self.app[keys.REGISTRY], self.service.config.program_name)
        await self.out.send("info", data)
        self._end(200)

    async def _ping(self, event: Event) -> None:
        await self.out.send("pong", {"text": event.data.get("text")})

    async def _synthesize(self, event: Event) -> None:
        if self.stream is not None:
            return  # a streaming client's copy of the whole text, for older servers
        exchange = self._begin("synthesize")
        identity = await self._authorize(event, exchange)
        self.app[keys.GATEWAY].require_feature(identity, "tts")
        synthesis = self._choice(event.data).request(
            event.data.get("text"), self.app[keys.REGISTRY], self.service.settings)
        exchange.info.chars = len(synthesis.text)
        await self.app[keys.GATEWAY].charge_chars(identity, len(synthesis.text))
        speech = await self.app[keys.SPEECH].speak(synthesis, self.service.admission(identity))
        audio = AudioOut(self.out, self.service.config.samples_per_chunk, exchange,
                         self.service.observer.metrics)
        await audio.speech(speech)
        self._end(200)

    async def _start(self, event: Event) -> None:
        if self.stream is not None:
            raise BadRequest("a stream is already open on this connection", code="stream_open")
        exchange = self._begin("synthesize-stream")
        identity = await self._authorize(event, exchange)
        gateway = self.app[keys.GATEWAY]
        gateway.require_feature(identity, "tts")
        gateway.require_feature(identity, "stream")
        self.stream = WyomingStream(self, self._choice(event.data), identity, exchange)

    async def _chunk(self, event: Event) -> None:
        if self.stream is None:
            raise BadRequest("synthesize-chunk outside a stream (send synthesize-start first)",
                             code="no_stream")
        await self.stream.add(event.data.get("text"))

    async def _stop(self, event: Event) -> None:
        if self.stream is None:
            raise BadRequest("synthesize-stop outside a stream", code="no_stream")
        await self.stream.finish()
        self.stream = None
        await self.out.send("synthesize-stopped")
        self._end(200)
