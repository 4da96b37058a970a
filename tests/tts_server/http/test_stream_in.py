"""GET /v1/audio/speech/stream on a real server, driven by aiohttp's WebSocket client."""

import asyncio
import hashlib
import io
import json
import time
import urllib.request
from dataclasses import dataclass, field

import aiohttp
import av
import pytest

from tests.support import ServerProcess, merged, plausible_duration, write_config

TIMEOUT_S = 60
PATH = "/v1/audio/speech/stream"
TOKEN = "tts_stream_in_test_token"
SEND_TIMEOUT_S = 1.5


@dataclass
class Session:
    """What one session received: its JSON messages, its audio, how it ended."""

    messages: list[dict] = field(default_factory=list)
    audio: bytes = b""
    close_code: int | None = None
    close_reason: dict | None = None

    def of_type(self, kind: str) -> list[dict]:
        return [m for m in self.messages if m["type"] == kind]


async def receive_all(ws: aiohttp.ClientWebSocketResponse, session: Session) -> Session:
    while True:
        msg = await asyncio.wait_for(ws.receive(), TIMEOUT_S)
        if msg.type is aiohttp.WSMsgType.BINARY:
            session.audio += msg.data
        elif msg.type is aiohttp.WSMsgType.TEXT:
            session.messages.append(json.loads(msg.data))
        else:
            closed = msg.type is aiohttp.WSMsgType.CLOSE
            session.close_code = msg.data if closed else ws.close_code
            session.close_reason = json.loads(msg.extra) if closed and msg.extra else None
            return session


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stream_in")
    config = write_config(folder / "config.toml", merged({
        "stream_in": {"send_timeout_s": SEND_TIMEOUT_S, "close_timeout_s": 8.0,
                      "max_fragment_chars": 2000, "max_message_bytes": 16384},
        "cache": {"redis": "off"},
    }))
    process = ServerProcess(config, folder / "server.log").wait_ready()
    yield process
    process.stop()


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


async def stream(http, server, config: dict, messages: list, headers=None) -> Session:
    async with http.ws_connect(server.url + PATH, headers=headers) as ws:
        await ws.send_json(config)
        for message in messages:
            if isinstance(message, bytes):
                await ws.send_bytes(message)
            elif isinstance(message, str):
                await ws.send_str(message)
            else:
                await ws.send_json(message)
        return await receive_all(ws, Session())


def api_pcm(server, text: str, voice: str = "joe") -> bytes:
    body = json.dumps({"text": text, "voice": voice, "format": "pcm"}).encode()
    request = urllib.request.Request(server.url + "/api/tts", body,
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
        return response.read()


def texts(*fragments: str) -> list[dict]:
    return [{"type": "text", "text": f} for f in fragments] + [{"type": "close"}]


async def test_fragments_cut_mid_word_speak_the_whole_texts_sentences(http, server):
    sentences = ["The quick brown fox jumps over the lazy dog.", "It was not amused.",
                 "Dr. Smith said so at 3.5 p.m. exactly."]
    whole = " ".join(sentences)
    fragments = [whole[i:i + 7] for i in range(0, len(whole), 7)]  # mid-word, mid-sentence
    session = await stream(http, server, {"type": "config", "voice": "joe"}, texts(*fragments))
    start, = session.of_type("start")
    assert start == {"type": "start", "format": "pcm", "content_type": "audio/pcm",
                     "sample_rate": 22050, "voice": "joe"}
    spoken = session.of_type("sentence")
    assert [m["text"] for m in spoken] == ["The quick brown fox jumps over the lazy dog.",
                                           "It was not amused.",
                                           "Dr. Smith said so at 3.5 p.m.", "exactly."]
    assert [m["index"] for m in spoken] == [0, 1, 2, 3]
    assert session.audio == api_pcm(server, whole)  # the same units, the same samples
    assert session.of_type("done")[0]["sentences"] == 4
    assert session.close_code == 1000
    for earlier, later in zip(spoken, spoken[1:], strict=False):
        assert later["start_s"] == pytest.approx(earlier["start_s"] + earlier["duration_s"],
                                                 abs=0.002)
    total_s = spoken[-1]["start_s"] + spoken[-1]["duration_s"]
    assert total_s == pytest.approx(len(session.audio) / 2 / 22050, abs=0.005)


async def test_chinese_fragments_are_cut_at_each_full_stop(http, server):
    whole = "今天天气很好。我们去公园散步。然后一起吃晚饭"
    fragments = ["今天天", "气很好。我们", "去公园散步。然", "后一起吃晚饭"]
    session = await stream(http, server, {"type": "config"}, texts(*fragments))
    spoken = session.of_type("sentence")
    assert [m["text"] for m in spoken] == ["今天天气很好。", "我们去公园散步。", "然后一起吃晚饭"]
    assert {m["voice"] for m in spoken} == {"espeak-zh-female"}  # the text picks the voice
    assert plausible_duration("x" * len(whole) * 3, len(session.audio) / 2 / 22050)
    assert session.close_code == 1000


async def test_first_audio_comes_before_the_last_fragment_is_sent(http, server):
    async with http.ws_connect(server.url + PATH) as ws:
        await ws.send_json({"type": "config", "voice": "joe"})
        assert (await ws.receive_json(timeout=TIMEOUT_S))["type"] == "start"
        await ws.send_json({"type": "text", "text": "This first sentence is finished. Th"})
        sent = time.monotonic()
        first = await ws.receive(timeout=TIMEOUT_S)
        assert first.type is aiohttp.WSMsgType.BINARY and first.data
        first_audio_s = time.monotonic() - sent
        await ws.send_json({"type": "text", "text": "e second one comes later."})
        await ws.send_json({"type": "close"})
        session = await receive_all(ws, Session(audio=first.data))
    assert [m["text"] for m in session.of_type("sentence")] == [
        "This first sentence is finished.", "The second one comes later."]
    assert first_audio_s < 5


async def test_opus_and_mp3_streams_decode(http, server):
    for fmt, rate in (("opus", 48000), ("mp3", 22050)):
        session = await stream(http, server, {"type": "config", "format": fmt},
                               texts("One sentence here. And a second one."))
        with av.open(io.BytesIO(session.audio)) as container:
            decoded = sum(f.samples for f in container.decode(audio=0))
            assert container.streams.audio[0].codec_context.sample_rate == rate
        spoken = session.of_type("sentence")
        total_s = spoken[-1]["start_s"] + spoken[-1]["duration_s"]
        assert decoded / rate == pytest.approx(total_s, abs=0.12)


async def test_flush_speaks_an_unfinished_sentence_now(http, server):
    async with http.ws_connect(server.url + PATH) as ws:
        await ws.send_json({"type": "config"})
        await ws.send_json({"type": "text", "text": "No full stop yet"})
        await ws.send_json({"type": "flush"})
        session = Session()
        while not session.of_type("sentence"):
            msg = await ws.receive(timeout=TIMEOUT_S)
            if msg.type is aiohttp.WSMsgType.TEXT:
                session.messages.append(json.loads(msg.data))
        assert session.of_type("sentence")[0]["text"] == "No full stop yet"
        await ws.send_json({"type": "close"})
        await receive_all(ws, session)
    assert session.close_code == 1000


def metric(server, name: str, **labels: str) -> float:
    with urllib.request.urlopen(server.url + "/metrics") as response:
        lines = response.read().decode().splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(name + "{")
               and all(f'{k}="{v}"' in line for k, v in labels.items()))


def numbered(count: int, first: int = 0) -> str:
    return " ".join(f"Sentence {n} is one that takes the engine a little while to say."
                    for n in range(first, first + count)) + " "


async def test_cancel_drops_queued_sentences_and_the_session_goes_on(http, server):
    before = metric(server, "tts_synthesis_seconds_count", engine="piper")
    async with http.ws_connect(server.url + PATH) as ws:
        await ws.send_json({"type": "config", "voice": "joe"})
        await ws.send_json({"type": "text", "text": numbered(12, first=100)})
        await ws.send_json({"type": "cancel"})
        await ws.send_json({"type": "text", "text": "After the cancel."})
        await ws.send_json({"type": "close"})
        session = await receive_all(ws, Session())
    cancelled, = session.of_type("cancelled")
    assert cancelled["dropped"] >= 10
    assert [m["text"] for m in session.of_type("sentence")][-1] == "After the cancel."
    assert session.close_code == 1000
    await asyncio.sleep(1)
    # Of twelve sentences at most the two running when the cancel came were synthesized.
    assert metric(server, "tts_synthesis_seconds_count", engine="piper") - before <= 3


async def test_a_client_that_disconnects_leaves_no_queued_work(http, server):
    before = metric(server, "tts_synthesis_seconds_count", engine="piper")
    async with http.ws_connect(server.url + PATH) as ws:
        await ws.send_json({"type": "config", "voice": "joe"})
        await ws.send_json({"type": "text", "text": numbered(12, first=200)})
        await asyncio.sleep(0.05)
    await asyncio.sleep(2)
    assert metric(server, "tts_synthesis_seconds_count", engine="piper") - before <= 2


async def test_a_client_that_reads_no_audio_is_closed_with_4408(http, server):
    """Cached audio of one sentence, 240 times (about 11 MB of PCM), to a client that does
    not read: the server stops after its send timeout instead of buffering it all."""
    sentence = "The quick brown fox jumps over the lazy dog. "
    async with http.ws_connect(server.url + PATH) as ws:
        await ws.send_json({"type": "config", "voice": "joe"})
        for _ in range(6):
            await ws.send_json({"type": "text", "text": sentence * 40})
        await ws.send_json({"type": "close"})
        await asyncio.sleep(SEND_TIMEOUT_S + 3)  # reads nothing meanwhile
        session = await receive_all(ws, Session())
    assert session.close_code == 4408
    assert session.close_reason["code"] == "slow_reader"
    whole_bytes = 240 * len(api_pcm(server, sentence.strip()))
    assert len(session.audio) < whole_bytes / 2
    assert not session.of_type("done")
    again = await stream(http, server, {"type": "config"}, texts("Still serving."))
    assert again.close_code == 1000 and again.audio


@pytest.mark.parametrize(
    ("messages", "close_code", "code"),
    [
        ([b"\x00\x01binary"], 1003, "binary_message"),
        (["{not json"], 1007, "invalid_json"),
        (["[1, 2]"], 4400, "invalid_message"),
        ([{"type": "shout"}], 4400, "unknown_type"),
        ([{"type": "config"}], 4400, "unknown_type"),
        ([{"type": "text", "text": 5}], 4400, "invalid_text"),
        ([{"type": "text", "text": "x" * 2001}], 1009, "fragment_too_long"),
        ([{"type": "text", "text": "x" * 17000}], 1009, "message_too_big"),
        ([{"type": "text", "text": "word " * 400}] * 11, 4413, "text_too_long"),
    ],
)
async def test_bad_messages_close_with_a_clear_code_and_the_server_goes_on(
        http, server, messages, close_code, code):
    session = await stream(http, server, {"type": "config"}, messages)
    assert session.close_code == close_code
    assert session.close_reason["code"] == code
    if code != "message_too_big":  # aiohttp closes that one before our handler sees it
        assert session.of_type("error")[0]["code"] == code
    again = await stream(http, server, {"type": "config"}, texts("Still serving."))
    assert again.close_code == 1000 and again.audio


@pytest.mark.parametrize(
    ("config", "close_code", "code"),
    [
        ({"type": "text", "text": "no config"}, 4400, "config_expected"),
        ({"type": "config", "voice": "nobody"}, 4400, "unknown_voice"),
        ({"type": "config", "format": "wav"}, 4400, "invalid_format"),
        ({"type": "config", "speed": 9}, 4422, "invalid_speed"),
        ({"type": "config", "voice": "joe", "speaker": 3}, 4422, "invalid_speaker"),
    ],
)
async def test_a_bad_config_is_refused_before_any_audio(http, server, config, close_code, code):
    session = await stream(http, server, config, [])
    assert (session.close_code, session.close_reason["code"]) == (close_code, code)
    assert not session.audio and not session.of_type("start")


async def test_a_sentence_the_voice_cannot_speak_ends_the_session_in_order(http, server):
    session = await stream(http, server, {"type": "config", "voice": "joe"},
                           texts("This is fine. ", "这句不行。", "Never spoken."))
    assert [m["text"] for m in session.of_type("sentence")] == ["This is fine."]
    assert (session.close_code, session.close_reason["code"]) == (4422, "language_mismatch")


async def test_a_plain_get_is_told_to_upgrade(http, server):
    async with http.get(server.url + PATH) as response:
        assert response.status == 400
        assert (await response.json())["error"]["code"] == "websocket_required"


async def test_sessions_are_in_the_access_log_and_the_metrics(http, server):
    await stream(http, server, {"type": "config"}, [{"type": "shout"}])
    await stream(http, server, {"type": "config"}, texts("Logged, one. Logged, two."))
    for _ in range(50):  # the line is written once the server's side of the close is done
        lines = [json.loads(line) for line in server.log().splitlines()
                 if f'"route": "{PATH}"' in line]
        done = [line for line in lines if line.get("chars") == len("Logged, one. Logged, two.")]
        if done:
            break
        await asyncio.sleep(0.1)
    assert done and done[-1]["status"] == 101 and done[-1]["audio_s"] > 0.5
    assert any(line.get("error") == "unknown_type" for line in lines)
    assert metric(server, "tts_time_to_first_audio_seconds_count", route=PATH) >= 1


@pytest.fixture(scope="module")
def token_server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stream_in_token")
    token = {"name": "streamer", "tier": "standard",
             "sha256": hashlib.sha256(TOKEN.encode()).hexdigest()}
    config = write_config(folder / "config.toml", merged({"auth": {"tokens": [token]},
                                                          "cache": {"redis": "off"}}))
    process = ServerProcess(config, folder / "server.log").wait_ready()
    yield process
    process.stop()


async def test_the_bearer_token_is_checked_at_the_upgrade(http, token_server):
    for headers, status in ((None, 401), ({"Authorization": "Bearer wrong"}, 401)):
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(token_server.url + PATH, headers=headers)
        assert refused.value.status == status
    session = await stream(http, token_server, {"type": "config"}, texts("With a token."),
                           headers={"Authorization": f"Bearer {TOKEN}"})
    assert session.close_code == 1000 and session.audio


async def test_shutdown_speaks_what_was_sent_then_closes_with_1001(http, running_server):
    server = running_server({"cache": {"redis": "off"}})
    async with http.ws_connect(server.url + PATH) as ws:
        await ws.send_json({"type": "config", "voice": "joe"})
        await ws.send_json({"type": "text", "text": "One is said. Two is said. Three is"})
        assert (await ws.receive_json(timeout=TIMEOUT_S))["type"] == "start"
        stopping = asyncio.get_running_loop().run_in_executor(None, server.stop)
        session = await receive_all(ws, Session())
    assert await stopping == 0
    assert [m["text"] for m in session.of_type("sentence")] == [
        "One is said.", "Two is said.", "Three is"]
    assert session.of_type("done") and session.close_code == 1001
    assert session.close_reason["code"] == "draining"
