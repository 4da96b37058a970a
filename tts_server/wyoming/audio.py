"""Speech out as Wyoming audio events: audio-start, audio-chunk (width 2, mono), audio-stop."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from tts_server.metrics import Metrics
from tts_server.speech.service import Speech
from tts_server.speech.textstream import SpokenSentence, at_rate
from tts_server.wyoming.events import EventWriter
from tts_server.wyoming.observe import Exchange

WIDTH = 2
CHANNELS = 1


class AudioOut:
    """Writes one exchange's audio; every sentence of a stream at the first one's rate
    (a client builds one WAV header from the first audio-start)."""

    def __init__(self, out: EventWriter, samples_per_chunk: int, exchange: Exchange,
                 metrics: Metrics | None) -> None:
        self.out = out
        self.chunk_bytes = samples_per_chunk * WIDTH * CHANNELS
        self.exchange = exchange
        self.metrics = metrics
        self.rate: int | None = None

    def _format(self) -> dict[str, int]:
        assert self.rate is not None
        return {"rate": self.rate, "width": WIDTH, "channels": CHANNELS}

    async def speech(self, speech: Speech) -> None:
        """A whole synthesize: always one audio-start and one audio-stop."""
        await self._write(speech.chunks, lambda: speech, final=True)

    async def sentence(self, sentence: SpokenSentence) -> None:
        """One sentence of a stream: its own audio-start ... audio-stop."""
        await self._write(sentence.chunks(), lambda: sentence.speech, final=False)

    async def _write(self, chunks: AsyncIterator[bytes], speech_of: Callable[[], Speech | None],
                     final: bool) -> None:
        """audio-start at the first chunk, so a failure before any audio is an error event
        alone."""
        started = False
        async for pcm in chunks:
            speech = speech_of()
            assert speech is not None  # set before its first chunk
            self.rate = self.rate or speech.sample_rate
            if not started:
                await self.out.send("audio-start", self._format())
                started = True
            await self._chunks(at_rate(pcm, speech.sample_rate, self.rate))
        speech = speech_of()
        if final and not started and speech is not None:
            self.rate = self.rate or speech.sample_rate
            await self.out.send("audio-start", self._format())
            started = True
        if started:
            await self.out.send("audio-stop")
        if speech is not None:
            self.exchange.spoke(speech, self.metrics)

    async def _chunks(self, pcm: bytes) -> None:
        for offset in range(0, len(pcm), self.chunk_bytes):
            piece = pcm[offset: offset + self.chunk_bytes]
            await self.out.send("audio-chunk", self._format(), piece)
            self.exchange.first_audio()
            self.exchange.info.audio_bytes += len(piece)
