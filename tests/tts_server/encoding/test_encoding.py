"""Streaming encoders against real codecs: every format decodes back, streams, and resamples."""

from __future__ import annotations

import asyncio
import gc
import io
import struct
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

import av
import numpy as np
import pytest
import soundfile as sf
import soxr

from stress.bench_encoding import main
from tts_server.encoding.encoders import encode_stream
from tts_server.encoding.formats import (
    FORMATS,
    OPENAI_FORMATS,
    encode_whole,
    get_format,
    open_encoder,
)

RATE = 22_050
# Uneven chunk sizes in bytes, some odd (a chunk boundary inside a sample) and one tiny.
CHUNK_BYTES = (9001, 3, 44_107, 4000, 30_001, 17)
# Extra decoded audio (ms) that codecs add and a stream cannot tell the decoder to trim:
# mp3 (no LAME tag when streamed): 1105 samples of encoder delay + up to one 576-sample frame;
# aac in ADTS: 1024 priming samples + up to one 1024-sample frame. Everything else is exact.
PADDING_MS = {("mp3", "stream"): 100.0, ("aac", "stream"): 100.0, ("aac", "whole"): 100.0}
EXACT_MS = 1.0  # lossy formats with trimming information (Ogg granule, LAME tag)


def speech_like(seconds: float = 2.5, rate: int = RATE) -> np.ndarray:
    """Harmonics of a gliding pitch under a syllable-rate envelope, as int16."""
    t = np.arange(int(seconds * rate)) / rate
    pitch = 2 * np.pi * np.cumsum(120 + 40 * np.sin(2 * np.pi * 0.5 * t)) / rate
    voiced = sum(np.sin(k * pitch) / k for k in (1, 2, 3, 5, 8))
    envelope = np.abs(np.sin(2 * np.pi * 2.5 * t)) ** 0.7
    return (voiced * envelope / np.abs(voiced).max() * 20_000).astype(np.int16)


def sine(freq: float, seconds: float, rate: int = RATE) -> np.ndarray:
    return (np.sin(2 * np.pi * freq * np.arange(int(seconds * rate)) / rate) * 12_000).astype(
        np.int16
    )


def uneven_chunks(pcm: bytes) -> list[bytes]:
    chunks, start, i = [], 0, 0
    while start < len(pcm):
        size = CHUNK_BYTES[i % len(CHUNK_BYTES)]
        chunks.append(pcm[start : start + size])
        start, i = start + size, i + 1
    return chunks


def stream(name: str, pcm: bytes, rate: int = RATE) -> list[bytes]:
    """The encoder's output after each uneven chunk, then finish()'s."""
    encoder = open_encoder(name, rate)
    return [encoder.feed(chunk) for chunk in uneven_chunks(pcm)] + [encoder.finish()]


def after_real_chunks(pieces: list) -> list:
    """Outputs of the feeds given at least 4000 bytes (90 ms), more than a codec frame."""
    sizes = [len(c) for c in uneven_chunks(SPEECH.tobytes())]
    return [piece for piece, size in zip(pieces, sizes, strict=False) if size >= 4000]


def expected_rate(name: str, source_rate: int = RATE) -> int:
    return 24_000 if name in ("pcm", "opus") else source_rate


def decode_av(data: bytes) -> tuple[np.ndarray, int, int]:
    with av.open(io.BytesIO(data)) as container:
        frames = list(container.decode(audio=0))
    if not frames:
        return np.zeros(0, np.int16), 0, 0
    samples = np.concatenate([f.to_ndarray().reshape(-1) for f in frames])
    if samples.dtype.kind == "f":
        samples = np.round(samples * 32768).clip(-32768, 32767)
    return samples.astype(np.int16), frames[0].sample_rate, frames[0].layout.nb_channels


def decode_sf(data: bytes) -> tuple[np.ndarray, int, int]:
    samples, rate = sf.read(io.BytesIO(data), dtype="int16", always_2d=True)
    return samples[:, 0], rate, samples.shape[1]


def decode(name: str, data: bytes, mode: str = "whole") -> tuple[np.ndarray, int, int]:
    """(int16 samples, sample rate, channels) read back from the encoded bytes."""
    if name in ("pcm", "pcm_native"):
        return np.frombuffer(data, "<i2"), expected_rate(name), 1
    # libsndfile cannot read a FLAC stream whose length is unknown (it is, when streamed).
    if name == "aac" or (name == "flac" and mode == "stream"):
        return decode_av(data)
    return decode_sf(data)


def similarity(decoded: np.ndarray, original: np.ndarray, max_lag: int) -> float:
    """Peak normalized cross-correlation over decoder delays 0..max_lag samples."""
    a, b = decoded.astype(np.float64), original.astype(np.float64)
    n = len(a) + len(b)
    corr = np.fft.irfft(np.fft.rfft(a, n) * np.conj(np.fft.rfft(b, n)), n)[: max_lag + 1]
    return float(corr.max() / (np.linalg.norm(a) * np.linalg.norm(b)))


SPEECH = speech_like()


@pytest.mark.parametrize("mode", ["stream", "whole"])
@pytest.mark.parametrize("name", list(FORMATS))
def test_every_format_decodes_to_the_input_at_the_right_rate_and_length(name, mode):
    pcm = SPEECH.tobytes()
    data = b"".join(stream(name, pcm)) if mode == "stream" else encode_whole(name, pcm, RATE)
    samples, rate, channels = decode(name, data, mode)
    assert (rate, channels) == (expected_rate(name), 1)
    extra_ms = (len(samples) / rate - len(SPEECH) / RATE) * 1000
    low, high = (
        (0.0, PADDING_MS[name, mode]) if (name, mode) in PADDING_MS else (-EXACT_MS, EXACT_MS)
    )
    assert low <= extra_ms <= high
    if name in ("wav", "flac", "pcm_native"):
        assert np.array_equal(samples, SPEECH)
    else:
        reference = SPEECH if rate == RATE else soxr.resample(SPEECH, RATE, rate)
        assert similarity(samples, reference, max_lag=rate // 5) > 0.9


@pytest.mark.parametrize("name", ["mp3", "opus", "aac", "flac", "pcm"])
def test_other_source_rates_use_the_codec_rate(name):
    source = speech_like(1.0, 16_000)
    encoder = open_encoder(name, 16_000)
    data = encoder.feed(source.tobytes()) + encoder.finish()
    samples, rate, _ = decode(name, data, "stream")
    want = 24_000 if name == "pcm" else 16_000  # 16 kHz is an Opus rate: no resampling
    assert encoder.output_rate == rate == want
    assert abs(len(samples) / rate - 1.0) < 0.1


@pytest.mark.parametrize("name", ["mp3", "opus", "aac", "flac", "wav"])
def test_what_each_feed_returns_already_plays_nearly_everything_fed(name):
    """The stream is flushed per chunk: a client has all but a codec frame or so of the audio."""
    encoder, sent, fed = open_encoder(name, RATE), b"", 0
    for chunk in uneven_chunks(SPEECH.tobytes())[:-1]:
        sent += encoder.feed(chunk)
        fed += len(chunk)
        samples, rate, _ = decode(name, sent, "stream")
        held_back_ms = (fed / 2 / RATE - len(samples) / rate) * 1000
        assert held_back_ms < 120


def test_streamed_wav_has_one_header_with_unknown_sizes():
    pieces = stream("wav", SPEECH.tobytes())
    data = b"".join(pieces)
    assert data.count(b"RIFF") == 1 and data.count(b"WAVEfmt ") == 1
    assert pieces[0].startswith(b"RIFF\xff\xff\xff\xffWAVE")
    assert data[40:44] == b"\xff\xff\xff\xff"
    assert all(not p.startswith(b"RIFF") for p in pieces[1:])
    assert data[44:] == SPEECH.tobytes()


def test_whole_wav_has_exact_sizes():
    data = encode_whole("wav", SPEECH.tobytes(), RATE)
    assert struct.unpack("<I", data[4:8])[0] == len(data) - 8
    assert struct.unpack("<I", data[40:44])[0] == len(SPEECH) * 2


def test_streamed_mp3_is_bare_frames_and_a_prefix_plays_as_a_prefix():
    pieces = stream("mp3", SPEECH.tobytes())
    data = b"".join(pieces)
    assert not any(tag in data for tag in (b"ID3\x03", b"ID3\x04", b"Xing", b"Info"))
    assert data[0] == 0xFF and data[1] & 0xE0 == 0xE0  # starts on an MPEG frame sync
    assert all(after_real_chunks(pieces))  # bytes after every chunk, not all at the end
    full, _, _ = decode_sf(data)
    prefix, _, _ = decode_sf(data[: len(data) // 2])
    assert 0.4 * len(full) < len(prefix) < 0.6 * len(full)
    settled = len(prefix) - 2 * 576  # the frames at the cut may miss their bit reservoir
    assert np.array_equal(prefix[:settled], full[:settled])


def test_whole_mp3_carries_a_lame_tag_for_gapless_length():
    data = encode_whole("mp3", SPEECH.tobytes(), RATE)
    tag = data.find(b"Info")  # the CBR form of the Xing tag, inside the first frame
    assert 0 < tag < 64 and data.find(b"Lavf", tag) < 200  # with FFmpeg's delay/padding fields


def ogg_crc(data: bytes) -> int:
    """Bitwise CRC-32 as the Ogg spec defines it (polynomial 0x04C11DB7, unreflected, no xor)."""
    crc = 0
    for byte in data:
        crc ^= byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) if crc & 0x80000000 else crc << 1
            crc &= 0xFFFFFFFF
    return crc


def ogg_pages(data: bytes) -> list[dict[str, int | bytes]]:
    pages, pos = [], 0
    while pos < len(data):
        assert data[pos : pos + 4] == b"OggS", f"no page at byte {pos}"
        flags, granule, serial, sequence, crc, count = struct.unpack_from("<xBqIIIB", data, pos + 4)
        lacing = data[pos + 27 : pos + 27 + count]
        end = pos + 27 + count + sum(lacing)
        page = data[pos:end]
        assert ogg_crc(page[:22] + b"\0\0\0\0" + page[26:]) == crc
        body = page[27 + count :]
        pages.append(
            {
                "flags": flags,
                "granule": granule,
                "serial": serial,
                "sequence": sequence,
                "segments": count,
                "body": body,
            }
        )
        pos = end
    return pages


def test_opus_is_a_valid_ogg_stream_with_a_page_per_chunk():
    pieces = stream("opus", SPEECH.tobytes())
    per_piece = [ogg_pages(p) for p in pieces]  # every feed's output is whole pages
    pages = [page for piece in per_piece for page in piece]
    assert pages[0]["flags"] == 0x02 and pages[0]["body"].startswith(b"OpusHead")
    assert pages[1]["body"].startswith(b"OpusTags")
    assert pages[-1]["flags"] == 0x04
    assert all(p["flags"] == 0 for p in pages[1:-1])
    assert [p["sequence"] for p in pages] == list(range(len(pages)))
    assert len({p["serial"] for p in pages}) == 1
    granules = [p["granule"] for p in pages]
    assert granules == sorted(granules)
    pre_skip = struct.unpack_from("<H", pages[0]["body"], 10)[0]
    # The last granule trims the final frame's padding: exactly the input's length at 48 kHz.
    assert abs(granules[-1] - pre_skip - len(SPEECH) * 48_000 / RATE) <= 2 * 48_000 / RATE
    assert all(after_real_chunks(per_piece))  # a page after every chunk


def test_whole_flac_records_its_length_and_the_stream_leaves_it_unknown():
    whole = encode_whole("flac", SPEECH.tobytes(), RATE)
    streamed = b"".join(stream("flac", SPEECH.tobytes()))
    for data in (whole, streamed):
        assert data.startswith(b"fLaC") and data.count(b"fLaC") == 1

    def total_samples(data: bytes) -> int:
        return int.from_bytes(data[8 + 10 : 8 + 18], "big") & (2**36 - 1)

    assert total_samples(whole) == len(SPEECH)
    assert total_samples(streamed) == 0


def test_pcm_is_24khz_through_a_real_resampler():
    tone = sine(1000, 2.0)
    pieces = stream("pcm", tone.tobytes())
    out = np.frombuffer(b"".join(pieces), "<i2")
    assert abs(len(out) - len(tone) * 24_000 / RATE) <= 2
    spectrum = np.abs(np.fft.rfft(out * np.hanning(len(out))))
    peak_hz = np.argmax(spectrum) * 24_000 / len(out)
    assert abs(peak_hz - 1000) < 2
    # Chunked equals one-shot resampling: no clicks or gaps at the chunk boundaries.
    one_shot = np.frombuffer(encode_whole("pcm", tone.tobytes(), RATE), "<i2")
    reference = soxr.resample(tone, RATE, 24_000)
    assert len(one_shot) == len(out)
    assert np.abs(out.astype(int) - one_shot).max() <= 2
    assert np.abs(out[: len(reference)].astype(int) - reference[: len(out)]).max() <= 2


def test_pcm_native_passes_bytes_through_even_split_inside_samples():
    pieces = stream("pcm_native", SPEECH.tobytes())
    assert b"".join(pieces) == SPEECH.tobytes()
    assert open_encoder("pcm_native", 16_000).output_rate == 16_000


@pytest.mark.parametrize("name", list(FORMATS))
def test_no_audio_still_gives_a_playable_file(name):
    encoder = open_encoder(name, RATE)
    for data in (encoder.finish(), encode_whole(name, b"", RATE)):
        samples, _, _ = decode(name, data, "stream")  # libsndfile cannot open an empty FLAC
        assert len(samples) <= 0.15 * expected_rate(name)
        assert not np.abs(samples.astype(int)).max(initial=0) > 100


def test_feed_after_finish_is_an_error():
    encoder = open_encoder("mp3", RATE)
    encoder.finish()
    with pytest.raises(RuntimeError):
        encoder.feed(b"\0\0")
    with pytest.raises(RuntimeError):
        encoder.finish()


def test_unknown_format_is_a_value_error_listing_the_valid_names():
    for call in (lambda: open_encoder("ogg", RATE), lambda: encode_whole("ogg", b"", RATE)):
        with pytest.raises(ValueError, match="'ogg'") as error:
            call()
        assert all(name in str(error.value) for name in OPENAI_FORMATS)


def test_registry_has_openai_content_types_and_extensions():
    assert {n: (get_format(n).content_type, get_format(n).extension) for n in OPENAI_FORMATS} == {
        "mp3": ("audio/mpeg", "mp3"),
        "opus": ("audio/ogg", "opus"),
        "aac": ("audio/aac", "aac"),
        "flac": ("audio/flac", "flac"),
        "wav": ("audio/wav", "wav"),
        "pcm": ("audio/pcm", "pcm"),
    }


async def pcm_chunks(pcm: bytes) -> AsyncIterator[bytes]:
    for chunk in uneven_chunks(pcm):
        await asyncio.sleep(0)
        yield chunk


async def test_concurrent_streams_on_a_thread_pool_match_sequential_encoding():
    pcm = SPEECH.tobytes()
    names = ["mp3", "aac", "flac", "mp3", "aac", "flac"]

    async def encode(name: str, executor: ThreadPoolExecutor) -> list[bytes]:
        return [p async for p in encode_stream(pcm_chunks(pcm), open_encoder(name, RATE), executor)]

    with ThreadPoolExecutor(max_workers=3) as executor:
        results = await asyncio.gather(*(encode(n, executor) for n in names))
    for name, pieces in zip(names, results, strict=True):
        assert all(pieces)  # only non-empty pieces are yielded
        assert b"".join(pieces) == b"".join(stream(name, pcm))


def test_bench_cli_prints_a_row_per_format(capsys):
    assert main(["--bench", "--seconds", "1", "--runs", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split() for line in lines[2:]}
    assert set(rows) == set(FORMATS)
    assert all(float(rows[name][-5]) > 0 for name in ("mp3", "opus", "aac"))  # ms of CPU


@pytest.mark.parametrize("name", ["mp3", "opus", "aac", "flac"])
def test_an_abandoned_encoder_is_released_quietly(name):
    """A client that disconnects mid-stream leaves an unfinished encoder to the collector."""
    encoder = open_encoder(name, RATE)
    assert encoder.feed(SPEECH[: RATE // 2].tobytes())
    del encoder
    gc.collect()
