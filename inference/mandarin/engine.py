"""The FastSpeech2 + MB-MelGAN engine: text -> phoneme-id chunks -> mel -> 24 kHz audio.

Same shape as inference.voice.Voice (load, sample_rate, synthesize_unit, warm_up) and, like
it, free of HTTP and IPC. VoiceFiles convention: model_path is the acoustic ONNX file,
config_path the build's manifest.json (the vocoder and the symbol table sit beside it).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ..options import SynthesisOptions, ThreadPlan, VoiceError
from ..protocol import VoiceFiles
from ..sessions import make_session
from ..timing import WordTiming
from . import SAMPLE_RATE, frontend
from .frontend import Chunk, SymbolTable

LOG = logging.getLogger("tts.inference.mandarin.engine")
MAX_INT16 = 32767.0
MIN_SPEED = 0.25
MAX_SPEED = 4.0
HOP = 300
# The decoder's position table: a run of more frames fails (Gather index out of range).
MAX_FRAMES = 2048
WARMUP_TEXT = "语音合成系统，正在预热。"
# What onnxruntime raises when a run fails (the pybind classes derive from Exception only).
_ORT_ERRORS = (RuntimeError, ort.capi.onnxruntime_pybind11_state.Fail,
               ort.capi.onnxruntime_pybind11_state.InvalidArgument,
               ort.capi.onnxruntime_pybind11_state.RuntimeException)


def speed_ratio(speed: float) -> float:
    """FastSpeech2 multiplies durations by speed_ratios: server speed s -> 1/s, clamped."""
    if not (isinstance(speed, int | float) and math.isfinite(speed) and speed > 0):
        raise VoiceError(f"speed must be a positive number, got {speed!r}")
    return 1.0 / min(max(float(speed), MIN_SPEED), MAX_SPEED)


class _Sessions:
    """The acoustic model and the vocoder at one thread count."""

    def __init__(self, acoustic: str, vocoder: str, threads: int, plan: ThreadPlan) -> None:
        self.acoustic = make_session(acoustic, threads, plan)
        self.vocoder = make_session(vocoder, threads, plan)


class MandarinVoice:
    """A loaded zh-baker voice; one session pair, plus a wide pair when solo_threads > 1."""

    sample_rate = SAMPLE_RATE

    def __init__(self, name: str, table: SymbolTable, sessions: _Sessions,
                 solo: _Sessions | None = None) -> None:
        self.name = name
        self.table = table
        self._sessions = sessions
        self._solo = solo

    @classmethod
    def load(cls, files: VoiceFiles, plan: ThreadPlan) -> MandarinVoice:
        manifest_path = Path(files.config_path)
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        folder = manifest_path.parent
        vocoder = str(folder / manifest["outputs"]["vocoder"]["file"])
        table = SymbolTable.load(folder / manifest["outputs"]["mapper"]["file"])
        sessions = _Sessions(files.model_path, vocoder, plan.intra_op_threads, plan)
        solo = None
        if plan.solo_threads > 1:
            solo = _Sessions(files.model_path, vocoder, plan.solo_threads, plan)
        return cls(files.name, table, sessions, solo)

    def _check_speaker(self, speaker_id: int | None) -> None:
        if speaker_id not in (None, 0):
            raise VoiceError(f"voice {self.name} has a single speaker")

    def acoustic(self, ids: list[int], ratio: float, solo: bool = False):
        """(durations [N] in frames, mel [1, frames, 80]) of one id sequence."""
        sessions = self._solo if solo and self._solo else self._sessions
        one = np.array([1.0], dtype=np.float32)
        feed = {
            "input_ids": np.array([ids], dtype=np.int32),
            "speaker_ids": np.array([0], dtype=np.int32),
            "speed_ratios": np.array([ratio], dtype=np.float32),
            "f0_ratios": one,
            "energy_ratios": one,
        }
        _, mel, durations = sessions.acoustic.run(None, feed)[:3]
        return durations.reshape(-1), mel

    def vocode(self, mel: np.ndarray, solo: bool = False) -> np.ndarray:
        sessions = self._solo if solo and self._solo else self._sessions
        return sessions.vocoder.run(None, {"mels": mel})[0].reshape(-1)

    def run_chunk(self, syllables: tuple[str, ...], ratio: float, solo: bool) -> np.ndarray:
        """Float audio of one chunk; halved and retried if it overruns the position table."""
        return self.run_chunk_timed(syllables, ratio, solo)[0]

    def run_chunk_timed(self, syllables: tuple[str, ...], ratio: float, solo: bool
                        ) -> tuple[np.ndarray, list[tuple[int, int] | None]]:
        """run_chunk(), and the samples of each syllable in its audio (None: not spoken).

        A syllable's time is that of its phones' frames (the model's own durations) and of
        the "#0" joint before it: the model gives the joint 75-125 ms of real audio, mostly
        the onset of the next syllable (measured against forced alignment: starts 77 ms
        late with the joint on the syllable before, 25 ms with it on the one after;
        docs/word_timings.md). The vocoder makes HOP samples per frame."""
        ids, positions = self.table.ids_with_positions(list(syllables))
        try:
            durations, mel = self.acoustic(ids, ratio, solo)
        except _ORT_ERRORS as exc:
            if len(syllables) < 2:
                raise
            LOG.info("chunk of %d syllables failed (%s): splitting it", len(syllables),
                     type(exc).__name__)
            half = len(syllables) // 2
            first, first_spans = self.run_chunk_timed(syllables[:half], ratio, solo)
            second, second_spans = self.run_chunk_timed(syllables[half:], ratio, solo)
            shift = len(first)
            moved = [None if s is None else (s[0] + shift, s[1] + shift) for s in second_spans]
            return np.concatenate([first, second]), [*first_spans, *moved]
        audio = self.vocode(mel, solo)
        ends = np.cumsum(np.maximum(np.round(durations), 0)) * HOP
        spans = []
        joint = self.table.symbol_to_id.get("#0")
        for position in positions:
            if position is None:
                spans.append(None)
                continue
            first, last = position
            if first > 1 and ids[first - 1] == joint:
                first -= 1
            start = int(ends[first - 1]) if first > 0 else 0
            spans.append((min(start, len(audio)), min(int(ends[last]), len(audio))))
        return audio, spans

    def synthesize_float(self, text: str, options: SynthesisOptions) -> np.ndarray:
        """float32 audio in [-1, 1] of a unit: its chunks with their pauses between them."""
        self._check_speaker(options.speaker_id)
        ratio = speed_ratio(options.speed)
        parts: list[np.ndarray] = []
        for chunk in frontend.chunks(text, 1.0 / ratio):
            parts.append(self.run_chunk(chunk.syllables, ratio, options.solo))
            parts.append(self._silence(chunk))
        if not parts:
            return np.zeros(0, dtype=np.float32)
        return np.clip(np.concatenate(parts), -1.0, 1.0).astype(np.float32)

    def synthesize_timed(self, text: str, options: SynthesisOptions
                         ) -> tuple[np.ndarray, list[WordTiming]]:
        """synthesize_unit()'s audio and its words: each Han character, each Latin token,
        each number or symbol as written in `text` (its syllables merged)."""
        self._check_speaker(options.speaker_id)
        ratio = speed_ratio(options.speed)
        parts: list[np.ndarray] = []
        heard: list[tuple[tuple[int, int], int, int]] = []  # source span, samples
        offset = 0
        for chunk in frontend.chunks(text, 1.0 / ratio, track=True):
            audio, spans = self.run_chunk_timed(chunk.syllables, ratio, options.solo)
            for source, samples in zip(chunk.spans, spans, strict=True):
                if samples is not None:
                    heard.append((source, offset + samples[0], offset + samples[1]))
            silence = self._silence(chunk)
            parts += [audio, silence]
            offset += len(audio) + len(silence)
        audio = np.clip(np.concatenate(parts), -1.0, 1.0) if parts else np.zeros(0, np.float32)
        return (audio * MAX_INT16).astype(np.int16), _merge_words(heard, text)

    def _silence(self, chunk: Chunk) -> np.ndarray:
        return np.zeros(round(chunk.pause_s * self.sample_rate), dtype=np.float32)

    def synthesize_unit(self, text: str, options: SynthesisOptions) -> np.ndarray:
        """int16 PCM, like the other engines (the worker writes it to the slab as is)."""
        return (self.synthesize_float(text, options) * MAX_INT16).astype(np.int16)

    def warm_up(self) -> None:
        self.synthesize_unit(WARMUP_TEXT, SynthesisOptions())
        if self._solo is not None:
            self.synthesize_unit(WARMUP_TEXT, SynthesisOptions(solo=True))


def _merge_words(heard: list[tuple[tuple[int, int], int, int]], text: str
                 ) -> list[WordTiming]:
    """Consecutive syllables reading the same source span are one word ("10:30"), and so
    are the spelled letters of one Latin word ("TTS")."""
    words: list[WordTiming] = []
    previous: tuple[int, int] | None = None
    for (start_char, end_char), start, end in heard:
        last = words[-1] if words else None
        same = previous == (start_char, end_char)
        spelled = (last is not None and last.end_char == start_char
                   and _latin(text[last.start_char:end_char]))
        previous = (start_char, end_char)
        if last is not None and (same or spelled):
            words[-1] = last._replace(end_char=max(last.end_char, end_char), end_sample=end)
        elif start_char < end_char:
            words.append(WordTiming(start_char, end_char, start, end))
    return words


def _latin(word: str) -> bool:
    return word.isascii() and word.isalpha()
