"""Engine-neutral text facts: which language a text is in, and what is worth speaking.

Both sides use it: the front routes a request by language and cuts its units, and the
engines check their own pieces, so neither has to import the other's code.
"""

from __future__ import annotations

import re
from typing import Literal

# CJK Unified Ideographs and extensions A-H, compatibility ideographs, and 〇.
HAN = re.compile(
    "[\u3007\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f\U00030000-\U0003134f]"
)


def detect_language(text: str) -> Literal["zh", "en"]:
    """"zh" if the text holds any Han ideograph, else "en".

    Any, not a majority: Mandarin text routinely embeds Latin names ("欢迎收听由IndexTTS-2-LLM
    生成的语音播报。" has about as many Latin letters as Han characters), and espeak-ng's
    Mandarin voice reads Latin words as English, while the English voice cannot read Han at
    all (it spells out code points). Digits and punctuation alone are "en".
    """
    return "zh" if HAN.search(text) else "en"


def is_speakable(text: str) -> bool:
    """A letter, ideograph or digit somewhere: punctuation, symbols and spaces alone make
    no sound (a "..." or "—" unit would synthesize to zero samples)."""
    return any(ch.isalnum() for ch in text)
