"""Properties of the text front-end for any Unicode string (hypothesis): after normalize,
split_units yields only non-empty, speakable units within the chunk limit, drops no letter
or digit, and keeps the input's characters in order (it may only add single spaces where
it rejoins clauses, and drop whitespace, closing quotes and unspeakable pieces)."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from inference.text import is_speakable
from tts_server.speech.text import normalize, split_units

EXAMPLES = int(os.environ.get("TEXT_EXAMPLES", "1500"))
# Sentence and clause punctuation, CJK, quotes, newlines, abbreviations: what the splitter
# looks at, mixed into arbitrary text so hypothesis reaches its branches.
PIECES = st.sampled_from([
    ". ", "! ", "? ", "… ", "。", "！", "；", ", ", "; ", ": ", "，", "、", "—", "\n", "\n\n",
    "\" ", "” ", ") ", "」", "Dr. ", "e.g. ", "Mr. ", " ", "  ", "\t", "\u3000", "...",
    "word", "Another", "12", "你好", "世界", "x" * 30, "\ufdfa", "\u200b", "é", "\r\n",
])
TEXTS = st.one_of(
    st.text(),
    st.lists(st.one_of(PIECES, st.text(max_size=8)), max_size=60).map("".join),
)


def is_subsequence_with_spaces(units: list[str], text: str) -> bool:
    """The units' characters appear in `text` in order; a space with no counterpart at that
    point of `text` counts as inserted (the packer's joiner), any other character must match."""
    position = 0
    for char in "".join(units):
        found = text.find(char, position)
        if found < 0:
            if char == " ":
                continue
            return False
        if char == " " and not text[position:found + 1].isspace():
            continue  # matching a far-away space would skip real characters: inserted
        position = found + 1
    return True


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=TEXTS, limit=st.integers(min_value=20, max_value=400))
@example(raw="One.\n—\nTwo.", limit=400)
@example(raw="Hello. ... ! ? Bye.", limit=400)
@example(raw="A. 。 B.", limit=20)
@example(raw="Dr.\nSmith arrived, late; tired: hungry, " * 5, limit=20)
def test_units_are_speakable_bounded_and_faithful(raw, limit):
    text = normalize(raw)
    units = split_units(text, limit)
    for unit in units:
        assert unit and unit == unit.strip()
        assert is_speakable(unit), unit
        assert len(unit) <= limit, (len(unit), unit)
    assert [c for c in text if c.isalnum()] == [c for u in units for c in u if c.isalnum()]
    assert is_subsequence_with_spaces(units, text), (text, units)


@settings(max_examples=300, deadline=None)
@given(raw=TEXTS)
def test_normalize_leaves_no_control_characters_or_space_runs(raw):
    text = normalize(raw)
    assert "\r" not in text and "\t" not in text and "  " not in text
    assert text == text.strip()
