"""Word timings: what every engine returns with a unit's audio when asked, and the tools
to compute them (engine-neutral, no ONNX Runtime here).

A `WordTiming` is in the coordinates of the text the engine was given (the unit) and of
the audio it returned: `text[start_char:end_char]` is the word, `start_sample` /
`end_sample` where it is heard. The front maps both back to the client's text and to the
whole response (tts_server/speech/timings.py).

`Tracked` is a string that remembers, for each of its characters, the span of the source
text it came from, through the substitutions a text normalizer makes ("10:30" ->
十点三十分: every one of the five characters points at the five of "10:30"). Built without
spans it is a plain string with the same methods, so a normalizer written on it costs
nothing extra when no one asks for timings.

`align_tokens` maps the client's words onto the phoneme words a phonemizer produced for
the whole sentence (espeak merges, expands and reorders: "$5" -> "five dollars", "e.g." ->
"for example"): each token is phonemized alone, and the two phoneme strings are aligned
character by character.
"""

from __future__ import annotations

import difflib
import re
import unicodedata
from collections.abc import Callable, Sequence
from typing import NamedTuple


class WordTiming(NamedTuple):
    start_char: int
    end_char: int
    start_sample: int
    end_sample: int


# ---- words of the text ----------------------------------------------------------------------

_TOKEN = re.compile(r"\S+")
_DOTTED = re.compile(r"[^\W\d]\.[^\W\d]")


def _is_punctuation(ch: str) -> bool:
    return unicodedata.category(ch)[0] == "P"


def is_han(ch: str) -> bool:
    return ("\u3400" <= ch <= "\u9fff" or "\uf900" <= ch <= "\ufaff"
            or "\U00020000" <= ch <= "\U0003134f")


def _pieces(text: str):
    """Whitespace-separated tokens, and inside them each Han character on its own: Chinese
    has no spaces, and its words are read character by character."""
    for match in _TOKEN.finditer(text):
        start, end = match.span()
        run = start
        for index in range(start, end):
            if is_han(text[index]):
                if run < index:
                    yield run, index
                yield index, index + 1
                run = index + 1
        if run < end:
            yield run, end


def word_tokens(text: str) -> list[tuple[int, int]]:
    """(start, end) of each word: whitespace-separated, each Han character alone, the
    surrounding punctuation trimmed; a token of punctuation only ("—", "...") is not a word."""
    found = []
    for start, end in _pieces(text):
        while start < end and _is_punctuation(text[start]):
            start += 1
        while end > start and _is_punctuation(text[end - 1]):
            end -= 1
        if text[end:end + 1] == "." and _DOTTED.search(text, start, end):
            end += 1  # an abbreviation's last dot: "e.g.", "U.S.A."
        if start < end:
            found.append((start, end))
    return found


def locate(pieces: Sequence[str], text: str) -> list[list[int]]:
    """For each piece made from `text` by splitting and re-joining whitespace, the index in
    `text` of each of its characters (-1 for a space the re-joining added)."""
    maps, cursor = [], 0
    for piece in pieces:
        index = [-1] * len(piece)
        for match in _TOKEN.finditer(piece):
            found = text.find(match.group(), cursor)
            if found < 0:  # not made from this text: leave unmapped
                continue
            for k in range(match.end() - match.start()):
                index[match.start() + k] = found + k
            cursor = found + len(match.group())
        maps.append(index)
    return maps


# ---- tracked strings ------------------------------------------------------------------------

Span = tuple[int, int]


class Tracked:
    """A string and, if tracked, the source span of each of its characters."""

    __slots__ = ("text", "spans")

    def __init__(self, text: str, spans: list[Span] | None = None) -> None:
        self.text = text
        self.spans = spans

    @classmethod
    def source(cls, text: str, track: bool) -> Tracked:
        return cls(text, [(i, i + 1) for i in range(len(text))] if track else None)

    def __len__(self) -> int:
        return len(self.text)

    def _span_of(self, start: int, end: int) -> Span:
        assert self.spans is not None
        if end > start:
            return self.spans[start][0], self.spans[end - 1][1]
        if start < len(self.spans):  # an insertion: at the next character's start
            first = self.spans[start][0]
            return first, first
        last = self.spans[-1][1] if self.spans else 0
        return last, last

    def sub(self, pattern: re.Pattern, replacement: str | Callable[[re.Match], str]
            ) -> Tracked:
        """pattern.sub; each replacement character spans the source of the whole match."""
        if self.spans is None:
            return Tracked(pattern.sub(replacement, self.text))
        parts: list[str] = []
        spans: list[Span] = []
        position = 0
        for match in pattern.finditer(self.text):
            start, end = match.span()
            parts.append(self.text[position:start])
            spans.extend(self.spans[position:start])
            new = replacement(match) if callable(replacement) else match.expand(replacement)
            parts.append(new)
            spans.extend([self._span_of(start, end)] * len(new))
            position = end
        parts.append(self.text[position:])
        spans.extend(self.spans[position:])
        return Tracked("".join(parts), spans)

    def map_chars(self, convert: Callable[[str], str]) -> Tracked:
        """Each character replaced by convert(ch) (any length, "" drops it)."""
        if self.spans is None:
            return Tracked("".join(convert(ch) for ch in self.text))
        parts, spans = [], []
        for ch, span in zip(self.text, self.spans, strict=True):
            new = convert(ch)
            parts.append(new)
            spans.extend([span] * len(new))
        return Tracked("".join(parts), spans)

    def strip(self) -> Tracked:
        stripped = self.text.strip()
        if stripped == self.text:
            return self
        start = len(self.text) - len(self.text.lstrip())
        return self[start:start + len(stripped)]

    def __getitem__(self, item: slice) -> Tracked:
        return Tracked(self.text[item], None if self.spans is None else self.spans[item])

    def span(self, start: int, end: int) -> Span:
        """The source span of characters [start, end)."""
        return self._span_of(start, end)


# ---- aligning phonemized tokens with a phonemized sentence ----------------------------------

_STRESS = str.maketrans("", "", "ˈˌ'-ːˑ")


def phoneme_key(phonemes: str) -> str:
    """What the alignment compares: no stress or length marks, no spaces or punctuation."""
    return "".join(ch for ch in phonemes.translate(_STRESS)
                   if not (ch.isspace() or _is_punctuation(ch)))


class PhonemeWord(NamedTuple):
    """A word of the sentence's phonemes: its compare key and where it is heard."""

    key: str
    start_sample: int
    end_sample: int


def align_tokens(token_keys: Sequence[str], words: Sequence[PhonemeWord]) -> list[Span]:
    """(start_sample, end_sample) per token, in order; every token gets a span.

    Each token's first phoneme is located in the sentence's phoneme string (through the
    matching blocks of a character alignment); the token starts at the word holding it and
    ends where the word before the next token's first word ends. Tokens that land in the
    same phoneme word (espeak read them as one) share its time by their key lengths."""
    if not token_keys:
        return []
    if not words:
        return [(0, 0)] * len(token_keys)
    sentence = "".join(w.key for w in words)
    owner = [index for index, w in enumerate(words) for _ in w.key]
    starts, position = [], 0
    for key in token_keys:
        starts.append(position)
        position += len(key)
    tokens = "".join(token_keys)
    blocks = difflib.SequenceMatcher(None, tokens, sentence, autojunk=False).get_matching_blocks()
    first_word = [_word_at(_map_position(p, blocks, len(sentence)), owner) for p in starts]
    # Monotonic: a token never starts before the one before it.
    for index in range(1, len(first_word)):
        first_word[index] = max(first_word[index], first_word[index - 1])
    return _spans(token_keys, first_word, words)


def _map_position(position: int, blocks: Sequence[difflib.Match], length: int) -> int:
    """Where `position` of the token string falls in the sentence string."""
    previous_a, previous_b = 0, 0
    for block in blocks:
        if block.a <= position < block.a + block.size:
            return block.b + position - block.a
        if block.a > position:
            # In a gap between matches: interpolate across it.
            gap_a = max(block.a - previous_a, 1)
            fraction = (position - previous_a) / gap_a
            return min(previous_b + round(fraction * (block.b - previous_b)), length - 1)
        previous_a, previous_b = block.a + block.size, block.b + block.size
    return max(length - 1, 0)


def _word_at(position: int, owner: Sequence[int]) -> int:
    return owner[min(max(position, 0), len(owner) - 1)] if owner else 0


def fill_gaps(spans: Sequence[Span | None], weights: Sequence[int]) -> list[Span]:
    """Every token a span: one the engine gave no time of shares the time of the nearest
    timed token before it (after it, for leading ones), split by weight (characters)."""
    out: list[Span | None] = list(spans)
    timed = [i for i, span in enumerate(out) if span is not None]
    if not timed:
        return [(0, 0)] * len(out)
    groups: list[list[int]] = []
    for index in range(len(out)):
        if out[index] is not None or not groups:
            groups.append([index])
        else:
            groups[-1].append(index)
    if out[groups[0][0]] is None:  # untimed tokens before the first timed one
        head = groups.pop(0)
        groups[0] = head + groups[0]
    result: list[Span] = [(0, 0)] * len(out)
    for group in groups:
        start, end = next(out[i] for i in group if out[i] is not None)  # type: ignore[misc]
        for i, span in zip(group, split_span(start, end, [weights[i] for i in group]),
                           strict=True):
            result[i] = span
    return result


def split_span(start: int, end: int, weights: Sequence[int]) -> list[Span]:
    """[start, end) cut into consecutive pieces in proportion to the weights (each >= 1)."""
    weights = [max(weight, 1) for weight in weights]
    total, done, pieces = sum(weights), 0, []
    for weight in weights:
        left = start + (end - start) * done // total
        done += weight
        pieces.append((left, start + (end - start) * done // total))
    return pieces


def _spans(token_keys: Sequence[str], first_word: list[int], words: Sequence[PhonemeWord]
           ) -> list[Span]:
    spans: list[Span] = []
    count = len(token_keys)
    index = 0
    while index < count:
        group_end = index + 1  # tokens starting in the same phoneme word
        while group_end < count and first_word[group_end] == first_word[index]:
            group_end += 1
        last_word = (first_word[group_end] - 1) if group_end < count else len(words) - 1
        last_word = max(last_word, first_word[index])
        start = words[first_word[index]].start_sample
        end = words[last_word].end_sample
        spans.extend(split_span(start, end, [len(token_keys[k]) for k in range(index, group_end)]))
        index = group_end
    return spans
