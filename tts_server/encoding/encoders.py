"""Streaming encoders from int16 mono PCM: raw PCM, WAV, and PyAV (FFmpeg) muxers.

Which encoder a format uses, and at what rate, is the format's business (formats.py).
"""

from __future__ import annotations

import asyncio
import io
from abc import ABC, abstractmethod
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from fractions import Fraction
from typing import TYPE_CHECKING

import av
import numpy as np
import soxr

from tts_server.encoding.wav import wav_header

if TYPE_CHECKING:
    from tts_server.encoding.formats import AudioFormat


def supported_rate(source_rate: int, rates: Sequence[int] | None) -> int:
    """The source rate if the codec takes it, else the lowest supported rate above it."""
    if rates is None or source_rate in rates:
        return source_rate
    higher = [r for r in rates if r > source_rate]
    return min(higher) if higher else max(rates)


class _Resampler:
    """soxr's streaming resampler: its state spans chunks, so boundaries do not click."""

    def __init__(self, source_rate: int, output_rate: int) -> None:
        self._stream = (
            None
            if source_rate == output_rate
            else soxr.ResampleStream(source_rate, output_rate, 1, dtype="int16")
        )

    def push(self, samples: np.ndarray) -> np.ndarray:
        return samples if self._stream is None else self._stream.resample_chunk(samples)

    def flush(self) -> np.ndarray:
        empty = np.zeros(0, np.int16)
        return empty if self._stream is None else self._stream.resample_chunk(empty, last=True)


class StreamEncoder(ABC):
    """One continuous encoder per response; use it from one thread at a time.

    feed() returns the encoded bytes available so far, finish() the rest. Nothing is shared
    between encoders, so a bounded thread pool can run many; PyAV drops the GIL inside each
    codec call but holds it between codec frames (20-50 ms of audio each).
    """

    def __init__(self, fmt: AudioFormat, source_rate: int, output_rate: int) -> None:
        self.format = fmt
        self.source_rate = source_rate
        self.output_rate = output_rate
        self._resampler = _Resampler(source_rate, output_rate)
        self._odd_byte = b""
        self._empty = True
        self._finished = False

    def feed(self, pcm: bytes) -> bytes:
        if self._finished:
            raise RuntimeError("feed() after finish()")
        samples = self._resampler.push(self._samples(pcm))
        self._empty = self._empty and not len(samples)
        return self._encode(samples)

    def finish(self) -> bytes:
        if self._finished:
            raise RuntimeError("finish() called twice")
        self._finished = True
        samples = self._resampler.flush()
        if self._empty and not len(samples) and self.format.lossy:
            # An mp3, aac or opus stream without a single frame is not a playable file.
            samples = np.zeros(self.output_rate // 100, np.int16)
        return self._encode(samples) + self._flush()

    def _samples(self, pcm: bytes) -> np.ndarray:
        # A chunk split inside a sample keeps its odd byte for the next chunk.
        data = self._odd_byte + pcm
        cut = len(data) - len(data) % 2
        self._odd_byte = data[cut:]
        return np.frombuffer(data[:cut], dtype="<i2")

    @abstractmethod
    def _encode(self, samples: np.ndarray) -> bytes: ...

    def _flush(self) -> bytes:
        return b""


class PcmEncoder(StreamEncoder):
    def _encode(self, samples: np.ndarray) -> bytes:
        return samples.astype("<i2", copy=False).tobytes()


class WavEncoder(PcmEncoder):
    """Streamed WAV: one header with unknown (0xFFFFFFFF) sizes, then raw samples. A whole
    file (`sized`) gets the exact sizes instead, so it is written once all samples are in."""

    def __init__(self, fmt: AudioFormat, source_rate: int, output_rate: int,
                 sized: bool = False) -> None:
        super().__init__(fmt, source_rate, output_rate)
        self._sized = sized
        self._header = b"" if sized else wav_header(output_rate, None)
        self._held: list[bytes] = []

    def _encode(self, samples: np.ndarray) -> bytes:
        data = super()._encode(samples)
        if self._sized:
            self._held.append(data)
            return b""
        header, self._header = self._header, b""
        return header + data

    def _flush(self) -> bytes:
        if not self._sized:
            return b""
        body = b"".join(self._held)
        return wav_header(self.output_rate, len(body)) + body


@dataclass(frozen=True)
class _AvCodec:
    codec: str
    sample_format: str
    rates: tuple[int, ...] | None
    bit_rate: int = 0
    container: str = ""
    container_options: dict[str, str] = field(default_factory=dict)


_MPEG_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
AV_CODECS = {
    # No ID3 tag: nothing to play. A Xing/LAME tag is only written when the output is seekable.
    "mp3": _AvCodec("libmp3lame", "s16p", _MPEG_RATES, 64_000, "mp3", {"id3v2_version": "0"}),
    "aac": _AvCodec("aac", "fltp", (7350, 64000, 88200, 96000, *_MPEG_RATES), 64_000, "adts"),
    "flac": _AvCodec("flac", "s16", None, 0, "flac", {"metadata_header_padding": "0"}),
    "opus": _AvCodec("libopus", "s16", (8000, 12000, 16000, 24000, 48000), 32_000),
}


def av_frame(samples: np.ndarray, spec: _AvCodec, rate: int, pts: int) -> av.AudioFrame:
    data = samples.astype(np.float32) / 32768 if spec.sample_format == "fltp" else samples
    frame = av.AudioFrame.from_ndarray(
        data.reshape(1, -1), format=spec.sample_format, layout="mono"
    )
    frame.sample_rate = rate
    frame.pts = pts
    frame.time_base = Fraction(1, rate)
    return frame


class _StreamSink:
    """Write-only and unseekable, so FFmpeg muxes for streaming and flushes after each packet."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def take(self, final: bool = False) -> bytes:
        data = b"".join(self._parts)
        self._parts.clear()
        return data


class _FileSink(io.BytesIO):
    """Seekable, so the muxer can patch headers (FLAC length, MP3 Xing/LAME tag) at the end."""

    def take(self, final: bool = False) -> bytes:
        return self.getvalue() if final else b""


class AvEncoder(StreamEncoder):
    """mp3, aac (ADTS) and flac through a PyAV (FFmpeg) muxer writing into memory."""

    def __init__(self, fmt: AudioFormat, source_rate: int, *, seekable: bool = False) -> None:
        self._spec = AV_CODECS[fmt.name]
        super().__init__(fmt, source_rate, supported_rate(source_rate, self._spec.rates))
        self._sink = _FileSink() if seekable else _StreamSink()
        self._container = av.open(
            self._sink, mode="w", format=self._spec.container, options=self._spec.container_options
        )
        self._stream = self._container.add_stream(self._spec.codec, rate=self.output_rate)
        self._stream.layout = "mono"
        self._stream.format = self._spec.sample_format
        if self._spec.bit_rate:
            self._stream.bit_rate = self._spec.bit_rate
        self._container.start_encoding()  # the header even if no audio ever comes
        self._pts = 0

    def _encode(self, samples: np.ndarray) -> bytes:
        if len(samples):
            frame = av_frame(samples, self._spec, self.output_rate, self._pts)
            self._pts += len(samples)
            self._container.mux(self._stream.encode(frame))
        return self._sink.take()

    def _flush(self) -> bytes:
        self._container.mux(self._stream.encode(None))
        self._container.close()
        return self._sink.take(final=True)


async def encode_in_executor(
    executor: Executor | None, encoder: StreamEncoder, pcm: bytes | None
) -> bytes:
    """encoder.feed(pcm), or encoder.finish() for None, on `executor`, off the event loop.

    Pass a bounded ThreadPoolExecutor shared by all responses (about one worker per core).
    """
    loop = asyncio.get_running_loop()
    if pcm is None:
        return await loop.run_in_executor(executor, encoder.finish)
    return await loop.run_in_executor(executor, encoder.feed, pcm)


async def encode_stream(
    chunks: AsyncIterable[bytes], encoder: StreamEncoder, executor: Executor | None
) -> AsyncIterator[bytes]:
    """The encoded response body, one non-empty piece per PCM chunk, then the final bytes."""
    async for chunk in chunks:
        if data := await encode_in_executor(executor, encoder, chunk):
            yield data
    if data := await encode_in_executor(executor, encoder, None):
        yield data
