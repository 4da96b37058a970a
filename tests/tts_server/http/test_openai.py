"""The OpenAI-compatible API, driven by the official `openai` package."""

import base64
import hashlib
import io
import json

import aiohttp
import av
import numpy as np
import openai
import pytest

from tests.support import decode_wav

TEXT = "The quick brown fox jumps over the lazy dog. It was not amused."
# Codec padding: streamed mp3/aac carry their encoder delay.
DURATION_TOLERANCE_S = 0.15


def decode_any(data: bytes) -> tuple[np.ndarray, int, int]:
    """Samples, sample rate and channels of any container PyAV knows."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        frames = [f.to_ndarray() for f in container.decode(stream)]
        rate, channels = stream.codec_context.sample_rate, stream.codec_context.channels
    return np.concatenate(frames, axis=1), rate, channels


@pytest.fixture(scope="module")
def server(shared_server):
    return shared_server


@pytest.fixture
async def client(server):
    async with openai.AsyncOpenAI(
        base_url=f"{server.url}/v1", api_key="anything", max_retries=0
    ) as client:
        yield client


@pytest.fixture
async def reference_seconds(client) -> float:
    response = await client.audio.speech.create(
        model="tts-1", voice="alloy", input=TEXT, response_format="wav"
    )
    samples, rate, _ = decode_wav(response.content)
    assert rate == 22050
    return len(samples) / rate


# Opus is encoded at 24 kHz (X-Sample-Rate) but every Opus decoder outputs 48 kHz.
EXPECTED_RATES = {"mp3": 22050, "opus": 48000, "aac": 22050, "flac": 22050, "wav": 22050}
HEADER_RATES = {**EXPECTED_RATES, "opus": 24000}


@pytest.mark.parametrize("response_format", ["mp3", "opus", "aac", "flac", "wav"])
async def test_every_format_decodes_with_the_right_rate_and_length(
    client, reference_seconds, response_format
):
    response = await client.audio.speech.create(
        model="tts-1", voice="alloy", input=TEXT, response_format=response_format
    )
    samples, rate, channels = decode_any(response.content)
    assert (rate, channels) == (EXPECTED_RATES[response_format], 1)
    assert response.response.headers["x-sample-rate"] == str(HEADER_RATES[response_format])
    assert abs(samples.shape[1] / rate - reference_seconds) < DURATION_TOLERANCE_S


async def test_pcm_is_24_khz_16_bit_mono(client, reference_seconds):
    response = await client.audio.speech.create(
        model="tts-1", voice="alloy", input=TEXT, response_format="pcm"
    )
    assert response.response.headers["x-sample-rate"] == "24000"
    seconds = len(response.content) / 2 / 24000
    assert abs(seconds - reference_seconds) < 0.01
    assert np.abs(np.frombuffer(response.content, "<i2")).max() > 8000


async def test_mp3_is_the_default_and_speed_is_applied(client, reference_seconds):
    response = await client.audio.speech.create(model="tts-1", voice="echo", input=TEXT, speed=2.0)
    assert response.response.headers["content-type"] == "audio/mpeg"
    samples, rate, _ = decode_any(response.content)
    assert 0.4 < samples.shape[1] / rate / reference_seconds < 0.7


@pytest.mark.parametrize("response_format", ["mp3", "opus", "wav"])
async def test_streaming_response_arrives_in_chunks_that_concatenate(client, response_format):
    long_text = " ".join([TEXT] * 4)
    chunks = []
    async with client.audio.speech.with_streaming_response.create(
        model="tts-1", voice="alloy", input=long_text, response_format=response_format
    ) as response:
        async for chunk in response.iter_bytes():
            chunks.append(chunk)
    assert len(chunks) > 1
    samples, rate, _ = decode_any(b"".join(chunks))
    assert samples.shape[1] / rate > 8


async def test_sse_events_parse_and_carry_the_audio(server):
    body = {
        "model": "gpt-4o-mini-tts",
        "voice": "alloy",
        "input": TEXT,
        "response_format": "pcm",
        "stream_format": "sse",
    }
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{server.url}/v1/audio/speech", json=body) as response:
            assert response.headers["Content-Type"].startswith("text/event-stream")
            text = (await response.read()).decode()
    events = [json.loads(line[len("data: ") :]) for line in text.split("\n\n") if line]
    assert [e["type"] for e in events[:-1]] == ["speech.audio.delta"] * (len(events) - 1)
    assert events[-1]["type"] == "speech.audio.done" and "usage" in events[-1]
    pcm = b"".join(base64.b64decode(e["audio"]) for e in events[:-1])
    assert 2.0 < len(pcm) / 2 / 24000 < 8.0


async def test_models_and_voices_are_listed(client, server):
    models = [m.id async for m in client.models.list()]
    assert {"tts-1", "tts-1-hd", "piper", "joe"} <= set(models)
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{server.url}/v1/audio/voices") as response:
            voices = await response.json()
    assert "alloy" in voices["openai_voices"]


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"model": "tts-9"}, "model"),
        ({"voice": "nobody"}, "voice"),
        ({"response_format": "ogg"}, "response_format"),
        ({"speed": 5.0}, "speed"),
        ({"input": ""}, "input"),
    ],
)
async def test_bad_requests_get_openai_shaped_400(client, kwargs, param):
    request = {"model": "tts-1", "voice": "alloy", "input": TEXT, **kwargs}
    with pytest.raises(openai.BadRequestError) as info:
        await client.audio.speech.create(**request)
    error = info.value.body
    assert info.value.status_code == 400
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["message"] and error["code"]


async def test_missing_or_wrong_key_is_401_when_tokens_are_configured(running_server):
    token = "sk-test-key"
    entry = {
        "name": "sdk",
        "tier": "standard",
        "sha256": hashlib.sha256(token.encode()).hexdigest(),
    }
    server = running_server({"auth": {"tokens": [entry]}})
    for key in ("wrong-key", None):
        headers = {"Authorization": openai.Omit()} if key is None else None
        async with openai.AsyncOpenAI(
            base_url=f"{server.url}/v1", api_key=key or "unused", max_retries=0
        ) as client:
            with pytest.raises(openai.AuthenticationError) as info:
                await client.audio.speech.create(
                    model="tts-1", voice="alloy", input=TEXT, extra_headers=headers
                )
        assert info.value.body["type"] == "authentication_error"
        assert info.value.body["code"] == ("invalid_token" if key else "missing_token")
    async with openai.AsyncOpenAI(
        base_url=f"{server.url}/v1", api_key=token, max_retries=0
    ) as client:
        response = await client.audio.speech.create(
            model="tts-1", voice="alloy", input=TEXT, response_format="wav"
        )
    assert decode_wav(response.content)[1] == 22050
