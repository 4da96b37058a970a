"""Streaming encoders from int16 mono PCM to the OpenAI formats: mp3, opus, aac, flac, wav, pcm."""

from __future__ import annotations

import argparse
import asyncio
import io
import random
import statistics
import struct
import sys
import time
import zlib
from abc import ABC, abstractmethod
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from fractions import Fraction

import av
import numpy as np
import soxr

from .audio import wav_header

OPENAI_PCM_RATE = 24_000


@dataclass(frozen=True)
class AudioFormat:
    name: str
    content_type: str
    extension: str
    lossy: bool


FORMATS: dict[str, AudioFormat] = {
    f.name: f
    for f in (
        AudioFormat("mp3", "audio/mpeg", "mp3", lossy=True),
        AudioFormat("opus", "audio/ogg", "opus", lossy=True),
        AudioFormat("aac", "audio/aac", "aac", lossy=True),
        AudioFormat("flac", "audio/flac", "flac", lossy=False),
        AudioFormat("wav", "audio/wav", "wav", lossy=False),
        # OpenAI's pcm: 24 kHz s16le mono whatever the voice's rate.
        AudioFormat("pcm", "audio/pcm", "pcm", lossy=False),
        # The server's own /api/tts pcm: s16le mono at the voice's rate, untouched.
        AudioFormat("pcm_native", "audio/pcm", "pcm", lossy=False),
    )
}
OPENAI_FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")


def get_format(name: str) -> AudioFormat:
    try:
        return FORMATS[name]
    except KeyError:
        valid = ", ".join(FORMATS)
        raise ValueError(f"unknown audio format {name!r}; valid formats: {valid}") from None


def _supported_rate(source_rate: int, rates: Sequence[int] | None) -> int:
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
    """Streamed WAV: one header with unknown (0xFFFFFFFF) sizes, then raw samples."""

    def __init__(self, fmt: AudioFormat, source_rate: int, output_rate: int) -> None:
        super().__init__(fmt, source_rate, output_rate)
        self._header = wav_header(output_rate, None)

    def _encode(self, samples: np.ndarray) -> bytes:
        header, self._header = self._header, b""
        return header + super()._encode(samples)


@dataclass(frozen=True)
class _AvCodec:
    codec: str
    sample_format: str
    rates: tuple[int, ...] | None
    bit_rate: int = 0
    container: str = ""
    container_options: dict[str, str] = field(default_factory=dict)


_MPEG_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
_AV_CODECS = {
    # No ID3 tag: nothing to play. A Xing/LAME tag is only written when the output is seekable.
    "mp3": _AvCodec("libmp3lame", "s16p", _MPEG_RATES, 64_000, "mp3", {"id3v2_version": "0"}),
    "aac": _AvCodec("aac", "fltp", (7350, 64000, 88200, 96000, *_MPEG_RATES), 64_000, "adts"),
    "flac": _AvCodec("flac", "s16", None, 0, "flac", {"metadata_header_padding": "0"}),
    "opus": _AvCodec("libopus", "s16", (8000, 12000, 16000, 24000, 48000), 32_000),
}


def _av_frame(samples: np.ndarray, spec: _AvCodec, rate: int, pts: int) -> av.AudioFrame:
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
        self._spec = _AV_CODECS[fmt.name]
        super().__init__(fmt, source_rate, _supported_rate(source_rate, self._spec.rates))
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
            frame = _av_frame(samples, self._spec, self.output_rate, self._pts)
            self._pts += len(samples)
            self._container.mux(self._stream.encode(frame))
        return self._sink.take()

    def _flush(self) -> bytes:
        self._container.mux(self._stream.encode(None))
        self._container.close()
        return self._sink.take(final=True)


class OggOpusEncoder(StreamEncoder):
    """Opus (libopus via PyAV) in Ogg pages written here: one page per feed, nothing held back.

    FFmpeg's Ogg muxer keeps up to a page (1 s by default) buffered and has no flush call.
    """

    def __init__(self, fmt: AudioFormat, source_rate: int) -> None:
        self._spec = _AV_CODECS["opus"]
        super().__init__(fmt, source_rate, _supported_rate(source_rate, self._spec.rates))
        self._codec = av.CodecContext.create(self._spec.codec, "w")
        self._codec.sample_rate = self.output_rate
        self._codec.layout = "mono"
        self._codec.format = self._spec.sample_format
        self._codec.bit_rate = self._spec.bit_rate
        self._codec.time_base = Fraction(1, self.output_rate)
        self._codec.open()
        self._ogg = _OggWriter(self._codec.extradata, self.output_rate)
        self._pts = 0

    def _encode(self, samples: np.ndarray) -> bytes:
        if not len(samples):
            return b""
        frame = _av_frame(samples, self._spec, self.output_rate, self._pts)
        self._pts += len(samples)
        return self._ogg.pages(self._codec.encode(frame), last=False)

    def _flush(self) -> bytes:
        return self._ogg.pages(self._codec.encode(None), last=True)


_BIT_REVERSED = bytes(int(f"{i:08b}"[::-1], 2) for i in range(256))


def _ogg_crc(page: bytes) -> int:
    # Ogg's CRC-32 is zlib's polynomial unreflected with no inversion: run zlib on bit-reversed
    # bytes, undo its final inversion and reverse the result (C speed instead of a Python loop).
    reflected = ~zlib.crc32(page.translate(_BIT_REVERSED), 0xFFFFFFFF) & 0xFFFFFFFF
    return int(f"{reflected:032b}"[::-1], 2)


class _OggWriter:
    """Ogg Opus framing (RFC 7845): header pages, then pages of whole packets."""

    _BOS, _EOS = 0x02, 0x04

    def __init__(self, opus_head: bytes, rate: int) -> None:
        self._serial = random.getrandbits(32)
        self._sequence = 0
        self._granule = 0  # 48 kHz samples, counting the encoder's pre-skip
        self._per_sample = 48_000 // rate
        tags = b"OpusTags" + _le_string(b"tts-server") + struct.pack("<I", 0)
        self._headers = self._page([opus_head], self._BOS) + self._page([tags], 0)

    def pages(self, packets: list[av.Packet], last: bool) -> bytes:
        out, batch, segments = [self._headers], [], 0
        self._headers = b""
        for packet in packets:
            need = len(_lacing(packet.size))
            if segments + need > 255:
                out.append(self._page(batch, 0))
                batch, segments = [], 0
            batch.append(bytes(packet))
            segments += need
            # libopus's packets carry pts from -pre-skip and a trimmed last duration.
            self._granule += packet.duration * self._per_sample
        if batch or last:
            out.append(self._page(batch, self._EOS if last else 0))
        return b"".join(out)

    def _page(self, packets: list[bytes], flags: int) -> bytes:
        lacing = b"".join(_lacing(len(p)) for p in packets)
        header = b"OggS" + struct.pack(
            "<BBqIIIB", 0, flags, self._granule, self._serial, self._sequence, 0, len(lacing)
        )
        self._sequence += 1
        page = header + lacing + b"".join(packets)
        return page[:22] + struct.pack("<I", _ogg_crc(page)) + page[26:]


def _lacing(size: int) -> bytes:
    return bytes([255] * (size // 255) + [size % 255])


def _le_string(data: bytes) -> bytes:
    return struct.pack("<I", len(data)) + data


def open_encoder(format_name: str, source_rate: int) -> StreamEncoder:
    """A streaming encoder for one response: feed() each PCM chunk, then finish()."""
    return _open(get_format(format_name), source_rate, seekable=False)


def _open(fmt: AudioFormat, source_rate: int, *, seekable: bool) -> StreamEncoder:
    if fmt.name == "pcm":
        return PcmEncoder(fmt, source_rate, OPENAI_PCM_RATE)
    if fmt.name == "pcm_native":
        return PcmEncoder(fmt, source_rate, source_rate)
    if fmt.name == "wav":
        return WavEncoder(fmt, source_rate, source_rate)
    if fmt.name == "opus":
        return OggOpusEncoder(fmt, source_rate)
    return AvEncoder(fmt, source_rate, seekable=seekable)


def output_rate(format_name: str, source_rate: int) -> int:
    """The sample rate `format_name` delivers for audio made at `source_rate`."""
    name = get_format(format_name).name
    if name == "pcm":
        return OPENAI_PCM_RATE
    spec = _AV_CODECS.get(name)
    return _supported_rate(source_rate, spec.rates) if spec else source_rate


def encode_whole(format_name: str, pcm: bytes, source_rate: int) -> bytes:
    """A complete file: WAV with exact sizes, MP3 with a Xing/LAME tag, FLAC with its length."""
    fmt = get_format(format_name)
    if fmt.name == "wav":
        pcm = pcm[: len(pcm) - len(pcm) % 2]
        return wav_header(source_rate, len(pcm)) + pcm
    encoder = _open(fmt, source_rate, seekable=True)
    return encoder.feed(pcm) + encoder.finish()


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


def synthetic_speech(seconds: float, rate: int, seed: int = 0) -> np.ndarray:
    """Speech-like int16 test audio: a gliding harmonic voice under a syllable envelope."""
    t = np.arange(int(seconds * rate)) / rate
    phase = 2 * np.pi * np.cumsum(140 + 30 * np.sin(2 * np.pi * 0.7 * t)) / rate
    voice = sum(np.sin(k * phase) / k for k in range(1, 12))
    envelope = np.sqrt(np.clip(np.sin(2 * np.pi * 3 * t), 0, None))
    noise = 0.01 * np.random.default_rng(seed).standard_normal(len(t))
    signal = voice * envelope + noise
    return (signal / np.abs(signal).max() * 0.7 * 32767).astype(np.int16)


def _library(name: str) -> str:
    if name in _AV_CODECS:
        return f"PyAV {_AV_CODECS[name].codec}" + (" + own Ogg" if name == "opus" else "")
    return "numpy" + (" + soxr" if name == "pcm" else "")


def _playable_ms(name: str, data: bytes, rate: int) -> float:
    """How much audio a player gets out of these bytes."""
    if not FORMATS[name].lossy and name != "flac":
        return max(len(data) - (44 if name == "wav" else 0), 0) / 2 / rate * 1000
    with av.open(io.BytesIO(data)) as container:
        return sum(f.samples / f.sample_rate for f in container.decode(audio=0)) * 1000


def _bench_format(name: str, chunks: list[bytes], rate: int) -> dict[str, float]:
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    encoder = open_encoder(name, rate)
    first = encoder.feed(chunks[0])
    first_ms = (time.perf_counter() - start_wall) * 1000
    total = len(first) + sum(len(encoder.feed(c)) for c in chunks[1:]) + len(encoder.finish())
    return {
        "cpu": time.process_time() - start_cpu,
        "first_bytes": len(first),
        "first_ms": first_ms,
        "first_playable_ms": _playable_ms(name, first, encoder.output_rate),
        "total": total,
    }


def bench(seconds: float = 10.0, runs: int = 3, rate: int = 22_050) -> list[dict[str, object]]:
    """Per format, medians over runs of streaming `seconds` of audio in 0.5 s chunks."""
    pcm = synthetic_speech(seconds, rate).tobytes()
    step = rate  # 0.5 s of int16 samples
    chunks = [pcm[i : i + step] for i in range(0, len(pcm), step)]
    rows = []
    for name in FORMATS:
        results = [_bench_format(name, chunks, rate) for _ in range(runs)]
        med = {k: statistics.median(r[k] for r in results) for k in results[0]}
        rows.append(
            {
                "format": name,
                "library": _library(name),
                "cpu_ms_per_audio_s": med["cpu"] * 1000 / seconds,
                "first_feed_bytes": int(med["first_bytes"]),
                "first_feed_ms": med["first_ms"],
                "first_feed_playable_ms": med["first_playable_ms"],
                "kbps": med["total"] * 8 / seconds / 1000,
            }
        )
    return rows


def _print_table(rows: list[dict[str, object]]) -> None:
    print(
        f"{'format':<11} {'library':<24} {'cpu ms/audio s':>14} {'1st feed bytes':>14} "
        f"{'1st feed ms':>11} {'plays ms':>8} {'kbps':>6}"
    )
    for r in rows:
        print(
            f"{r['format']:<11} {r['library']:<24} {r['cpu_ms_per_audio_s']:>14.2f} "
            f"{r['first_feed_bytes']:>14} {r['first_feed_ms']:>11.2f} "
            f"{r['first_feed_playable_ms']:>8.0f} {r['kbps']:>6.1f}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tts_server.encoding")
    parser.add_argument("--bench", action="store_true", help="encoding cost and first-output table")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rate", type=int, default=22_050, help="source sample rate")
    args = parser.parse_args(argv)
    if not args.bench:
        parser.print_help()
        return 2
    print(
        f"{args.seconds:g} s of synthetic speech at {args.rate} Hz in 0.5 s chunks, "
        f"median of {args.runs} runs; 'plays ms': audio in the first feed's output (of 500)"
    )
    _print_table(bench(args.seconds, args.runs, args.rate))
    return 0


if __name__ == "__main__":
    sys.exit(main())
