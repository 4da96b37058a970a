"""Chinese readings of numbers: cardinals, digit strings, decimals (pure Python, no deps)."""

from __future__ import annotations

DIGITS = "零一二三四五六七八九"
# Phone numbers, room and bus numbers read 1 as yao (幺), never yi.
PHONE_DIGITS = "零幺二三四五六七八九"
_SMALL_UNITS = ("千", "百", "十", "")
_BIG_UNITS = ((10**12, "万亿"), (10**8, "亿"), (10**4, "万"), (1, ""))
MAX_CARDINAL = 10**16 - 1


def _below_10000(value: int) -> str:
    """0 < value < 10000: 一千零五, 三百二十, 十一 is left as 一十一 (see cardinal)."""
    out, zero = "", False
    for digit, unit in zip(f"{value:04d}", _SMALL_UNITS, strict=True):
        if digit == "0":
            zero = bool(out)
            continue
        if zero:
            out += "零"
            zero = False
        out += DIGITS[int(digit)] + unit
    return out


def cardinal(value: int | str) -> str:
    """An integer 0..10^16-1 as a cardinal: 1005 -> 一千零五, 120000 -> 十二万."""
    number = int(value)
    if not 0 <= number <= MAX_CARDINAL:
        raise ValueError(f"{value} out of range for a cardinal reading")
    if number == 0:
        return "零"
    parts: list[str] = []
    gap = False  # a zero section (or leading zeros of one) since the last non-zero one
    for size, unit in _BIG_UNITS:
        section = number // size % 10**4
        if section == 0:
            gap = gap or bool(parts)
            continue
        if parts and (gap or section < 1000):
            parts.append("零")
        parts.append(_below_10000(section) + unit)
        gap = False
    text = "".join(parts)
    # 10-19 of any leading section are said 十X, not 一十X; a leading 2 before 千, 万 or
    # 亿 is 两 (两千, 两万三千).
    if text.startswith("一十"):
        return text[1:]
    return "两" + text[1:] if text[:2] in ("二千", "二万", "二亿") else text


def digits(text: str, phone: bool = False) -> str:
    """Digit by digit: 2024 -> 二零二四; phone=True reads 1 as 幺."""
    table = PHONE_DIGITS if phone else DIGITS
    return "".join(table[int(ch)] for ch in text if ch.isdigit())


def decimal(text: str) -> str:
    """"3.14" -> 三点一四; an integer part too long for a cardinal is read digit by digit."""
    whole, _, fraction = text.partition(".")
    head = cardinal(whole) if len(whole.lstrip("0") or "0") <= 16 else digits(whole)
    return head + ("点" + digits(fraction) if fraction else "")
