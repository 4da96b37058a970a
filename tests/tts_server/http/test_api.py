"""The HTTP API over real loopback HTTP against a real server process and the real voice."""

import asyncio

import aiohttp
import numpy as np
import pytest
from multidict import CIMultiDict

from tests import support
from tests.support import decode_wav, plausible_duration

PARAGRAPH = (
    "The city council approved the new budget on Monday. Officials said the plan adds money"
    " for parks and libraries. Critics argued that it does too little for public transport."
)


async def post_tts(url: str, body, **kwargs) -> tuple[int, dict, bytes]:
    status, headers, data = await support.post_tts(url, body, **kwargs)
    return status, CIMultiDict(headers), data


async def test_synthesis_returns_a_decodable_22050_hz_mono_16_bit_wav(shared_server):
    status, headers, body = await post_tts(shared_server.url, {"text": PARAGRAPH})
    assert status == 200
    assert headers["Content-Type"] == "audio/wav"
    samples, rate, wav = decode_wav(body)
    assert (rate, wav.channels, wav.subtype) == (22050, 1, "PCM_16")
    seconds = len(samples) / rate
    assert plausible_duration(PARAGRAPH, seconds)
    assert float(headers["X-Audio-Duration"]) == pytest.approx(seconds, abs=0.01)
    assert np.abs(samples).max() > 10000


async def test_streaming_and_non_streaming_give_the_same_audio(shared_server):
    _, _, whole = await post_tts(shared_server.url, {"text": PARAGRAPH})
    async with aiohttp.ClientSession() as session:
        body = {"text": PARAGRAPH, "stream": True}
        async with session.post(f"{shared_server.url}/api/tts", json=body) as response:
            assert response.status == 200
            assert response.headers["Transfer-Encoding"] == "chunked"
            chunks = [chunk async for chunk in response.content.iter_any()]
    streamed = b"".join(chunks)
    assert streamed[:4] == b"RIFF" and streamed[40:44] == b"\xff\xff\xff\xff"
    a = np.frombuffer(whole[44:], "<i2").astype(np.int32)
    b = np.frombuffer(streamed[44:], "<i2").astype(np.int32)
    assert len(a) == len(b)
    # Noise is off in the test config; only thread-count rounding may differ.
    assert np.abs(a - b).max() <= 64


async def test_pcm_format_is_raw_samples_with_the_rate_in_a_header(shared_server):
    status, headers, body = await post_tts(
        shared_server.url, {"text": "Raw samples.", "format": "pcm"}
    )
    assert status == 200
    assert headers["Content-Type"] == "audio/pcm"
    assert headers["X-Sample-Rate"] == "22050"
    assert len(body) % 2 == 0
    assert plausible_duration("Raw samples.", len(body) / 2 / 22050)


async def test_first_streamed_bytes_leave_before_the_whole_text_is_done(shared_server):
    long_text = " ".join([PARAGRAPH] * 4)
    async with aiohttp.ClientSession() as session:
        loop = asyncio.get_running_loop()
        started = loop.time()
        body = {"text": long_text, "stream": True}
        async with session.post(f"{shared_server.url}/api/tts", json=body) as response:
            await response.content.readexactly(44 + 2)
            first_audio = loop.time() - started
            await response.read()
            total = loop.time() - started
    assert first_audio < total / 3


async def test_32_concurrent_mixed_requests_all_succeed(shared_server):
    texts = [f"Request number {i} says hello." for i in range(16)] + [PARAGRAPH] * 16
    bodies = [
        {
            "text": t,
            "stream": i % 2 == 0,
            "format": "wav" if i % 3 else "pcm",
            "speed": 1 + i % 3 / 2,
        }
        for i, t in enumerate(texts)
    ]
    async with aiohttp.ClientSession() as session:

        async def one(body):
            async with session.post(f"{shared_server.url}/api/tts", json=body) as response:
                return response.status, await response.read()

        results = await asyncio.gather(*(one(b) for b in bodies))
    assert [status for status, _ in results] == [200] * 32
    for body, (_, audio) in zip(bodies, results, strict=True):
        pcm_bytes = len(audio) - (44 if body["format"] == "wav" else 0)
        seconds = pcm_bytes / 2 / 22050 * body["speed"]
        assert plausible_duration(body["text"], seconds), (body, seconds)


async def test_request_id_is_echoed_or_created_and_timing_is_reported(shared_server):
    _, headers, _ = await post_tts(
        shared_server.url, {"text": "Hi."}, headers={"X-Request-Id": "abc-123"}
    )
    assert headers["X-Request-Id"] == "abc-123"
    assert "queue;dur=" in headers["Server-Timing"] and "synth;dur=" in headers["Server-Timing"]
    _, headers, _ = await post_tts(shared_server.url, {"text": "Hi."})
    assert len(headers["X-Request-Id"]) == 32


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        (
            {"data": "{not json", "headers": {"Content-Type": "application/json"}},
            400,
            "invalid_json",
        ),
        (
            {"data": "text=hi", "headers": {"Content-Type": "text/plain"}},
            415,
            "unsupported_media_type",
        ),
        ({"json": {"text": ""}}, 400, "empty_text"),
        ({"json": {"text": "  \u200b "}}, 400, "empty_text"),
        ({"json": {}}, 400, "missing_text"),
        ({"json": ["text"]}, 400, "invalid_body"),
        ({"json": {"text": 5}}, 400, "invalid_text"),
        ({"json": {"text": "hi", "voice": "nobody"}}, 400, "unknown_voice"),
        ({"json": {"text": "hi", "speed": 9}}, 422, "invalid_speed"),
        ({"json": {"text": "hi", "speed": "fast"}}, 422, "invalid_speed"),
        ({"json": {"text": "hi", "speaker": 3}}, 422, "invalid_speaker"),
        ({"json": {"text": "hi", "format": "ogg"}}, 400, "invalid_format"),
        ({"json": {"text": "hi", "stream": "yes"}}, 400, "invalid_stream"),
        ({"json": {"text": "x" * 2001}}, 413, "text_too_long"),
        (
            {"data": b"{" + b" " * 300_000 + b"}", "headers": {"Content-Type": "application/json"}},
            413,
            "body_too_large",
        ),
    ],
)
async def test_bad_input_gets_its_status_and_a_json_error(shared_server, kwargs, status, code):
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{shared_server.url}/api/tts", **kwargs) as response:
            assert response.status == status
            assert response.content_type == "application/json"
            error = (await response.json())["error"]
    assert error["code"] == code
    assert error["message"] and "Traceback" not in error["message"]
    if code == "unknown_voice":
        assert "joe" in error["message"]
    # ...and the server keeps serving.
    ok, _, _ = await post_tts(shared_server.url, {"text": "Still here."})
    assert ok == 200


async def test_unknown_route_and_wrong_method_are_json_errors(shared_server):
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{shared_server.url}/nope") as response:
            assert response.status == 404
            assert (await response.json())["error"]["code"] == "not_found"
        async with session.get(f"{shared_server.url}/api/tts") as response:
            assert response.status == 405
            assert (await response.json())["error"]["code"] == "method_not_allowed"


async def test_voices_lists_names_languages_rates_engines_and_aliases(shared_server):
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{shared_server.url}/api/voices") as response:
            data = await response.json()
    joe = next(v for v in data["voices"] if v["name"] == "joe")
    assert joe["language"] == "en_US"
    assert joe["sample_rate"] == 22050
    assert joe["engine"] == "piper"
    assert "male" in joe["aliases"]
    assert data["default"] == "joe"


async def test_probes_report_health_and_readiness(shared_server):
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{shared_server.url}/healthz") as response:
            assert response.status == 200
        async with session.get(f"{shared_server.url}/readyz") as response:
            assert response.status == 200
            body = await response.json()
    assert body["pools"]["piper"]["workers_ready"] == body["pools"]["piper"]["workers_total"] == 2


@pytest.mark.parametrize("audio_format", ["mp3", "opus", "aac", "flac"])
@pytest.mark.parametrize("stream", [False, True])
async def test_compressed_formats_decode_whole_and_streamed(shared_server, audio_format, stream):
    from tests.tts_server.http.test_openai import decode_any

    text = f"Compressed audio in {audio_format}, streamed {stream}."
    status, headers, body = await post_tts(
        shared_server.url, {"text": text, "format": audio_format, "stream": stream}
    )
    assert status == 200
    samples, rate, channels = decode_any(body)
    assert channels == 1 and rate in (22050, 48000)
    assert plausible_duration(text, samples.shape[1] / rate)
    assert headers["Content-Type"].startswith("audio/")


async def test_the_default_voice_runs_the_cached_int8_model(shared_server):
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{shared_server.url}/api/voices") as response:
            voices = {v["name"]: v for v in (await response.json())["voices"]}
    assert voices["joe"]["precision"] == "int8"
    assert voices["espeak-en-male"]["precision"] == "fp32"
