from tts_server.speech.text import normalize, split_sentences, split_units


def test_normalize_applies_nfkc_and_strips_control_characters():
    assert normalize("ｆｕｌｌ\u200bwidth\x07 text\t here ") == "fullwidth text here"
    assert normalize("a\r\nb") == "a\nb"


def test_sentences_split_on_english_and_cjk_punctuation():
    assert split_sentences("Hello there. How are you? Fine!") == [
        "Hello there.",
        "How are you?",
        "Fine!",
    ]
    assert split_sentences("今天天气很好。我们去散步吧！好的") == [
        "今天天气很好。",
        "我们去散步吧！",
        "好的",
    ]


def test_abbreviations_do_not_end_sentences():
    assert split_sentences("Dr. Smith met Mr. Jones. They talked.") == [
        "Dr. Smith met Mr. Jones.",
        "They talked.",
    ]


def test_long_sentences_are_cut_at_clauses_then_spaces_within_the_limit():
    sentence = ", ".join(f"clause number {i} of a very long sentence" for i in range(20)) + "."
    units = split_units(sentence, 100)
    assert all(len(u) <= 100 for u in units)
    assert len(units) > 1
    assert " ".join(units).replace(" ,", ",") == sentence
    cjk = "字" * 250
    assert [len(u) for u in split_units(cjk, 100)] == [100, 100, 50]


def test_blank_lines_are_boundaries():
    assert split_units("Title\n\nFirst line of text", 400) == ["Title", "First line of text"]


def test_a_chinese_texts_first_clause_is_a_unit_of_its_own():
    text = normalize("国家统计局今天发布数据，十月份价格上涨，城市上涨。农村持平，食品下降。")
    assert split_units(text, 400) == ["国家统计局今天发布数据,", "十月份价格上涨,城市上涨。",
                                      "农村持平,食品下降。"]
    # lead=False: a text that continues one already cut (a stream's later pieces)
    assert split_units(text, 400, lead=False) == [
        "国家统计局今天发布数据,十月份价格上涨,城市上涨。", "农村持平,食品下降。"]


def test_the_lead_clause_keeps_numbers_times_and_its_run_of_marks_whole():
    # A comma or colon inside a number or a time is no clause mark (no Han before it).
    assert split_units(normalize("共计1,000元，时间10:30。"), 400) == [
        "共计1,000元,", "时间10:30。"]
    # The run of marks, quotes and brackets after the mark stays with the first clause
    # (the engine pauses once for the whole run).
    assert split_units(normalize("他说：“今天下雨。"), 400) == ["他说:“", "今天下雨。"]
    assert split_units(normalize("甲、（乙）丙。"), 400) == ["甲、(", "乙)丙。"]


def test_no_lead_clause_without_a_chinese_clause_or_anything_after_it():
    assert split_units("Hello, world. 你好，世界。", 400) == ["Hello, world.", "你好，世界。"]
    assert split_units(normalize("据报道，"), 400) == ["据报道,"]
    assert split_units(normalize("今天天气很好。明天，下雨。"), 400) == [
        "今天天气很好。", "明天,下雨。"]
    # The first speakable sentence decides: an unspeakable one before it does not count.
    assert split_units(normalize("……\n明天，下雨。"), 400) == ["明天,", "下雨。"]


def test_an_over_long_rest_of_the_first_sentence_is_packed_as_before():
    sentence = "开头，" + "，".join("字" * 30 for _ in range(10)) + "。"
    units = split_units(normalize(sentence), 100)
    assert units[0] == "开头," and all(len(u) <= 100 for u in units)
    # (the packer joins "," and the next clause with a space, as it always has)
    assert "".join(units).replace(" ", "") == normalize(sentence)
