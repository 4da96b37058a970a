"""A job's captions: every sentence's word timings, stored as it finishes, made into one
SRT or WebVTT file on request (GET /api/tts/jobs/{id}/captions?format=vtt).

Each sentence is stored with its own words (in the sentence's text and audio) and its
sample count, so a job resumed by another instance still has every sentence's timings; the
file places them one after another, as the job's audio does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import msgpack

from inference.timing import WordTiming
from tts_server.config import TextSettings
from tts_server.speech.timings import SourceMap, captions, public_words

UNIT_SEPARATOR = " "


def encode_unit_words(samples: int, words: Sequence[WordTiming]) -> bytes:
    return msgpack.packb({"samples": samples, "words": [list(w) for w in words]})


def _decode(data: bytes) -> tuple[int, list[WordTiming]]:
    try:
        body = msgpack.unpackb(data)
        return int(body["samples"]), [WordTiming(*w) for w in body["words"]]
    except Exception:  # stored before timings existed, or damaged: the sentence has none
        return 0, []


def job_captions(units: Sequence[str], stored: Mapping[int, bytes], sample_rate: int,
                 caption_format: str, limits: TextSettings) -> str:
    """The caption file of the job's sentences, in order."""
    text = UNIT_SEPARATOR.join(units)
    words: list[WordTiming] = []
    char_offset = sample_offset = 0
    for index, unit in enumerate(units):
        samples, unit_words = _decode(stored.get(index, b""))
        for word in unit_words:
            words.append(WordTiming(word.start_char + char_offset, word.end_char + char_offset,
                                    word.start_sample + sample_offset,
                                    word.end_sample + sample_offset))
        char_offset += len(unit) + len(UNIT_SEPARATOR)
        sample_offset += samples
    source = SourceMap.of_normalized(text)
    return captions(public_words(words, source, sample_rate), text, caption_format, limits)
