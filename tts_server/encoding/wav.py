"""PCM and WAV framing for 16-bit mono audio."""

from __future__ import annotations

import struct

SAMPLE_WIDTH_BYTES = 2
CHANNELS = 1
# RIFF and data sizes for a stream whose length is not known yet (what ffmpeg and sox write).
UNKNOWN_SIZE = 0xFFFFFFFF
WAV_HEADER_BYTES = 44


def wav_header(sample_rate: int, data_bytes: int | None) -> bytes:
    """A 44-byte PCM WAV header; data_bytes None marks a stream of unknown length."""
    byte_rate = sample_rate * CHANNELS * SAMPLE_WIDTH_BYTES
    block_align = CHANNELS * SAMPLE_WIDTH_BYTES
    data_size = UNKNOWN_SIZE if data_bytes is None else data_bytes
    riff_size = UNKNOWN_SIZE if data_bytes is None else 36 + data_bytes
    return (
        b"RIFF"
        + struct.pack("<I", riff_size)
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, CHANNELS, sample_rate, byte_rate, block_align, 16)
        + b"data"
        + struct.pack("<I", data_size)
    )


def duration_s(pcm_bytes: int, sample_rate: int) -> float:
    return pcm_bytes / (SAMPLE_WIDTH_BYTES * CHANNELS * sample_rate)
