"""Word timings on the front: from each unit's engine timings to the client's own text.

Three coordinate systems meet here:
- a unit's: the engine's words (inference/timing.WordTiming) index the unit's text and
  its audio;
- the request's: the normalized text (`SynthesisRequest.text`, what the cache key holds)
  and the whole response's samples. Flights convert units into this (`place_unit`), and
  the cache stores timings in it, so every client whose text normalizes the same shares
  them;
- the client's: the text exactly as sent (before NFKC, control and space folding). Only
  the response converts into it (`SourceMap`), so `text[start_char:end_char]` is the word.

Offsets are Unicode code points (Python's str indices); a JavaScript client converts
(the web page does: tts_server/static/app.js).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from inference.timing import Span, Tracked, WordTiming, locate, split_span, word_tokens
from tts_server.config import TextSettings
from tts_server.speech.text import CONTROL_CATEGORIES, WHITESPACE_RUN

_CRLF = re.compile(r"\r\n?")
_TAB = re.compile(r"\t")
_LINE_EDGE_SPACE = re.compile(r" ?\n ?")
CAPTION_FORMATS = ("srt", "vtt")
CAPTION_TYPES = {"srt": "application/x-subrip", "vtt": "text/vtt"}
_CUE_END = re.compile(r"[.!?…。！？；;]\W*$")
_CLAUSE_END = re.compile(r"[,:，、：—]\W*$")


# ---- the client's text ----------------------------------------------------------------------


def _clusters(text: str) -> Iterable[tuple[int, int]]:
    """A character and the combining marks (or conjoining jamo) that NFKC may fold into it."""
    start = 0
    for index in range(1, len(text) + 1):
        if index == len(text) or not _joins(text[index]):
            yield start, index
            start = index


def _joins(ch: str) -> bool:
    return unicodedata.combining(ch) > 0 or "\u1160" <= ch <= "\u11ff"


def _nfkc(text: Tracked) -> Tracked:
    whole = unicodedata.normalize("NFKC", text.text)
    parts, spans = [], []
    for start, end in _clusters(text.text):
        folded = unicodedata.normalize("NFKC", text.text[start:end])
        parts.append(folded)
        spans.extend([text.span(start, end)] * len(folded))
    if "".join(parts) != whole:  # folding across clusters: the whole text is one span
        return Tracked(whole, [(0, len(text))] * len(whole))
    return Tracked(whole, spans)


class SourceMap:
    """speech.text.normalize(source) with, for each of its characters, the span of
    `source` it came from."""

    def __init__(self, source: str) -> None:
        self.source = source
        text = _nfkc(Tracked.source(source, track=True))
        text = text.sub(_CRLF, "\n").sub(_TAB, " ")
        text = text.map_chars(
            lambda ch: ch if ch == "\n" or unicodedata.category(ch) not in CONTROL_CATEGORIES
            else "")
        text = text.sub(WHITESPACE_RUN, " ").sub(_LINE_EDGE_SPACE, "\n").strip()
        self.normalized = text.text
        self._tracked = text

    @classmethod
    def of_normalized(cls, text: str) -> SourceMap:
        """A map of a text that is its own source (a job's joined sentences)."""
        found = cls.__new__(cls)
        found.source = found.normalized = text
        found._tracked = Tracked.source(text, track=True)
        return found

    def span(self, start: int, end: int) -> Span:
        """The source span of normalized characters [start, end)."""
        return self._tracked.span(start, end)


# ---- units into the request -----------------------------------------------------------------


def unit_maps(text: str, units: Sequence[str]) -> list[list[int]]:
    """For each unit, the index in the normalized text of each of its characters."""
    return locate(units, text)


def place_unit(words: Sequence[WordTiming], unit_map: Sequence[int], sample_offset: int,
               rate_ratio: float = 1.0) -> tuple[WordTiming, ...]:
    """A unit's words in the request's coordinates: characters of the normalized text,
    samples of the whole response (at the voice's rate: `rate_ratio` rescales audio a
    fallback engine made at another rate)."""
    placed = []
    for word in words:
        if not 0 <= word.start_char < word.end_char <= len(unit_map):
            continue
        first, last = unit_map[word.start_char], unit_map[word.end_char - 1]
        if first < 0 or last < first:
            continue
        placed.append(WordTiming(first, last + 1,
                                 sample_offset + round(word.start_sample * rate_ratio),
                                 sample_offset + round(word.end_sample * rate_ratio)))
    return tuple(placed)


def estimated_words(unit: str, samples: int) -> tuple[WordTiming, ...]:
    """For an engine that gives no timings (a remote one): the unit's words spread over its
    audio by their length in characters. Marked as estimated where shown."""
    tokens = word_tokens(unit)
    spans = split_span(0, samples, [end - start for start, end in tokens])
    return tuple(WordTiming(start, end, left, right)
                 for (start, end), (left, right) in zip(tokens, spans, strict=True))


# ---- the response ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PublicWord:
    text: str
    start_char: int
    end_char: int
    start_s: float
    end_s: float

    def as_dict(self) -> dict[str, object]:
        return {"text": self.text, "start_char": self.start_char, "end_char": self.end_char,
                "start_s": self.start_s, "end_s": self.end_s}


def public_words(words: Iterable[WordTiming], source: SourceMap, sample_rate: int
                 ) -> list[PublicWord]:
    """Words in the client's text and in seconds, in order of time."""
    out = []
    for word in sorted(words, key=lambda w: (w.start_sample, w.start_char)):
        start, end = source.span(word.start_char, word.end_char)
        out.append(PublicWord(source.source[start:end], start, end,
                              round(word.start_sample / sample_rate, 3),
                              round(word.end_sample / sample_rate, 3)))
    return out


@dataclass(frozen=True)
class Cue:
    start_s: float
    end_s: float
    text: str


def cues(words: Sequence[PublicWord], source: str, limits: TextSettings) -> list[Cue]:
    """Caption cues: runs of words cut at sentence ends, and before caption_max_chars or
    caption_max_s at the last clause mark (a comma) if the run has one; a cue's text is
    the client's own, punctuation included, lines folded."""
    found: list[Cue] = []
    group: list[PublicWord] = []

    def emit(run: list[PublicWord]) -> None:
        end = _text_end(source, run[-1].end_char)
        text = " ".join(source[run[0].start_char:end].split())
        found.append(Cue(run[0].start_s, max(run[-1].end_s, run[0].start_s), text))

    for word in words:
        if group and (word.end_char - group[0].start_char > limits.caption_max_chars
                      or word.end_s - group[0].start_s > limits.caption_max_s):
            cut = _last_clause_end(group, source)
            emit(group[:cut])
            group = group[cut:]
        group.append(word)
        if _CUE_END.search(_trailing(source, word)):
            emit(group)
            group = []
    if group:
        emit(group)
    return found


def _trailing(source: str, word: PublicWord) -> str:
    return source[word.start_char:_text_end(source, word.end_char)]


def _last_clause_end(group: list[PublicWord], source: str) -> int:
    """How many words of the group go into the cue: through the last one followed by a
    clause mark, else all of them."""
    for index in range(len(group) - 1, 0, -1):
        if _CLAUSE_END.search(_trailing(source, group[index - 1])):
            return index
    return len(group)


def _text_end(source: str, end: int) -> int:
    """The word's end with the punctuation right after it ("world!", "好。")."""
    while end < len(source) and unicodedata.category(source[end])[0] == "P":
        end += 1
    return end


def _clock(seconds: float, separator: str) -> str:
    millis = round(seconds * 1000)
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def _vtt_text(text: str) -> str:
    """WebVTT cue text: & and < escaped (they start entities and tags), no "-->"."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace("-->", "->")


def to_vtt(cue_list: Sequence[Cue]) -> str:
    body = [f"{_clock(c.start_s, '.')} --> {_clock(c.end_s, '.')}\n{_vtt_text(c.text)}\n"
            for c in cue_list]
    return "WEBVTT\n\n" + "\n".join(body)


def to_srt(cue_list: Sequence[Cue]) -> str:
    return "\n".join(f"{index}\n{_clock(c.start_s, ',')} --> {_clock(c.end_s, ',')}\n{c.text}\n"
                     for index, c in enumerate(cue_list, 1))


def captions(words: Sequence[PublicWord], source: str, caption_format: str,
             limits: TextSettings) -> str:
    cue_list = cues(words, source, limits)
    return to_vtt(cue_list) if caption_format == "vtt" else to_srt(cue_list)
