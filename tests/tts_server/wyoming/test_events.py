"""Our Wyoming framing against the wyoming package's own reader and writer."""

import asyncio

import pytest
from wyoming.audio import AudioChunk
from wyoming.event import Event as LibEvent
from wyoming.event import async_read_event, async_write_event
from wyoming.tts import Synthesize, SynthesizeVoice

from tts_server.wyoming.events import Event, Limits, ProtocolError, encode_event, read_event

LIMITS = Limits(max_event_bytes=4096, max_payload_bytes=1024)


def reader_of(data: bytes) -> asyncio.StreamReader:
    reader = asyncio.StreamReader(limit=LIMITS.max_event_bytes)
    reader.feed_data(data)
    reader.feed_eof()
    return reader


class Sink:
    """Enough of a StreamWriter for async_write_event."""

    def __init__(self) -> None:
        self.data = b""

    def write(self, data: bytes) -> None:
        self.data += data

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    async def drain(self) -> None:
        pass


async def test_events_written_by_the_wyoming_package_are_read():
    sink = Sink()
    voice = SynthesizeVoice(name="joe", speaker="0")
    await async_write_event(Synthesize(text="Héllo 你好", voice=voice).event(), sink)
    chunk = AudioChunk(rate=22050, width=2, channels=1, audio=b"\x01\x02" * 100)
    await async_write_event(chunk.event(), sink)
    reader = reader_of(sink.data)
    first = await read_event(reader, LIMITS)
    assert first.type == "synthesize"
    assert first.data["text"] == "Héllo 你好" and first.data["voice"]["name"] == "joe"
    second = await read_event(reader, LIMITS)
    assert second.type == "audio-chunk" and second.payload == b"\x01\x02" * 100
    assert await read_event(reader, LIMITS) is None  # a clean end between events


async def test_events_we_write_are_read_by_the_wyoming_package():
    data = encode_event(Event("audio-chunk", {"rate": 16000, "width": 2, "channels": 1},
                              b"\x00\x01" * 10))
    data += encode_event(Event("synthesize-stopped"))
    reader = reader_of(data)
    chunk = AudioChunk.from_event(await async_read_event(reader))
    assert (chunk.rate, chunk.width, chunk.channels, chunk.audio) == (16000, 2, 1, b"\x00\x01" * 10)
    stopped = await async_read_event(reader)
    assert isinstance(stopped, LibEvent) and stopped.type == "synthesize-stopped"


async def test_data_inline_and_in_a_data_block_merge():
    block = b'{"voice": {"x": 1}}'
    data = b'{"type": "synthesize", "data": {"text": "a"}, "data_length": %d}\n' % len(block)
    data += block
    event = await read_event(reader_of(data), LIMITS)
    assert event.data == {"text": "a", "voice": {"x": 1}}


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"not json\n", "invalid_json"),
        (b"[1, 2]\n", "invalid_event"),
        (b'{"data": {}}\n', "invalid_event"),
        (b'{"type": "x", "data": [1]}\n', "invalid_event"),
        (b'{"type": "x", "data_length": -1}\n', "invalid_event"),
        (b'{"type": "x", "data_length": true}\n', "invalid_event"),
        (b'{"type": "x", "data_length": 99999}\n', "event_too_large"),
        (b'{"type": "x", "payload_length": 2048}\n', "event_too_large"),
        (b'{"type": "x", "data_length": 10}\n{"a"', "truncated_event"),
        (b'{"type": "x", "data_length": 3}\n[1]', "invalid_event"),
        (b'{"type": "x"', "truncated_event"),
        (b'{"type": "' + b"x" * 5000 + b'"}\n', "event_too_large"),
        (b'\xff\xfe{"type": "x"}\n', "invalid_json"),
    ],
)
async def test_bad_bytes_are_protocol_errors_with_a_code(data, code):
    with pytest.raises(ProtocolError) as caught:
        await read_event(reader_of(data), LIMITS)
    assert caught.value.code == code
