"""Word timings and captions over real HTTP against a real server and the real voice:
the JSON, caption, NDJSON and SSE shapes, offsets into the client's own text, the cache."""

from __future__ import annotations

import base64
import json
import re

import aiohttp
import numpy as np
import openai
import pytest

from tests import support
from tests.support import decode_wav
from tts_server.speech.text import normalize

HARD = "  Ｈｅｌｌｏ,\t\tworld!  In 2024, Dr. Smith paid $5.50 😀 — e.g. ①  the end.\n\nBye "


async def post(server, body, path="/api/tts"):
    status, headers, data = await support.post_tts(server.url, body, path=path)
    return status, headers, data


def spoken_words(text: str) -> list[str]:
    from inference.timing import word_tokens

    return [text[a:b] for a, b in word_tokens(text)]


def check_words(text: str, words: list[dict], duration_s: float) -> None:
    for word in words:
        assert text[word["start_char"]:word["end_char"]] == word["text"]
        assert 0 <= word["start_s"] <= word["end_s"] <= duration_s + 1e-3
    starts = [w["start_s"] for w in words]
    assert starts == sorted(starts)
    offsets = [w["start_char"] for w in words]
    assert offsets == sorted(offsets)


async def test_json_timings_index_the_text_exactly_as_sent(shared_server):
    status, headers, body = await post(shared_server, {"text": HARD, "timestamps": "words"})
    assert status == 200, body
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Timings"] == "engine"
    doc = json.loads(body)
    samples, rate, _ = decode_wav(base64.b64decode(doc["audio"]))
    assert rate == doc["sample_rate"] == 22050 and doc["format"] == "wav"
    assert doc["duration_s"] == pytest.approx(len(samples) / rate, abs=0.002)
    check_words(HARD, doc["words"], doc["duration_s"])
    heard = [w["text"] for w in doc["words"]]
    assert heard == ["Ｈｅｌｌｏ", "world", "In", "2024", "Dr", "Smith", "paid", "$5.50", "😀",
                     "e.g.", "①", "the", "end", "Bye"]
    # Every word of the normalized text is there: nothing is dropped.
    assert len(heard) == len(spoken_words(normalize(HARD)))
    # "2024" is read as several words: its time spans all of them.
    year = doc["words"][3]
    assert year["end_s"] - year["start_s"] > 0.6


async def test_timings_survive_the_cache_and_a_plain_entry_is_not_enough(shared_server):
    text = "A sentence only for the cache test of timings. And a second one."
    status, headers, _ = await post(shared_server, {"text": text})  # plain: no timings stored
    assert status == 200
    status, headers, first = await post(shared_server, {"text": text, "timestamps": "words"})
    assert status == 200 and headers["X-Cache"] == "miss"
    status, headers, again = await post(shared_server, {"text": text, "timestamps": "words"})
    assert status == 200 and headers["X-Cache"] == "hit-l1"
    assert json.loads(again)["words"] == json.loads(first)["words"]
    # Another spelling of the same normalized text: the same entry, its own offsets.
    spaced = "  " + text.replace(" ", "   ")
    status, headers, body = await post(shared_server, {"text": spaced, "timestamps": "words"})
    assert status == 200 and headers["X-Cache"] == "hit-l1"
    words = json.loads(body)["words"]
    check_words(spaced, words, json.loads(body)["duration_s"])
    assert [w["text"] for w in words] == [w["text"] for w in json.loads(first)["words"]]
    # The plain path is untouched: audio, not JSON.
    status, headers, plain = await post(shared_server, {"text": text})
    assert headers["Content-Type"] == "audio/wav" and plain[:4] == b"RIFF"


async def test_speed_scales_the_timings(shared_server):
    text = "Timings follow the speed of the voice when it speaks faster."
    bodies = [{"text": text, "timestamps": "words", "speed": speed} for speed in (1.0, 2.0)]
    slow, fast = [json.loads((await post(shared_server, body))[2]) for body in bodies]
    assert fast["words"][-1]["start_s"] / slow["words"][-1]["start_s"] == pytest.approx(
        0.5, abs=0.15)
    assert [w["text"] for w in fast["words"]] == [w["text"] for w in slow["words"]]


async def test_captions_are_cues_of_the_clients_text(shared_server):
    text = "First line here.  Second one, with a comma!\nThird & <last>."
    status, headers, body = await post(shared_server, {"text": text, "captions": "vtt"})
    assert status == 200 and headers["Content-Type"] == "text/vtt; charset=utf-8"
    blocks = body.decode().split("\n\n")
    assert blocks[0] == "WEBVTT"
    cues = [b.split("\n") for b in blocks[1:] if b.strip()]
    assert [c[1] for c in cues] == ["First line here.", "Second one, with a comma!",
                                    "Third &amp; &lt;last>."]
    assert all(" --> " in c[0] for c in cues)
    status, headers, body = await post(shared_server, {"text": text, "captions": "srt",
                                                       "format": "mp3"})
    assert status == 200 and headers["Content-Type"].startswith("application/x-subrip")
    lines = body.decode().splitlines()
    assert lines[0] == "1"
    assert re.fullmatch(r"\d\d:\d\d:\d\d,\d{3} --> \d\d:\d\d:\d\d,\d{3}", lines[1])


async def test_streamed_timings_are_ndjson_events_after_each_units_audio(shared_server):
    text = "The first sentence streams. Then the second one. And a third."
    body = {"text": text, "timestamps": "words", "stream": True, "format": "pcm"}
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{shared_server.url}/api/tts", json=body) as response:
            assert response.status == 200
            assert response.headers["Content-Type"] == "application/x-ndjson"
            events = [json.loads(line) async for line in response.content if line.strip()]
    kinds = [e["type"] for e in events]
    assert kinds[0] == "audio" and kinds[-1] == "done"
    assert kinds.count("words") == 3
    assert all(kinds[i - 1] == "audio" for i, k in enumerate(kinds) if k == "words")
    pcm = b"".join(base64.b64decode(e["audio"]) for e in events if e["type"] == "audio")
    duration = len(pcm) / 2 / 22050
    assert events[-1]["duration_s"] == pytest.approx(duration, abs=0.002)
    words = [w for e in events if e["type"] == "words" for w in e["words"]]
    check_words(text, words, duration)
    assert [w["text"] for w in words] == spoken_words(text)
    # The same words as the whole (non-streamed) answer.
    status, _, whole = await post(shared_server, {"text": text, "timestamps": "words"})
    assert [w["start_char"] for w in json.loads(whole)["words"]] == [
        w["start_char"] for w in words]


@pytest.mark.parametrize("body,code", [
    ({"text": "hi", "timestamps": "all"}, "invalid_timestamps"),
    ({"text": "hi", "timestamps": ["words"]}, "invalid_timestamps"),
    ({"text": "hi", "captions": "ass"}, "invalid_captions"),
    ({"text": "hi", "captions": 1}, "invalid_captions"),
    ({"text": "hi", "captions": "vtt", "stream": True}, "invalid_captions"),
])
async def test_bad_timing_options_are_400_and_the_server_keeps_serving(shared_server, body, code):
    status, _, data = await post(shared_server, body)
    assert status == 400 and json.loads(data)["error"]["code"] == code
    status, _, _ = await post(shared_server, {"text": "Still serving."})
    assert status == 200


async def test_openai_sse_carries_word_events_and_plain_timestamps_give_json(shared_server):
    text = "Hello from the OpenAI route. With timings."
    async with openai.AsyncOpenAI(base_url=f"{shared_server.url}/v1", api_key="unused") as client:
        raw = await client.audio.speech.with_raw_response.create(
            model="tts-1", voice="alloy", input=text, response_format="pcm",
            extra_body={"timestamps": "words"})
    doc = json.loads(raw.content)
    assert doc["sample_rate"] == 24000 and doc["format"] == "pcm"
    assert len(base64.b64decode(doc["audio"])) / 2 / 24000 == pytest.approx(doc["duration_s"],
                                                                            abs=0.01)
    check_words(text, doc["words"], doc["duration_s"])
    body = {"model": "tts-1", "voice": "alloy", "input": text, "stream_format": "sse",
            "timestamps": "words", "response_format": "pcm"}
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{shared_server.url}/v1/audio/speech", json=body) as response:
            assert response.status == 200
            assert response.headers["Content-Type"] == "text/event-stream"
            lines = [line.decode() async for line in response.content]
    events = [json.loads(line[6:]) for line in lines if line.startswith("data: ")]
    kinds = [e["type"] for e in events]
    assert kinds[-1] == "speech.audio.done" and "speech.words" in kinds
    words = [w for e in events if e["type"] == "speech.words" for w in e["words"]]
    assert [w["text"] for w in words] == [w["text"] for w in doc["words"]]


async def test_timings_are_within_the_audio_for_every_format(shared_server):
    text = "Every format gets the same timings."
    for fmt in ("mp3", "opus", "flac", "pcm"):
        status, _, body = await post(shared_server, {"text": text, "timestamps": "words",
                                                     "format": fmt})
        assert status == 200, (fmt, body)
        doc = json.loads(body)
        assert doc["format"] in (fmt, "ogg")
        assert base64.b64decode(doc["audio"])
        check_words(text, doc["words"], doc["duration_s"])
        assert len(doc["words"]) == 6


async def test_every_unit_of_a_long_text_is_timed(shared_server):
    sentences = [f"Sentence number {i} has a few words." for i in range(12)]
    text = " ".join(sentences)
    status, _, body = await post(shared_server, {"text": text, "timestamps": "words"})
    doc = json.loads(body)
    check_words(text, doc["words"], doc["duration_s"])
    assert len(doc["words"]) == len(spoken_words(text))
    gaps = np.diff([w["start_s"] for w in doc["words"]])
    assert gaps.max() < 1.5  # no unit's words piled at the start of the audio
