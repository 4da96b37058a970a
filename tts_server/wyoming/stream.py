"""A synthesize-start ... synthesize-stop stream: sentences spoken as their text completes."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from tts_server import keys
from tts_server.errors import BadRequest, PayloadTooLarge
from tts_server.gateway.auth import Identity
from tts_server.speech.service import Speech
from tts_server.speech.textstream import SentenceCutter, SentencePipeline, VoiceChoice
from tts_server.wyoming.audio import AudioOut
from tts_server.wyoming.observe import Exchange

if TYPE_CHECKING:
    from tts_server.wyoming.handler import Connection


class WyomingStream:
    """Text chunks in (read by the connection's loop), audio out (written by `sender`):
    each finished sentence is synthesized at once, its audio sent in order as its own
    audio-start ... audio-stop. At most `lookahead_sentences` are synthesized ahead of the
    one being sent; later ones wait as text (bounded by max_stream_chars)."""

    def __init__(self, connection: Connection, choice: VoiceChoice, identity: Identity,
                 exchange: Exchange) -> None:
        service = connection.service
        self.connection = connection
        self.app = service.app
        self.settings = service.settings
        self.choice = choice
        self.identity = identity
        self.exchange = exchange
        self.admission = service.admission(identity)
        self.cutter = SentenceCutter(self.settings.text.max_chunk_chars)
        self.pipeline = SentencePipeline(self._speak, service.config.lookahead_sentences)
        self.audio = AudioOut(connection.out, service.config.samples_per_chunk, exchange,
                              service.observer.metrics)
        self.failure: Exception | None = None
        self.sender = asyncio.get_running_loop().create_task(self._send_all())

    async def add(self, text: object) -> None:
        """One synthesize-chunk: counted against the limits as it arrives."""
        if not isinstance(text, str):
            raise BadRequest("synthesize-chunk needs a string 'text'", code="invalid_text")
        info = self.exchange.info
        limit = self.settings.wyoming.max_stream_chars
        if info.chars + len(text) > limit:
            raise PayloadTooLarge(f"the stream's text is over {limit} characters",
                                  code="text_too_long")
        info.chars += len(text)
        await self.app[keys.GATEWAY].charge_chars(self.identity, len(text))
        for unit in self.cutter.add(text):
            self.pipeline.add(unit)

    async def finish(self) -> None:
        """synthesize-stop: what is left is the last sentence; returns once all audio is out
        (raising what the sender met, if it failed)."""
        for unit in self.cutter.flush():
            self.pipeline.add(unit)
        self.pipeline.close()
        await self.sender
        if self.failure is not None:
            raise self.failure

    def cancel(self) -> None:
        self.pipeline.cancel()
        self.sender.cancel()

    async def _speak(self, text: str) -> Speech:
        synthesis = self.choice.request(text, self.app[keys.REGISTRY], self.settings)
        return await self.app[keys.SPEECH].speak(synthesis, self.admission)

    async def _send_all(self) -> None:
        try:
            async for sentence in self.pipeline.sentences():
                await self.audio.sentence(sentence)
        except Exception as exc:
            self.failure = exc
            self.connection.fail_soon(exc)  # the reader may be waiting for the next event
