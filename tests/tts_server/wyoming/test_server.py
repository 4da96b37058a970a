"""The Wyoming listener of a real server, driven by the wyoming package's AsyncTcpClient
(the client Home Assistant uses): describe, synthesize, streams, errors, a killed worker."""

import asyncio
import hashlib
import json
import os
import signal
import socket
import time
import urllib.request
from dataclasses import dataclass, field

import pytest
from wyoming.audio import AudioChunk, AudioStart
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import Describe, Info
from wyoming.tts import (
    Synthesize,
    SynthesizeChunk,
    SynthesizeStart,
    SynthesizeStop,
    SynthesizeVoice,
)

from tests.support import free_port, plausible_duration
from tts_server.wyoming.events import encode_event

TIMEOUT_S = 60
TOKEN = "tts_wyoming_test_token"


@dataclass
class Reply:
    """Every event a request got back, and when its first audio came."""

    events: list[Event] = field(default_factory=list)
    first_audio_s: float | None = None

    @property
    def types(self) -> list[str]:
        return [e.type for e in self.events if e.type != "audio-chunk"]

    @property
    def pcm(self) -> bytes:
        return b"".join(AudioChunk.from_event(e).audio for e in self.events
                        if e.type == "audio-chunk")

    def error(self) -> Error:
        return Error.from_event(next(e for e in self.events if e.type == "error"))


async def read_until(client: AsyncTcpClient, last: str, started: float | None = None) -> Reply:
    """Events until `last`, an error, or the end of the connection."""
    started = time.monotonic() if started is None else started
    reply = Reply()
    while (event := await asyncio.wait_for(client.read_event(), TIMEOUT_S)) is not None:
        reply.events.append(event)
        if event.type == "audio-chunk" and reply.first_audio_s is None:
            reply.first_audio_s = time.monotonic() - started
        if event.type in (last, "error"):
            break
    return reply


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from tests.support import ServerProcess, merged, write_config

    folder = tmp_path_factory.mktemp("wyoming")
    port = free_port()
    config = write_config(folder / "config.toml", merged({
        "wyoming": {"enabled": True, "port": port, "max_stream_chars": 900,
                    "max_connections": 6, "idle_timeout_s": 4.0, "write_timeout_s": 2.0},
        # Every comparison with /api/tts below is then two syntheses, not a cache hit.
        "cache": {"enabled": False},
    }))
    process = ServerProcess(config, folder / "server.log").wait_ready()
    process.wyoming_port = port
    yield process
    process.stop()


def connect(server) -> AsyncTcpClient:
    return AsyncTcpClient("127.0.0.1", server.wyoming_port)


async def synthesize(server, text: str, voice: SynthesizeVoice | None = None) -> Reply:
    async with connect(server) as client:
        started = time.monotonic()
        await client.write_event(Synthesize(text=text, voice=voice).event())
        return await read_until(client, "audio-stop", started)


def api_pcm(server, text: str, voice: str = "joe") -> bytes:
    body = json.dumps({"text": text, "voice": voice, "format": "pcm"}).encode()
    request = urllib.request.Request(server.url + "/api/tts", body,
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
        return response.read()


async def test_describe_lists_every_voice_with_streaming(server):
    async with connect(server) as client:
        await client.write_event(Describe().event())
        info = Info.from_event(await asyncio.wait_for(client.read_event(), TIMEOUT_S))
    (program,) = info.tts
    assert program.installed and program.supports_synthesize_streaming
    assert not info.asr and not info.wake
    with urllib.request.urlopen(server.url + "/api/voices") as response:
        listed = {v["name"]: v for v in json.load(response)["voices"]}
    assert {v.name for v in program.voices} == set(listed)
    assert program.voices[0].name == "joe"  # the default voice first
    for voice in program.voices:
        assert voice.installed and voice.attribution.name and voice.attribution.url
        assert voice.languages == [listed[voice.name]["language"]]
    assert "espeak" in next(v for v in program.voices if v.name == "espeak-zh-male").description


async def test_synthesize_is_the_apis_audio_in_audio_events(server):
    text = "The quick brown fox jumps over the lazy dog. It was not amused."
    reply = await synthesize(server, text, SynthesizeVoice(name="joe"))
    assert reply.types == ["audio-start", "audio-stop"]
    start = AudioStart.from_event(reply.events[0])
    assert (start.rate, start.width, start.channels) == (22050, 2, 1)
    chunks = [AudioChunk.from_event(e) for e in reply.events if e.type == "audio-chunk"]
    assert all(len(c.audio) <= 1024 * 2 and c.rate == 22050 for c in chunks)
    assert reply.pcm == api_pcm(server, text)  # the same speech layer, the same samples
    assert plausible_duration(text, len(reply.pcm) / 2 / 22050)


async def test_no_voice_and_a_language_pick_a_voice_for_the_text(server):
    chinese = await synthesize(server, "今天天气很好。", SynthesizeVoice(language="zh_CN"))
    assert chinese.types == ["audio-start", "audio-stop"] and len(chinese.pcm) > 22050
    assert chinese.pcm == api_pcm(server, "今天天气很好。", "espeak-zh-female")
    unknown = await synthesize(server, "Hello.", SynthesizeVoice(language="fr_FR"))
    assert unknown.error().code == "language_unsupported"


async def test_a_stream_speaks_each_sentence_as_its_text_completes(server):
    sentences = ["The first sentence is here.", "Then a second one follows it.",
                 "And the last one ends the stream."]
    text = " ".join(sentences)
    pieces = ["The fir", "st sentence is he", "re. Then a sec", "ond one follows it. And",
              " the last one ends the st", "ream."]
    async with connect(server) as client:
        await client.write_event(SynthesizeStart(voice=SynthesizeVoice(name="joe")).event())
        for piece in pieces[:3]:
            await client.write_event(SynthesizeChunk(text=piece).event())
        # The first sentence is complete: its audio comes before any more text is sent.
        first = await read_until(client, "audio-stop")
        assert first.types == ["audio-start", "audio-stop"] and first.pcm
        for piece in pieces[3:]:
            await client.write_event(SynthesizeChunk(text=piece).event())
        # Home Assistant also sends the whole text, for servers that do not stream.
        await client.write_event(Synthesize(text=text).event())
        await client.write_event(SynthesizeStop().event())
        rest = await read_until(client, "synthesize-stopped")
    assert rest.types == ["audio-start", "audio-stop"] * 2 + ["synthesize-stopped"]
    assert first.pcm + rest.pcm == b"".join(api_pcm(server, s) for s in sentences)


async def test_an_empty_stream_ends_with_synthesize_stopped(server):
    async with connect(server) as client:
        await client.write_event(SynthesizeStart().event())
        await client.write_event(SynthesizeStop().event())
        reply = await read_until(client, "synthesize-stopped")
    assert reply.types == ["synthesize-stopped"]


@pytest.mark.parametrize(
    ("events", "code"),
    [
        ([Synthesize(text="Hello.", voice=SynthesizeVoice(name="nobody")).event()],
         "unknown_voice"),
        ([Synthesize(text="你好。", voice=SynthesizeVoice(name="joe")).event()],
         "language_mismatch"),
        ([Synthesize(text="...").event()], "empty_text"),
        ([Event("synthesize", {"text": 42})], "invalid_text"),
        ([Event("synthesize", {"text": "Hi.", "voice": "joe"})], "invalid_voice"),
        ([Event("synthesize", {"text": "Hi.", "text_format": "ssml"})],
         "unsupported_text_format"),
        ([Synthesize(text="Hi.", voice=SynthesizeVoice(name="joe", speaker="7")).event()],
         "invalid_speaker"),
        ([SynthesizeChunk(text="Hello.").event()], "no_stream"),
        ([SynthesizeStop().event()], "no_stream"),
        ([SynthesizeStart().event(), SynthesizeStart().event()], "stream_open"),
        ([SynthesizeStart().event(), Event("synthesize-chunk", {"text": None})],
         "invalid_text"),
        ([SynthesizeStart().event(), SynthesizeChunk(text="word " * 200).event()],
         "text_too_long"),
    ],
)
async def test_bad_requests_get_an_error_event_then_the_connection_closes(server, events, code):
    async with connect(server) as client:
        for event in events:
            await client.write_event(event)
        reply = await read_until(client, "never")
        assert reply.types[-1] == "error" and reply.error().code == code
        assert reply.error().text
        assert await asyncio.wait_for(client.read_event(), TIMEOUT_S) is None  # closed
    assert (await synthesize(server, "Still serving.")).types == ["audio-start", "audio-stop"]


def raw_exchange(server, data: bytes) -> list[dict]:
    """Bytes no client library would send; the JSON headers of what comes back."""
    with socket.create_connection(("127.0.0.1", server.wyoming_port), timeout=TIMEOUT_S) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    lines = [json.loads(line) for line in received.split(b"\n") if line.startswith(b"{")]
    return [line for line in lines if "type" in line]


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "invalid_json"),
        (b'{"type": "synthesize", "data_length": 99999999}\n', "event_too_large"),
        (b'{"type": "x"}' + b" " * 70000 + b"\n", "event_too_large"),
        (b'{"type": "synthesize", "data_length": 50}\n{"text": "cut', "truncated_event"),
    ],
)
def test_broken_framing_gets_an_error_event_and_the_server_goes_on(server, data, code):
    headers = raw_exchange(server, data)
    assert headers and headers[-1]["type"] == "error"
    assert headers[-1].get("data_length")  # the error's text and code follow in the data
    reply = asyncio.run(synthesize(server, "Still serving."))
    assert reply.types == ["audio-start", "audio-stop"]


def test_an_error_events_data_carries_the_code(server):
    with socket.create_connection(("127.0.0.1", server.wyoming_port), timeout=TIMEOUT_S) as sock:
        sock.sendall(b"not an event\n")
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    header, rest = received.split(b"\n", 1)
    data = json.loads(rest[: json.loads(header)["data_length"]])
    assert data["code"] == "invalid_json" and "JSON" in data["text"]


def metric_value(server, name: str, **labels: str) -> float:
    with urllib.request.urlopen(server.url + "/metrics") as response:
        text = response.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_exchanges_are_in_the_metrics_and_the_access_log(server):
    before = metric_value(server, "tts_requests_total", route="wyoming", status="200")
    await synthesize(server, "Counted and logged.")
    after = metric_value(server, "tts_requests_total", route="wyoming", status="200")
    assert after == before + 1
    assert metric_value(server, "tts_time_to_first_audio_seconds_count", route="wyoming") >= 1
    lines = [json.loads(line) for line in server.log().splitlines()
             if '"route": "wyoming"' in line]
    synthesized = [line for line in lines if line["method"] == "synthesize"
                   and line["status"] == 200]
    assert synthesized and synthesized[-1]["engine"] == "piper"
    assert synthesized[-1]["audio_s"] > 0.5 and synthesized[-1]["chars"] > 10
    assert any(line["status"] == 400 and line.get("error") for line in lines)


async def test_a_worker_killed_mid_stream_loses_no_sentence(server):
    sentences = [f"Sentence number {n} of a long announcement goes on for a while."
                 for n in range(6)]
    async with connect(server) as client:
        await client.write_event(SynthesizeStart().event())
        for sentence in sentences:
            await client.write_event(SynthesizeChunk(text=sentence + " ").event())
        await client.write_event(SynthesizeStop().event())
        first = await read_until(client, "audio-chunk")
        assert first.first_audio_s is not None
        for pid in server.worker_pids("piper")[:1]:
            os.kill(pid, signal.SIGKILL)
        rest = await read_until(client, "synthesize-stopped")
    assert "error" not in rest.types
    assert rest.types.count("audio-stop") == len(sentences)
    seconds = len(first.pcm + rest.pcm) / 2 / 22050
    assert plausible_duration(" ".join(sentences), seconds)
    assert (await synthesize(server, "Serving after the crash.")).types == [
        "audio-start", "audio-stop"]


async def test_a_client_that_hangs_up_mid_stream_leaves_no_work(server):
    before = metric_value(server, "tts_synthesis_seconds_count", engine="piper")
    async with connect(server) as client:
        await client.write_event(SynthesizeStart().event())
        for n in range(8):
            text = f"Queued sentence {n} that nobody will ever hear at all. "
            await client.write_event(SynthesizeChunk(text=text).event())
        await asyncio.sleep(0.05)
    await asyncio.sleep(3)
    ran = metric_value(server, "tts_synthesis_seconds_count", engine="piper") - before
    # Four sentences were handed to the pool (the lookahead), two of them running on the two
    # workers: the queued two are dropped, and the waiting four never start.
    assert ran <= 2
    assert (await synthesize(server, "Serving after a hang-up.")).types == [
        "audio-start", "audio-stop"]


async def test_an_idle_connection_is_told_and_closed(server):
    async with connect(server) as client:
        started = time.monotonic()
        reply = await read_until(client, "never")
    assert reply.error().code == "idle_timeout"
    assert 3.5 < time.monotonic() - started < 15


async def test_connections_over_the_limit_are_refused_with_an_error(server):
    clients = [connect(server) for _ in range(6)]
    for client in clients:
        await client.connect()
        await client.write_event(Event("ping", {"text": "seat"}))
        pong = await asyncio.wait_for(client.read_event(), TIMEOUT_S)  # it holds a seat
        assert pong.type == "pong" and pong.data["text"] == "seat"
    try:
        async with connect(server) as extra:
            reply = await read_until(extra, "never")
        assert reply.error().code == "too_many_connections"
    finally:
        for client in clients:
            await client.disconnect()
    await asyncio.sleep(0.2)
    assert (await synthesize(server, "A free seat.")).types == ["audio-start", "audio-stop"]


def slow_reader_lines(server) -> list[str]:
    return [line for line in server.log().splitlines()
            if '"error": "slow_reader"' in line and '"status": 408' in line]


def test_a_client_that_reads_no_audio_is_disconnected(server):
    """A small receive window and no reads: once the kernel's buffers are full the server
    waits wyoming.write_timeout_s, then disconnects instead of holding on."""
    text = " ".join(f"Sentence {n} of a long text that nobody is reading at all." for n in
                    range(60))
    whole = len(api_pcm(server, text))
    seen = len(slow_reader_lines(server))
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", server.wyoming_port))
        sock.sendall(encode_event(Synthesize(text=text).event()))
        deadline = time.monotonic() + TIMEOUT_S
        while len(slow_reader_lines(server)) == seen and time.monotonic() < deadline:
            time.sleep(0.2)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except ConnectionResetError:
            pass  # cut after its grace: what it had not taken is dropped
    assert len(slow_reader_lines(server)) == seen + 1
    assert len(received) < whole * 0.6  # what the kernel buffers held, not the whole audio
    assert asyncio.run(synthesize(server, "Still serving.")).types == [
        "audio-start", "audio-stop"]


@pytest.fixture(scope="module")
def token_server(tmp_path_factory):
    from tests.support import ServerProcess, merged, write_config

    folder = tmp_path_factory.mktemp("wyoming_token")
    port = free_port()
    token = {"name": "assistant", "tier": "standard",
             "sha256": hashlib.sha256(TOKEN.encode()).hexdigest()}
    config = write_config(folder / "config.toml", merged({
        "auth": {"tokens": [token], "probe_access": "open"},
        "wyoming": {"enabled": True, "port": port, "access": "token"},
        "cache": {"redis": "off"},
    }))
    process = ServerProcess(config, folder / "server.log").wait_ready()
    process.wyoming_port = port
    yield process
    process.stop()


@pytest.mark.parametrize(("token", "code"), [(None, "missing_token"),
                                            ("wrong", "invalid_token")])
async def test_token_access_refuses_events_without_a_valid_token(token_server, token, code):
    async with connect(token_server) as client:
        data = {"text": "Hello."} | ({"token": token} if token else {})
        await client.write_event(Event("synthesize", data))
        reply = await read_until(client, "audio-stop")
    assert reply.error().code == code


def synthesize_lines(server) -> list[dict]:
    return [json.loads(line) for line in server.log().splitlines()
            if '"method": "synthesize"' in line]


async def test_token_access_serves_events_with_a_token(token_server):
    before = len(synthesize_lines(token_server))
    async with connect(token_server) as client:
        await client.write_event(Event("describe", {"token": TOKEN}))
        assert (await asyncio.wait_for(client.read_event(), TIMEOUT_S)).type == "info"
        await client.write_event(Event("synthesize", {"text": "Hello there.", "token": TOKEN}))
        reply = await read_until(client, "audio-stop")
    assert reply.types == ["audio-start", "audio-stop"] and reply.pcm
    for _ in range(100):  # the access line is written after the last event is sent
        if len(synthesize_lines(token_server)) > before:
            break
        await asyncio.sleep(0.05)
    assert synthesize_lines(token_server)[-1]["client"] == "assistant"


def test_shutdown_with_an_idle_connection_is_prompt(token_server):
    with socket.create_connection(("127.0.0.1", token_server.wyoming_port)):
        started = time.monotonic()
        assert token_server.stop() == 0
    assert time.monotonic() - started < 10
