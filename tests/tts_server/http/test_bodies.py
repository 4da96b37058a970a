"""The memo of parsed request bodies: same bytes, same parse; invalid bodies never stored."""

import pytest

from tts_server.config import load_settings
from tts_server.errors import BadRequest
from tts_server.http.bodies import ParsedBodies, decode_json
from tts_server.speech.request import parse_tts_request
from tts_server.speech.voices import VoiceRegistry


@pytest.fixture(scope="module")
def parse():
    settings = load_settings(None)
    registry = VoiceRegistry.from_settings(settings.voices)
    calls = []

    def parse(body: bytes):
        calls.append(body)
        return parse_tts_request(decode_json(body), registry, settings)

    parse.calls = calls
    return parse


def test_identical_bodies_are_parsed_once(parse):
    memo = ParsedBodies(max_entries=2, max_body_bytes=1024)
    body = b'{"text": "Platform  four,\\tplease."}'
    first = memo.get_or_parse("tts", body, parse)
    assert first.text == "Platform four, please."
    assert memo.get_or_parse("tts", body, parse) is first
    assert parse.calls.count(body) == 1 and memo.hits == 1
    # Another route's parser never sees this route's entry.
    other = memo.get_or_parse("speech", body, parse)
    assert other is not first and parse.calls.count(body) == 2


def test_bounded_by_entries_and_body_size(parse):
    memo = ParsedBodies(max_entries=2, max_body_bytes=64)
    bodies = [b'{"text": "One."}', b'{"text": "Two."}', b'{"text": "Three."}']
    for body in bodies:
        memo.get_or_parse("tts", body, parse)
    assert len(memo) == 2
    memo.get_or_parse("tts", bodies[0], parse)  # the oldest was evicted: parsed again
    assert parse.calls.count(bodies[0]) == 2
    large = b'{"text": "' + b"long " * 30 + b'"}'
    memo.get_or_parse("tts", large, parse)
    memo.get_or_parse("tts", large, parse)
    assert parse.calls.count(large) == 2 and len(memo) == 2


def test_invalid_bodies_raise_every_time_and_are_not_stored(parse):
    memo = ParsedBodies(max_entries=8, max_body_bytes=1024)
    for body in (b'{"text": ""}', b"not json"):
        for _ in range(2):
            with pytest.raises(BadRequest):
                memo.get_or_parse("tts", body, parse)
    assert len(memo) == 0
