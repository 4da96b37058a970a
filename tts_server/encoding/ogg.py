"""Opus in Ogg pages written here (RFC 7845), so a stream flushes one page per feed."""

from __future__ import annotations

import random
import struct
import zlib
from fractions import Fraction
from typing import TYPE_CHECKING

import av
import numpy as np

from tts_server.encoding.encoders import AV_CODECS, StreamEncoder, av_frame, supported_rate

if TYPE_CHECKING:
    from tts_server.encoding.formats import AudioFormat


class OggOpusEncoder(StreamEncoder):
    """Opus (libopus via PyAV) in Ogg pages written here: one page per feed, nothing held back.

    FFmpeg's Ogg muxer keeps up to a page (1 s by default) buffered and has no flush call.
    """

    def __init__(self, fmt: AudioFormat, source_rate: int) -> None:
        self._spec = AV_CODECS["opus"]
        super().__init__(fmt, source_rate, supported_rate(source_rate, self._spec.rates))
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
        frame = av_frame(samples, self._spec, self.output_rate, self._pts)
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
