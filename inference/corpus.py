"""A text corpus the project writes itself: varied English sentences, no downloads.

Sentences come from hand-written templates filled from word lists with a fixed seed, in
six styles (news, announcements, dialogue, questions, numbers, instructions), so the same
call always returns the same text. Two disjoint sets are cut from it:

* `calibration_sentences()` - fed to static INT8 calibration (any style, digits allowed);
* `eval_sentences()` - held out for the quality gate (WER and spectral distance). They
  contain no digits, abbreviations or symbols, so the words Whisper should hear are exactly
  the words in the text, and text normalization stays trivial and consistent.

The two never share a sentence (`eval_sentences` is checked against the calibration pool).
"""

from __future__ import annotations

import random
from collections.abc import Callable

DEFAULT_SEED = 2024
CORPUS_SIZE = 600

_PEOPLE = [
    "the mayor",
    "a local teacher",
    "the head nurse",
    "our new neighbour",
    "the team captain",
    "a young engineer",
    "the museum director",
    "the bus driver",
    "my grandmother",
    "the chief scientist",
    "a retired pilot",
    "the park ranger",
    "the company founder",
    "a quiet student",
    "the night guard",
    "the lead singer",
]
_GROUPS = [
    "The city council",
    "Local officials",
    "The central bank",
    "A regional hospital",
    "The transport authority",
    "Researchers at the university",
    "The energy company",
    "Farmers in the valley",
    "The school board",
    "Emergency services",
    "The art museum",
    "A group of residents",
    "The weather service",
    "Several investors",
    "The football club",
    "The library committee",
    "Volunteers from the shelter",
    "The harbour authority",
]
_VERBS = [
    "announced",
    "approved",
    "rejected",
    "postponed",
    "reviewed",
    "defended",
    "criticized",
    "welcomed",
    "questioned",
    "published",
    "delayed",
    "supported",
]
_THINGS = [
    "a new budget for public parks",
    "plans for a second bridge",
    "the proposal to extend bus routes",
    "a report on rising housing costs",
    "changes to the recycling program",
    "a study of air quality near schools",
    "the decision to raise interest rates",
    "an agreement with neighbouring towns",
    "the schedule for road repairs",
    "a warning about heavy rain this weekend",
    "a plan to plant trees along the river",
    "new rules for electric scooters",
    "the design of the central station",
    "a survey of small businesses",
]
_WHEN = [
    "after a long debate",
    "late on Tuesday evening",
    "earlier this morning",
    "following complaints from residents",
    "in a statement released today",
    "despite objections from several members",
    "at the end of a busy week",
    "before the summer holidays",
    "without much discussion",
    "for the second time this year",
]
_PLACES = [
    "platform four",
    "the main entrance",
    "the north gate",
    "the second floor",
    "the front desk",
    "the east wing",
    "the car park",
    "the lecture hall",
    "the river bank",
    "the old market",
    "the garden centre",
    "the harbour",
]
_TRANSPORT = ["train", "bus", "ferry", "flight", "tram", "coach"]
_CITIES = [
    "Boston",
    "Chicago",
    "Denver",
    "Seattle",
    "Portland",
    "Austin",
    "Atlanta",
    "Phoenix",
    "Houston",
    "Dallas",
    "Miami",
    "Detroit",
]
_ADJECTIVES = [
    "quiet",
    "bright",
    "crowded",
    "cold",
    "beautiful",
    "noisy",
    "peaceful",
    "strange",
    "wonderful",
    "difficult",
    "careful",
    "gentle",
    "rapid",
    "sudden",
]
_NOUNS = [
    "garden",
    "kitchen",
    "meeting",
    "journey",
    "window",
    "library",
    "concert",
    "bridge",
    "village",
    "market",
    "forest",
    "harbour",
    "river",
    "mountain",
    "office",
    "station",
]
_ACTIVITIES = [
    "read a book",
    "go for a walk",
    "cook dinner",
    "call your sister",
    "finish the report",
    "water the plants",
    "visit the museum",
    "fix the old bicycle",
    "learn a new song",
    "clean the windows",
    "write a letter",
    "watch the sunset",
]
_FEELINGS = ["happy", "tired", "surprised", "worried", "excited", "relieved", "curious"]
_DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
_MONTHS = ["January", "March", "April", "June", "August", "October", "December"]


def _news(rng: random.Random) -> str:
    return f"{rng.choice(_GROUPS)} {rng.choice(_VERBS)} {rng.choice(_THINGS)} {rng.choice(_WHEN)}."


def _announcement(rng: random.Random) -> str:
    forms = [
        "The {t} to {c} will now depart from {p}.",
        "Attention please, the {t} to {c} has been delayed.",
        "Passengers for the {t} to {c} should wait near {p}.",
        "Please keep your belongings with you at all times near {p}.",
        "The {n} will close early today because of the weather.",
        "Visitors are kindly asked to leave {p} in the next few minutes.",
    ]
    return rng.choice(forms).format(
        t=rng.choice(_TRANSPORT),
        c=rng.choice(_CITIES),
        p=rng.choice(_PLACES),
        n=rng.choice(_NOUNS),
    )


def _dialogue(rng: random.Random) -> str:
    forms = [
        "I told {who} that the {n} was too {a} for us.",
        "Honestly, I think we should {act} before it gets late.",
        "She said the {n} felt {a}, and then she laughed.",
        "We were {f} when {who} walked into the {n}.",
        "Let me know if you want to {act} with me tomorrow.",
        "He smiled and said that the {n} had never looked so {a}.",
        "You should have seen the {n}, it was really {a}.",
    ]
    return rng.choice(forms).format(
        who=rng.choice(_PEOPLE),
        n=rng.choice(_NOUNS),
        a=rng.choice(_ADJECTIVES),
        act=rng.choice(_ACTIVITIES),
        f=rng.choice(_FEELINGS),
    )


def _question(rng: random.Random) -> str:
    forms = [
        "Do you know when the {t} to {c} leaves?",
        "Would you like to {act} this evening?",
        "Why was the {n} so {a} yesterday?",
        "Have you ever been to the {n} near {p}?",
        "Could you ask {who} where the {n} is?",
        "What time does the {n} open on {d}?",
        "Is it true that {who} wants to {act}?",
    ]
    return rng.choice(forms).format(
        t=rng.choice(_TRANSPORT),
        c=rng.choice(_CITIES),
        act=rng.choice(_ACTIVITIES),
        n=rng.choice(_NOUNS),
        a=rng.choice(_ADJECTIVES),
        p=rng.choice(_PLACES),
        who=rng.choice(_PEOPLE),
        d=rng.choice(_DAYS),
    )


def _numbers(rng: random.Random) -> str:
    forms = [
        "The {t} to {c} leaves at {h}:{m:02d} from platform {n}.",
        "Prices rose by {p}.{q} percent in {mo}, the highest in {y} years.",
        "About {big} people attended the concert on {d}.",
        "Call {a}{b}{c2} {d4} to book a table for {n}.",
        "The bridge is {big} metres long and {n} metres wide.",
        "Order number {big} was shipped on {mo} {n}, {year}.",
    ]
    return rng.choice(forms).format(
        t=rng.choice(_TRANSPORT),
        c=rng.choice(_CITIES),
        h=rng.randint(1, 12),
        m=rng.randint(0, 59),
        n=rng.randint(2, 30),
        p=rng.randint(1, 9),
        q=rng.randint(0, 9),
        mo=rng.choice(_MONTHS),
        y=rng.randint(2, 40),
        big=rng.randint(120, 98000),
        d=rng.choice(_DAYS),
        a=rng.randint(1, 9),
        b=rng.randint(0, 9),
        c2=rng.randint(0, 9),
        d4=rng.randint(1000, 9999),
        year=rng.randint(1990, 2030),
    )


def _instruction(rng: random.Random) -> str:
    forms = [
        "Before you leave, remember to {act}.",
        "First open the {n} door, then turn left at {p}.",
        "Take the {t} to {c} and ask for {who} at {p}.",
        "If the {n} is {a}, please come back on {d}.",
        "Press the green button and wait for the {a} signal.",
    ]
    return rng.choice(forms).format(
        act=rng.choice(_ACTIVITIES),
        n=rng.choice(_NOUNS),
        p=rng.choice(_PLACES),
        t=rng.choice(_TRANSPORT),
        c=rng.choice(_CITIES),
        who=rng.choice(_PEOPLE),
        a=rng.choice(_ADJECTIVES),
        d=rng.choice(_DAYS),
    )


def _long(rng: random.Random) -> str:
    """Two clauses joined: the long end of the length distribution."""
    first = _news(rng).rstrip(".")
    who, what, how = rng.choice(_PEOPLE), rng.choice(_NOUNS), rng.choice(_ADJECTIVES)
    return f"{first}, and {who} said the {what} was {how}."


_SHORT = [
    "Thank you.",
    "Good morning.",
    "Please wait.",
    "See you soon.",
    "Not today.",
    "That sounds great.",
    "Come in.",
    "Watch your step.",
    "Almost there.",
    "Well done.",
    "Of course.",
    "Right away.",
    "Mind the gap.",
    "Doors closing.",
    "Happy birthday.",
]

_STYLES: tuple[Callable[[random.Random], str], ...] = (
    _news,
    _announcement,
    _dialogue,
    _question,
    _numbers,
    _instruction,
    _long,
)


def corpus(size: int = CORPUS_SIZE, seed: int = DEFAULT_SEED) -> list[str]:
    """`size` distinct sentences, deterministic for a seed, styles interleaved."""
    rng = random.Random(seed)
    seen: set[str] = set()
    out: list[str] = []
    shorts = list(_SHORT)
    rng.shuffle(shorts)
    attempts = 0
    while len(out) < size:
        attempts += 1
        if attempts > size * 50:
            raise ValueError(f"cannot make {size} distinct sentences")
        if shorts and rng.random() < 0.05:
            text = shorts.pop()
        else:
            text = _STYLES[len(out) % len(_STYLES)](rng)
        if text not in seen:
            seen.add(text)
            out.append(text)
    return out


def has_digits(text: str) -> bool:
    return any(ch.isdigit() for ch in text)


def eval_sentences(count: int = 60, seed: int = DEFAULT_SEED) -> list[str]:
    """Held-out sentences without digits, never among the calibration sentences."""
    held_out = [t for t in corpus(seed=seed + 1) if not has_digits(t)]
    calibration = set(corpus(seed=seed))
    picked = [t for t in held_out if t not in calibration and len(t.split()) >= 3]
    if len(picked) < count:
        raise ValueError(f"only {len(picked)} evaluation sentences available, {count} asked")
    return picked[:count]


def calibration_sentences(count: int = 64, seed: int = DEFAULT_SEED) -> list[str]:
    """Calibration sentences (every style, digits included), disjoint from eval_sentences."""
    pool = corpus(seed=seed)
    if count > len(pool):
        raise ValueError(f"only {len(pool)} calibration sentences available, {count} asked")
    held = set(eval_sentences(seed=seed))
    return [t for t in pool if t not in held][:count]
