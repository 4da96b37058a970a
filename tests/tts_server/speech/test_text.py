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
