"""The front's side of word timings: the client's text map, placing units, captions."""

from __future__ import annotations

import random

from inference.timing import WordTiming
from tts_server.cache.tiers import CachedAudio
from tts_server.config import TextSettings
from tts_server.jobs.captions import encode_unit_words, job_captions
from tts_server.speech.text import normalize, split_units
from tts_server.speech.timings import (
    SourceMap,
    captions,
    estimated_words,
    place_unit,
    public_words,
    unit_maps,
)

ALPHABET = list("ab c\t\n\r  ,.!?😀é\u0301ﬁ①\u200b\x00\u3000\xa0中文ＡＢ１２\u1100\u1161\u11a8")


def test_the_source_map_normalizes_exactly_as_the_front_does():
    rng = random.Random(7)
    for _ in range(3000):
        text = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 40)))
        assert SourceMap(text).normalized == normalize(text)


def test_each_normalized_character_points_at_its_source():
    source = "  Ｈｉ\t\tthere ①ﬁ\r\nok "
    found = SourceMap(source)
    assert found.normalized == "Hi there 1fi\nok"
    assert source[slice(*found.span(0, 2))] == "Ｈｉ"
    assert source[slice(*found.span(9, 12))] == "①ﬁ"
    assert source[slice(*found.span(13, 15))] == "ok"


def test_units_are_placed_in_the_request_and_its_audio():
    text = normalize("One, two three. Four five; six seven eight nine ten eleven twelve.")
    units = split_units(text, 24)
    maps = unit_maps(text, units)
    placed, offset = [], 0
    for unit, index in zip(units, maps, strict=True):
        last = len(unit.rstrip(".,;"))
        words = (WordTiming(0, 3, 10, 20), WordTiming(last - 3, last, 30, 40))
        placed.extend(place_unit(words, index, offset))
        assert text[placed[-2].start_char:placed[-2].end_char] == unit[:3]
        offset += 1000
    assert [w.start_sample for w in placed] == sorted(w.start_sample for w in placed)
    assert placed[-1].start_sample == 30 + 1000 * (len(units) - 1)
    # Audio a fallback made at another rate lands on the voice's own timeline.
    scaled = place_unit((WordTiming(0, 3, 100, 200),), maps[0], 0, rate_ratio=24000 / 22050)
    assert scaled[0].start_sample == round(100 * 24000 / 22050)


def test_estimates_spread_words_by_length_over_the_audio():
    words = estimated_words("aa bbbb cc", 800)
    assert [(w.start_sample, w.end_sample) for w in words] == [(0, 200), (200, 600), (600, 800)]


def test_caption_cues_keep_the_clients_punctuation_and_split_at_sentences():
    source = "Hello, world!  Second   sentence here."
    normalized = SourceMap(source)
    spans = [(0, 5), (7, 12), (15, 21), (24, 32), (33, 37)]
    words = [WordTiming(*normalized_span(normalized, a, b), i * 22050, i * 22050 + 11025)
             for i, (a, b) in enumerate(spans)]
    public = public_words(words, normalized, 22050)
    assert [w.text for w in public] == ["Hello", "world", "Second", "sentence", "here"]
    vtt = captions(public, source, "vtt", TextSettings())
    assert vtt == ("WEBVTT\n\n00:00:00.000 --> 00:00:01.500\nHello, world!\n\n"
                   "00:00:02.000 --> 00:00:04.500\nSecond sentence here.\n")
    srt = captions(public, source, "srt", TextSettings())
    assert srt.startswith("1\n00:00:00,000 --> 00:00:01,500\nHello, world!\n\n2\n")


def normalized_span(source: SourceMap, start: int, end: int) -> tuple[int, int]:
    """The normalized offsets of source[start:end] (a test helper: search the text)."""
    word = source.source[start:end]
    found = source.normalized.index(word)
    return found, found + len(word)


def test_job_captions_lay_sentences_end_to_end():
    units = ["First one.", "Second one."]
    stored = {0: encode_unit_words(22050, [WordTiming(0, 5, 0, 11025), WordTiming(6, 9, 11025,
                                                                                  22050)]),
              1: encode_unit_words(22050, [WordTiming(0, 6, 0, 11025)])}
    vtt = job_captions(units, stored, 22050, "vtt", TextSettings())
    assert "00:00:00.000 --> 00:00:01.000\nFirst one." in vtt
    assert "00:00:01.000 --> 00:00:01.500\nSecond" in vtt
    assert job_captions(units, {0: b"garbage"}, 22050, "vtt", TextSettings()) == "WEBVTT\n\n"


def test_cached_values_carry_timings_and_old_values_still_decode():
    words = (WordTiming(0, 5, 0, 100), WordTiming(6, 9, 120, 300))
    value = CachedAudio(22050, b"\x00\x01" * 4, words)
    assert CachedAudio.decode(value.encode()) == value
    estimated = CachedAudio(22050, b"\x00\x01" * 4, words, estimated=True)
    assert CachedAudio.decode(estimated.encode()).estimated is True
    plain = CachedAudio(22050, b"\x00\x01" * 4)
    assert CachedAudio.decode(plain.encode()).words is None
    import msgpack
    import pytest

    bad = msgpack.packb({"v": 1, "sample_rate": 22050, "pcm": b"\x00\x00", "words": [[1, 2]]})
    with pytest.raises(ValueError):
        CachedAudio.decode(bad)


def test_the_cue_limits_come_from_config():
    source = "One two three, four five six seven eight."
    found = SourceMap(source)
    spans = [(0, 3), (4, 7), (8, 13), (15, 19), (20, 24), (25, 28), (29, 34), (35, 40)]
    words = public_words([WordTiming(*normalized_span(found, a, b), i * 2205, i * 2205 + 2000)
                          for i, (a, b) in enumerate(spans)], found, 22050)
    assert captions(words, source, "vtt", TextSettings()).count(" --> ") == 1
    short = captions(words, source, "vtt", TextSettings(caption_max_chars=20))
    assert "\nOne two three,\n" in short  # cut at the comma before the limit
    assert short.count(" --> ") == 3
