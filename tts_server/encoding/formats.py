"""The audio formats: each one knows its content type, its output rate and its encoder.

A request's format is resolved to one of these objects when its body is parsed; nothing
downstream compares format names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tts_server.encoding.encoders import (
    AV_CODECS,
    AvEncoder,
    PcmEncoder,
    StreamEncoder,
    WavEncoder,
    supported_rate,
)
from tts_server.encoding.ogg import OggOpusEncoder
from tts_server.encoding.wav import wav_header

OPENAI_PCM_RATE = 24_000
# (format, source rate, seekable) -> encoder
EncoderFactory = Callable[["AudioFormat", int, bool], StreamEncoder]


@dataclass(frozen=True)
class AudioFormat:
    name: str
    content_type: str
    extension: str
    lossy: bool
    make_encoder: EncoderFactory
    # A rate the format always delivers (OpenAI's pcm: 24 kHz), else the codec decides.
    fixed_rate: int | None = None
    # Whole-file "encoding" is a header and the samples as they are: no encoder, no copy.
    inline: bool = False
    # With `inline`: the header states the data size (WAV); raw PCM has none.
    sized_header: bool = False

    def output_rate(self, source_rate: int) -> int:
        """The sample rate this format delivers for audio made at `source_rate`."""
        if self.fixed_rate is not None:
            return self.fixed_rate
        codec = AV_CODECS.get(self.name)
        return supported_rate(source_rate, codec.rates) if codec else source_rate

    def inline_header(self, source_rate: int, pcm_bytes: int) -> bytes:
        """What precedes the samples of a whole file in an inline format."""
        return wav_header(source_rate, pcm_bytes) if self.sized_header else b""

    def open(self, source_rate: int, seekable: bool = False) -> StreamEncoder:
        """A streaming encoder for one response: feed() each PCM chunk, then finish()."""
        return self.make_encoder(self, source_rate, seekable)

    def encode_whole(self, pcm: bytes, source_rate: int) -> bytes:
        """A complete file: WAV with exact sizes, MP3 with a Xing/LAME tag, FLAC with its
        length (the muxer may seek back to patch them)."""
        encoder = self.open(source_rate, seekable=True)
        return encoder.feed(pcm) + encoder.finish()


def _pcm_at(rate: int | None) -> EncoderFactory:
    return lambda fmt, source, _seekable: PcmEncoder(fmt, source, rate or source)


def _whole_wav(fmt: AudioFormat, source_rate: int, seekable: bool) -> StreamEncoder:
    return WavEncoder(fmt, source_rate, source_rate, sized=seekable)


def _opus(fmt: AudioFormat, source_rate: int, _seekable: bool) -> StreamEncoder:
    return OggOpusEncoder(fmt, source_rate)


def _av(fmt: AudioFormat, source_rate: int, seekable: bool) -> StreamEncoder:
    return AvEncoder(fmt, source_rate, seekable=seekable)


FORMATS: dict[str, AudioFormat] = {
    f.name: f
    for f in (
        AudioFormat("mp3", "audio/mpeg", "mp3", True, _av),
        AudioFormat("opus", "audio/ogg", "opus", True, _opus),
        AudioFormat("aac", "audio/aac", "aac", True, _av),
        AudioFormat("flac", "audio/flac", "flac", False, _av),
        AudioFormat("wav", "audio/wav", "wav", False, _whole_wav, inline=True,
                    sized_header=True),
        # OpenAI's pcm: 24 kHz s16le mono whatever the voice's rate.
        AudioFormat("pcm", "audio/pcm", "pcm", False, _pcm_at(OPENAI_PCM_RATE),
                    fixed_rate=OPENAI_PCM_RATE),
        # The server's own /api/tts pcm: s16le mono at the voice's rate, untouched.
        AudioFormat("pcm_native", "audio/pcm", "pcm", False, _pcm_at(None), inline=True),
    )
}
OPENAI_FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")


def get_format(name: str) -> AudioFormat:
    try:
        return FORMATS[name]
    except KeyError:
        valid = ", ".join(FORMATS)
        raise ValueError(f"unknown audio format {name!r}; valid formats: {valid}") from None


def open_encoder(format_name: str, source_rate: int) -> StreamEncoder:
    """get_format(name).open(rate): for callers that hold a stored format name (jobs)."""
    return get_format(format_name).open(source_rate)


def encode_whole(format_name: str, pcm: bytes, source_rate: int) -> bytes:
    return get_format(format_name).encode_whole(pcm, source_rate)


