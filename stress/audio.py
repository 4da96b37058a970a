"""Seconds of audio in a response: the X-Audio-Duration header, else the WAV or PCM bytes."""

from __future__ import annotations

import struct
from collections.abc import Mapping

PCM_SAMPLE_BYTES = 2  # the server sends 16-bit mono PCM
_RIFF_HEADER_BYTES = 12
_CHUNK_HEADER_BYTES = 8
_UNKNOWN_SIZE = 0xFFFFFFFF  # data size of a streamed WAV whose length was not known yet


def audio_seconds(headers: Mapping[str, str], body: bytes) -> float | None:
    """Duration of the audio in a successful response; None when it cannot be told."""
    declared = _float_or_none(headers.get("X-Audio-Duration"))
    if declared is not None:
        return declared
    if body[:4] == b"RIFF":
        return wav_seconds(body)
    rate = _float_or_none(headers.get("X-Sample-Rate"))
    if rate and body:
        return len(body) / (PCM_SAMPLE_BYTES * rate)
    return None


def wav_seconds(data: bytes) -> float | None:
    """Duration of a PCM WAV file, including streamed ones whose sizes read 0xFFFFFFFF."""
    if len(data) < _RIFF_HEADER_BYTES or data[8:12] != b"WAVE":
        return None
    byte_rate: int | None = None
    offset = _RIFF_HEADER_BYTES
    while offset + _CHUNK_HEADER_BYTES <= len(data):
        chunk_id = data[offset : offset + 4]
        (size,) = struct.unpack_from("<I", data, offset + 4)
        payload = offset + _CHUNK_HEADER_BYTES
        if chunk_id == b"fmt " and size >= 16:
            (byte_rate,) = struct.unpack_from("<I", data, payload + 8)
        elif chunk_id == b"data":
            available = len(data) - payload
            data_bytes = available if size == _UNKNOWN_SIZE else min(size, available)
            return data_bytes / byte_rate if byte_rate else None
        offset = payload + size + (size & 1)  # chunks are padded to even sizes
    return None


def _float_or_none(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None
