"""Text front-end: normalize, then cut into speakable sentence units of a bounded length.

Units are what the pool schedules: one long text runs on several workers at once and
its audio is reassembled in order. A piece with nothing to say ("...", "—", "。") never
becomes a unit: it would synthesize to no audio at all.

The lead clause: when a text's first sentence is Chinese and has a clause mark (，、；：
after a Han character), its first clause is a unit of its own. A streamed response's
first audio leaves when its first unit is done, and the Mandarin engine runs a sentence
as one model run per clause anyway (so the cut costs no prosody); the pause the engine
would have put after that clause is added after the unit by the synthesizer
(`synthesizer.unit_gap_s`), so the audio is the same as without the cut.
"""

from __future__ import annotations

import re
import unicodedata

from inference.text import HAN, is_speakable

# Sentence ends: Latin and CJK terminators, with closing quotes/brackets kept on the left.
_SENTENCE_END = re.compile(r"(?<=[.!?…。！？；])[\"'”’)\]」』]*\s+|(?<=[。！？；])|\n\s*\n|\n")
# Clause boundaries for over-long sentences.
_CLAUSE_END = re.compile(r"(?<=[,;:，、；：—])\s*")
# The end of a text's first clause: a clause mark after a Han character, with the run of
# marks, dashes, quotes and brackets after it (the engine pauses once for such a run).
_LEAD_CLAUSE_END = re.compile(
    HAN.pattern + r"[,;:、][,;:、—\s\"'“”‘’()\[\]【】《》〈〉「」『』]*"
)
# Abbreviations whose dot does not end a sentence.
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof st sr jr vs etc e.g i.e no approx dept est fig inc ltd co corp".split()
)
CONTROL_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn"})
WHITESPACE_RUN = re.compile(r"[^\S\n]+")


def normalize(text: str) -> str:
    """NFKC, control characters dropped (newlines kept as boundaries), spaces folded."""
    text = unicodedata.normalize("NFKC", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\t", " ")
    text = "".join(
        ch for ch in text if ch == "\n" or unicodedata.category(ch) not in CONTROL_CATEGORIES
    )
    text = WHITESPACE_RUN.sub(" ", text)
    return "\n".join(line.strip() for line in text.split("\n")).strip()


def _ends_with_abbreviation(piece: str) -> bool:
    words = piece.rstrip().split()
    return bool(words) and words[-1].rstrip(".").lower() in _ABBREVIATIONS


def split_sentences(text: str) -> list[str]:
    pieces = [p.strip() for p in _SENTENCE_END.split(text)]
    sentences: list[str] = []
    for piece in pieces:
        if not piece:
            continue
        if sentences and _ends_with_abbreviation(sentences[-1]):
            sentences[-1] = f"{sentences[-1]} {piece}"
        else:
            sentences.append(piece)
    return sentences


def _split_hard(text: str, limit: int) -> list[str]:
    """Cut at the last space before the limit, or at the limit when there is none (CJK)."""
    out = []
    while len(text) > limit:
        cut = text.rfind(" ", 0, limit + 1)
        cut = cut if cut > 0 else limit
        out.append(text[:cut].strip())
        text = text[cut:].strip()
    if text:
        out.append(text)
    return out


def _pack(parts: list[str], limit: int) -> list[str]:
    """Greedily join clauses back together while they fit."""
    chunks: list[str] = []
    for part in parts:
        for piece in _split_hard(part, limit) if len(part) > limit else [part]:
            joiner = "" if chunks and _is_cjk(chunks[-1][-1:]) else " "
            if chunks and len(chunks[-1]) + len(joiner) + len(piece) <= limit:
                chunks[-1] = f"{chunks[-1]}{joiner}{piece}"
            else:
                chunks.append(piece)
    return chunks


def _is_cjk(ch: str) -> bool:
    return bool(ch) and (
        "\u3000" <= ch <= "\u9fff" or "\uf900" <= ch <= "\ufaff" or "\uff00" <= ch <= "\uffef"
    )


def lead_clause(sentence: str) -> tuple[str, str] | None:
    """(first clause, the rest) of a Chinese sentence, or None: no clause mark after a Han
    character, or nothing speakable after it."""
    match = _LEAD_CLAUSE_END.search(sentence)
    if match is None:
        return None
    head, rest = sentence[: match.end()].strip(), sentence[match.end():].strip()
    return (head, rest) if is_speakable(rest) else None


def _sentence_units(sentence: str, max_chunk_chars: int) -> list[str]:
    if len(sentence) <= max_chunk_chars:
        return [sentence]
    clauses = [c for c in _CLAUSE_END.split(sentence) if c.strip()]
    return _pack(clauses, max_chunk_chars)


def split_units(text: str, max_chunk_chars: int, lead: bool = True) -> list[str]:
    """Normalized text -> speakable sentence units of at most max_chunk_chars characters.

    lead: the text's first speakable sentence gives its first clause a unit of its own
    (see the module's note). False for text that continues one already cut (textstream:
    only the first piece of a stream starts a text)."""
    units: list[str] = []
    for sentence in split_sentences(text):
        pieces: tuple[str, ...] = (sentence,)
        if lead and is_speakable(sentence):
            lead = False
            pieces = lead_clause(sentence) or pieces
        for piece in pieces:
            units.extend(_sentence_units(piece, max_chunk_chars))
    return [unit for unit in units if is_speakable(unit)]
