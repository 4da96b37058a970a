"""Request texts: the seed's payloads, never-repeating sentences and a Zipf-popular pool."""

from __future__ import annotations

import bisect
import itertools
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

# The seed's Locust test, verbatim; `stress/locustfile.py` imports them from here.
SEED_TEXTS: tuple[str, ...] = (
    "人工智能正在改变我们的生活方式。",
    "欢迎收听由IndexTTS-2-LLM生成的语音播报。",
    "今天的天气晴朗，适合外出散步。",
)
SEED_VOICE = "female"

TextSource = Callable[[], str]

_SUBJECTS = (
    "the city council",
    "a regional airline",
    "the national museum",
    "local farmers",
    "a research team",
    "the transport ministry",
    "volunteer firefighters",
    "the harbour authority",
    "a software startup",
    "the weather service",
    "school principals",
    "the central bank",
)
_VERBS = (
    "announced",
    "postponed",
    "approved",
    "reviewed",
    "celebrated",
    "questioned",
    "expanded",
    "completed",
    "proposed",
    "reported",
)
_OBJECTS = (
    "a new bridge project",
    "the spring festival",
    "plans for a solar farm",
    "an early warning system",
    "the river clean-up",
    "a record harvest",
    "longer library hours",
    "the night train service",
    "a study on sleep",
    "the budget for repairs",
)
_PLACES = (
    "Lisbon",
    "Osaka",
    "Nairobi",
    "Toronto",
    "Valparaiso",
    "Tromso",
    "Adelaide",
    "Krakow",
    "Tbilisi",
    "Cusco",
    "Hanoi",
    "Reykjavik",
)
_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def seed_texts(rng: random.Random) -> TextSource:
    """One of the seed's three payloads, uniformly at random, as its Locust task did."""
    return lambda: rng.choice(SEED_TEXTS)


def unique_texts(rng: random.Random, prefix: str = "Bulletin") -> TextSource:
    """News-style sentences that never repeat: a counter plus random words defeat any cache."""
    counter = itertools.count(1)
    return lambda: news_sentence(rng, f"{prefix} {next(counter)}")


def news_sentence(rng: random.Random, tag: str) -> str:
    """One short news item, about 100 characters (a few seconds of speech)."""
    return (
        f"{tag}: on {rng.choice(_DAYS)}, {rng.choice(_SUBJECTS)} in {rng.choice(_PLACES)} "
        f"{rng.choice(_VERBS)} {rng.choice(_OBJECTS)}, with {rng.randint(2, 999)} people attending."
    )


def text_pool(size: int, rng: random.Random) -> list[str]:
    """`size` distinct sentences; index 0 is the most popular under `zipf_texts`."""
    return [news_sentence(rng, f"Item {index + 1}") for index in range(size)]


def zipf_texts(pool: Sequence[str], exponent: float, rng: random.Random) -> TextSource:
    """Rank k (1-based) is drawn with probability proportional to 1 / k**exponent."""
    cumulative = list(itertools.accumulate(zipf_weights(len(pool), exponent)))
    total = cumulative[-1]
    return lambda: pool[bisect.bisect_right(cumulative, rng.random() * total)]


def zipf_weights(size: int, exponent: float) -> list[float]:
    return [1.0 / rank**exponent for rank in range(1, size + 1)]


@dataclass(frozen=True)
class BodyTemplate:
    """The JSON fields every request of a run shares; `text` is filled in per request."""

    voice: str | None = None
    speed: float | None = None
    audio_format: str | None = None
    stream: bool | None = None

    def fields(self) -> dict[str, Any]:
        candidates = {
            "voice": self.voice,
            "speed": self.speed,
            "format": self.audio_format,
            "stream": self.stream,
        }
        return {key: value for key, value in candidates.items() if value is not None}

    def encoder(self, texts: TextSource) -> Callable[[], bytes]:
        """A zero-argument callable producing the next request body as UTF-8 JSON."""
        shared = self.fields()
        return lambda: json.dumps({"text": texts(), **shared}, ensure_ascii=False).encode()
