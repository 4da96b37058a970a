"""Request bodies (seed payloads, unique sentences, Zipf pool) and audio-duration parsing."""

from __future__ import annotations

import json
import random
import struct
from collections import Counter

import pytest

from stress import texts
from stress.audio import audio_seconds, wav_seconds


def wav(sample_rate: int, pcm_bytes: int, streamed: bool = False) -> bytes:
    size = 0xFFFFFFFF if streamed else pcm_bytes
    header = (
        b"RIFF"
        + struct.pack("<I", 0xFFFFFFFF if streamed else 36 + pcm_bytes)
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, sample_rate * 2, 2, 16)
        + b"data"
        + struct.pack("<I", size)
    )
    return header + bytes(pcm_bytes)


def test_seed_payloads_are_the_three_sentences() -> None:
    assert texts.SEED_TEXTS == (
        "人工智能正在改变我们的生活方式。",
        "欢迎收听由IndexTTS-2-LLM生成的语音播报。",
        "今天的天气晴朗，适合外出散步。",
    )
    source = texts.seed_texts(random.Random(3))
    draws = Counter(source() for _ in range(3000))
    assert set(draws) == set(texts.SEED_TEXTS)
    assert min(draws.values()) > 800  # uniform: ~1000 each


def test_seed_body_is_the_locust_json() -> None:
    encode = texts.BodyTemplate(voice="female").encoder(lambda: texts.SEED_TEXTS[0])
    assert json.loads(encode()) == {"text": texts.SEED_TEXTS[0], "voice": "female"}
    assert "人工智能".encode() in encode()  # UTF-8, not \\u escapes


def test_body_template_only_sends_fields_that_were_set() -> None:
    template = texts.BodyTemplate(speed=1.5, audio_format="pcm", stream=True)
    assert json.loads(template.encoder(lambda: "hi")()) == {
        "text": "hi",
        "speed": 1.5,
        "format": "pcm",
        "stream": True,
    }
    assert texts.BodyTemplate().fields() == {}


def test_unique_texts_never_repeat() -> None:
    source = texts.unique_texts(random.Random(1))
    drawn = [source() for _ in range(2000)]
    assert len(set(drawn)) == 2000
    assert all(40 <= len(text) <= 200 for text in drawn)


def test_zipf_popularity_follows_the_exponent() -> None:
    pool = texts.text_pool(50, random.Random(1))
    assert len(set(pool)) == 50
    source = texts.zipf_texts(pool, exponent=1.0, rng=random.Random(2))
    counts = Counter(source() for _ in range(40_000))
    # With exponent 1, rank 1 is drawn twice as often as rank 2 and 4x as often as rank 4.
    assert counts[pool[0]] / counts[pool[1]] == pytest.approx(2.0, rel=0.1)
    assert counts[pool[0]] / counts[pool[3]] == pytest.approx(4.0, rel=0.15)


def test_wav_duration_from_the_header_chunks() -> None:
    assert wav_seconds(wav(22050, 44100)) == pytest.approx(1.0)
    assert wav_seconds(wav(16000, 16000, streamed=True)) == pytest.approx(0.5)
    assert wav_seconds(b"RIFF....WAVE") is None
    assert wav_seconds(b"not a wav") is None


def test_audio_seconds_prefers_the_header_then_wav_then_pcm() -> None:
    assert audio_seconds({"X-Audio-Duration": "1.250"}, b"") == 1.25
    assert audio_seconds({}, wav(16000, 32000)) == pytest.approx(1.0)
    assert audio_seconds({"X-Sample-Rate": "22050"}, bytes(22050)) == pytest.approx(0.5)
    assert audio_seconds({}, b"ok") is None
    assert audio_seconds({"X-Audio-Duration": "soon"}, b"ok") is None
