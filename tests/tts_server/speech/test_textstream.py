"""Incremental sentence cutting and the ordered sentence pipeline (no server needed)."""

import asyncio
import random

import pytest

from tts_server.speech.service import Speech
from tts_server.speech.synthesizer import SynthesisTrace
from tts_server.speech.text import normalize, split_units
from tts_server.speech.textstream import SentenceCutter, SentencePipeline

LIMIT = 120
TEXTS = [
    "Dr. Smith arrived at 3.5 p.m. today. He said: \"It works!\" Then he left… "
    "Was it e.g. the fox? Yes.\nA new line starts here",
    "今天天气很好。我们去公园吧！你觉得怎么样？好的",
    # The first clause of a Chinese text is its own unit: only the first one, however the
    # text arrives.
    "国家统计局今天发布数据，十月份全国居民消费价格上涨。其中城市上涨，农村持平。",
    "……\n据报道，共计1,000元、时间10:30：完成。第二句，还有逗号。",
    "Mixed text. 这是中文。And English again; with a clause, and more words here",
    "word " * 80 + "end.",  # over the unit limit with no sentence end until the last word
    "字" * 300,  # CJK, no spaces, no terminator
]


def without_closing_quotes(units: list[str]) -> list[str]:
    """split_units drops a closing quote after a sentence end inside a text ('works!" Then'
    -> 'works!'), the cutter keeps it when the quote ends a fragment's sentence: compare
    the words."""
    return [unit.rstrip('"') for unit in units]


def cut_in_pieces(text: str, rng: random.Random) -> list[str]:
    cuts = sorted(rng.sample(range(1, len(text)), k=min(len(text) - 1, rng.randint(1, 25))))
    return [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("seed", range(12))
def test_any_fragmentation_gives_the_units_of_the_whole_text(text, seed):
    """Split mid-word, mid-sentence, inside "Dr. " or "3.5": the same units as split_units."""
    cutter = SentenceCutter(LIMIT)
    units = []
    for piece in cut_in_pieces(text, random.Random(seed)):
        units += cutter.add(piece)
    units += cutter.flush()
    whole = split_units(normalize(text), LIMIT)
    if len(text) <= LIMIT or "." in text[:LIMIT] or "。" in text:
        assert without_closing_quotes(units) == without_closing_quotes(whole)
    else:  # a run longer than a unit is cut as it arrives: same text, same bound
        assert " ".join(units).replace(" ", "") == " ".join(whole).replace(" ", "")
    assert all(len(unit) <= LIMIT for unit in units)


def test_a_sentence_leaves_as_soon_as_nothing_can_change_it():
    cutter = SentenceCutter(LIMIT)
    assert cutter.add("Hello world.") == []  # "Hello world.com" is still possible
    assert cutter.add(" Next") == ["Hello world."]
    assert cutter.add(" one, Dr.") == []
    assert cutter.add(" ") == []  # "Dr. " may go on: "Dr. Who"
    assert cutter.add("Who came. ") == ["Next one, Dr. Who came."]
    assert cutter.add("你好。") == ["你好。"]  # a CJK stop needs no space after it
    assert cutter.pending == ""


def test_only_the_first_cut_of_a_text_splits_its_lead_clause_and_a_cancel_starts_anew():
    cutter = SentenceCutter(LIMIT)
    assert cutter.add("……\n") == []  # nothing speakable: the text has not started
    assert cutter.add("据报道，今天下雨。明天") == ["据报道,", "今天下雨。"]
    assert cutter.add("，晴天。") == ["明天,晴天。"]  # a later sentence keeps its clauses
    cutter.clear()  # a cancel: what follows is a new text
    assert cutter.add("新的开始，第二个分句。") == ["新的开始,", "第二个分句。"]


def test_text_without_an_end_is_cut_at_the_unit_limit():
    cutter = SentenceCutter(40)
    out = cutter.add("one two three four five six seven eight nine ten eleven")
    assert out and all(len(u) <= 40 for u in out)
    assert len(cutter.pending) <= 40
    assert out[0].startswith("one two")


def fake_speech(chunks: list[bytes], delay_s: float) -> Speech:
    async def produce():
        for chunk in chunks:
            await asyncio.sleep(delay_s)
            yield chunk

    return Speech(request=None, sample_rate=22050, chunks=produce(), trace=SynthesisTrace())


async def test_sentences_come_out_in_order_even_when_later_ones_finish_first():
    started = []

    async def speak(text: str) -> Speech:
        started.append(text)
        return fake_speech([text.encode()], delay_s=0.2 if text == "a" else 0.01)

    pipeline = SentencePipeline(speak, lookahead=4)
    for text in "abc":
        pipeline.add(text)
    pipeline.close()
    out = [(s.index, b"".join([c async for c in s.chunks()])) async for s in pipeline.sentences()]
    assert out == [(0, b"a"), (1, b"b"), (2, b"c")]
    assert started == ["a", "b", "c"]  # all three were synthesizing at once


async def test_only_lookahead_sentences_synthesize_ahead_of_the_one_being_sent():
    started = []

    async def speak(text: str) -> Speech:
        started.append(text)
        return fake_speech([b"x"], 0)

    pipeline = SentencePipeline(speak, lookahead=2)
    for text in "123":
        pipeline.add(text)
    await asyncio.sleep(0.05)
    assert started == ["1", "2"] and pipeline.busy  # the third waits as text
    sentences = pipeline.sentences()
    first = await anext(sentences)
    async for _ in first.chunks():
        pass
    await anext(sentences)  # moving on frees the first one's slot
    await asyncio.sleep(0.05)
    assert started == ["1", "2", "3"]
    await sentences.aclose()


async def test_cancel_drops_unsent_sentences_and_stops_their_synthesis():
    finished = []

    async def speak(text: str) -> Speech:
        async def slow():
            await asyncio.sleep(0.3)
            finished.append(text)
            yield b"pcm"

        return Speech(request=None, sample_rate=22050, chunks=slow(), trace=SynthesisTrace())

    pipeline = SentencePipeline(speak, lookahead=2)
    for text in ("a", "b", "c"):
        pipeline.add(text)
    await asyncio.sleep(0.05)
    assert pipeline.cancel() == 3  # two synthesizing, one waiting
    await asyncio.sleep(0.4)
    assert finished == [] and not pipeline.busy
    pipeline.add("d")  # the slots are free again; the stream goes on
    pipeline.close()
    names = [s.text async for s in pipeline.sentences()]
    assert names == ["d"]


async def test_a_failed_sentence_raises_in_its_place():
    async def speak(text: str) -> Speech:
        if text == "bad":
            raise ValueError("no voice for this")
        return fake_speech([b"ok"], 0)

    pipeline = SentencePipeline(speak, lookahead=4)
    for text in ("good", "bad", "never"):
        pipeline.add(text)
    pipeline.close()
    got = []
    with pytest.raises(ValueError, match="no voice"):
        async for sentence in pipeline.sentences():
            got += [c async for c in sentence.chunks()]
    assert got == [b"ok"]
    pipeline.cancel()
