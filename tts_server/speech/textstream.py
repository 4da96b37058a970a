"""Text that arrives in pieces: cut into sentence units as they complete, spoken in order.

Shared by the two text-in streaming fronts (the WebSocket route and Wyoming's
synthesize-start/-chunk/-stop). `SentenceCutter` turns fragments into the same units
`split_units` makes of a whole text; `SentencePipeline` starts each unit's synthesis as
soon as it is cut (so two sentences can run on two workers) while their audio leaves in
order, with a bounded number of sentences synthesized ahead of the one being sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import unicodedata
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np
import soxr

from inference.text import detect_language
from tts_server.config import Settings
from tts_server.encoding.formats import get_format
from tts_server.speech.request import SynthesisRequest, build_request, clean_text
from tts_server.speech.service import Speech
from tts_server.speech.synthesizer import SynthesisTrace

# The sentence rules are text.py's own: a boundary here is one split_units also makes.
from tts_server.speech.text import _SENTENCE_END, _ends_with_abbreviation, normalize, split_units
from tts_server.speech.voices import VoiceInfo, VoiceRegistry


class SentenceCutter:
    """Fragments in; each sentence out once nothing that may follow can change it.

    The first unit of a text may be its first clause (text.split_units' lead clause):
    only the first cut that yields units cuts one, as split_units does of the whole text."""

    def __init__(self, max_chunk_chars: int) -> None:
        self.max_chunk_chars = max_chunk_chars
        self._buffer = ""
        self._lead = True  # nothing speakable cut yet: the next cut starts the text

    @property
    def pending(self) -> str:
        return self._buffer

    def add(self, fragment: str) -> list[str]:
        # NFKC first, as normalize() does to a whole text: boundaries are then found in the
        # same characters (full-width "！" is "!" by then), so the units and their cache
        # keys are the same whether a text is streamed or sent at once.
        self._buffer += unicodedata.normalize("NFKC", fragment)
        cut = self._last_boundary()
        if cut == 0 and len(self._buffer) > self.max_chunk_chars:
            cut = self._hard_cut()  # no sentence end in sight: keep the buffer bounded
        return self._take(cut)

    def flush(self) -> list[str]:
        """Everything held, complete or not (a flush message, the end of the text)."""
        return self._take(len(self._buffer))

    def clear(self) -> None:
        """Drop what is held; what comes next starts a new text (a cancel)."""
        self._buffer = ""
        self._lead = True

    def _take(self, cut: int) -> list[str]:
        head, self._buffer = self._buffer[:cut], self._buffer[cut:]
        if not head.strip():
            return []
        units = split_units(normalize(head), self.max_chunk_chars, lead=self._lead)
        self._lead = self._lead and not units
        return units

    def _last_boundary(self) -> int:
        """The end of the last sentence boundary not after an abbreviation ("Dr. "), which
        the next fragment could still join to what follows. "Hello." at the very end is no
        boundary yet: the next fragment may be "5" or "com"."""
        for match in reversed(list(_SENTENCE_END.finditer(self._buffer))):
            if not _ends_with_abbreviation(self._buffer[: match.start()]):
                return match.end()
        return 0

    def _hard_cut(self) -> int:
        """At the last space within the unit limit, else at the limit (CJK has no spaces)."""
        space = self._buffer.rfind(" ", 0, self.max_chunk_chars + 1)
        return space if space > 0 else self.max_chunk_chars


@dataclass(frozen=True)
class VoiceChoice:
    """What a stream asked for once, applied to each of its sentences: the text of each
    sentence picks its language, as a whole text's does on /api/tts."""

    name: str | None
    speed: float = 1.0
    # For the named voice only (a sentence routed to another voice uses that one's default).
    speaker: int | None = None

    @classmethod
    def checked(cls, registry: VoiceRegistry, name: object, speed: float,
                speaker: object) -> VoiceChoice:
        """Unknown voices and speakers are refused when the stream opens, not mid-way."""
        voice = registry.resolve(name)
        return cls(name if isinstance(name, str) else None, speed,
                   voice.resolve_speaker(speaker))

    def request(self, text: str, registry: VoiceRegistry, settings: Settings
                ) -> SynthesisRequest:
        text = clean_text(text, "text", settings.text.max_text_chars)
        voice = registry.route(self.name, detect_language(text))
        return build_request(text, voice, self.speed, self._speaker_for(voice, registry),
                             PCM, True, settings)

    def _speaker_for(self, voice: VoiceInfo, registry: VoiceRegistry) -> int | None:
        return self.speaker if voice is registry.resolve(self.name) else None


# The speech layer's audio is PCM at the voice's rate; each front encodes it itself.
PCM = get_format("pcm_native")
_END = object()


@dataclass
class SpokenSentence:
    """One unit on its way out: its synthesis runs in `task`, its PCM collects in `_audio`."""

    index: int
    text: str
    speech: Speech | None = None
    dropped: bool = False
    _audio: asyncio.Queue[object] = field(default_factory=asyncio.Queue)
    _task: asyncio.Task[None] | None = None
    _released: bool = False

    async def chunks(self) -> AsyncIterator[bytes]:
        """Its PCM chunks as they come; raises what its synthesis raised; ends early if the
        sentence is dropped."""
        while True:
            item = await self._audio.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            assert isinstance(item, bytes)
            yield item


class SentencePipeline:
    """Sentences spoken in order. At most `lookahead` are synthesizing or unsent at once
    (what bounds the audio held for a client); later ones wait as text, which the caller
    bounds by its character limit, so the client's messages are always read (a cancel or
    a hang-up is seen at once)."""

    def __init__(self, speak: Callable[[str], Awaitable[Speech]], lookahead: int) -> None:
        self._speak = speak
        self._free = lookahead
        self._waiting: deque[str] = deque()
        self._order: asyncio.Queue[SpokenSentence | None] = asyncio.Queue()
        self._unsent: deque[SpokenSentence] = deque()
        self._closed = False
        self.count = 0

    @property
    def busy(self) -> bool:
        """Some sentence is waiting, being synthesized or being sent."""
        return bool(self._unsent or self._waiting)

    def add(self, text: str) -> None:
        """Queue a sentence; its synthesis starts now if fewer than `lookahead` are unsent."""
        self._waiting.append(text)
        self._start_ready()

    def close(self) -> None:
        """No more sentences: sentences() ends after the last one."""
        self._closed = True
        self._start_ready()

    def cancel(self) -> int:
        """Drop every sentence not yet sent (the one being sent too): their units never
        run, or stop running. Returns how many were dropped; the stream goes on."""
        dropped = len(self._waiting) + len(self._unsent)
        self._waiting.clear()
        while self._unsent:
            self._drop(self._unsent.popleft())
        ended = False
        while not self._order.empty():  # the dropped ones must not come out of sentences()
            ended = self._order.get_nowait() is None or ended
        if ended:
            self._order.put_nowait(None)
        return dropped

    async def sentences(self) -> AsyncIterator[SpokenSentence]:
        """Each sentence in order, once; its slot frees when the consumer moves on."""
        while (sentence := await self._order.get()) is not None:
            try:
                yield sentence
            finally:
                with contextlib.suppress(ValueError):
                    self._unsent.remove(sentence)
                self._release(sentence)

    def _start_ready(self) -> None:
        while self._waiting and self._free > 0:
            self._free -= 1
            sentence = SpokenSentence(self.count, self._waiting.popleft())
            self.count += 1
            sentence._task = asyncio.get_running_loop().create_task(self._run(sentence))
            self._unsent.append(sentence)
            self._order.put_nowait(sentence)
        if self._closed and not self._waiting:
            self._closed = False  # the end marker goes in once
            self._order.put_nowait(None)

    async def _run(self, sentence: SpokenSentence) -> None:
        try:
            sentence.speech = await self._speak(sentence.text)
            async for pcm in sentence.speech.chunks:
                sentence._audio.put_nowait(pcm)
            sentence._audio.put_nowait(_END)
        except asyncio.CancelledError:
            sentence._audio.put_nowait(_END)
            raise
        except Exception as exc:  # the consumer raises it, in order, when it gets there
            sentence._audio.put_nowait(exc)

    def _drop(self, sentence: SpokenSentence) -> None:
        sentence.dropped = True
        if sentence._task is not None:
            # Leaving the flight's chunk iterator cancels the flight (and its queued units)
            # when nobody else follows it.
            sentence._task.cancel()
        self._release(sentence)

    def _release(self, sentence: SpokenSentence) -> None:
        if not sentence._released:
            sentence._released = True
            self._free += 1
            self._start_ready()


def at_rate(pcm: bytes, source_rate: int, target_rate: int) -> bytes:
    """One stream has one rate: a sentence spoken by a voice of another rate is resampled."""
    if source_rate == target_rate or not pcm:
        return pcm
    samples = np.frombuffer(pcm[: len(pcm) - len(pcm) % 2], dtype="<i2").astype(np.float32)
    resampled = soxr.resample(samples, source_rate, target_rate)
    return resampled.clip(-32768, 32767).astype("<i2").tobytes()


def add_trace(total: SynthesisTrace, part: SynthesisTrace) -> None:
    """A stream's timings are the sum of its sentences' (the access log's queue/synth ms)."""
    total.queue_ms += part.queue_ms
    total.synthesis_ms += part.synthesis_ms
    total.audio_bytes += part.audio_bytes
    total.engine = total.engine or part.engine
    total.degraded = total.degraded or part.degraded
