"""The Piper/VITS engine: one voice, its ONNX sessions, text -> phonemes -> ids -> audio.

Knows nothing about HTTP or IPC; a worker process holds one Voice per configured voice.
"""

from __future__ import annotations

import json
import logging
import unicodedata
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
from piper.config import PiperConfig
from piper.voice import PiperVoice

from .options import SynthesisOptions, ThreadPlan, VoiceError
from .protocol import VoiceFiles
from .sessions import make_session
from .timing import PhonemeWord, WordTiming, align_tokens, phoneme_key, word_tokens

__all__ = ["SynthesisOptions", "ThreadPlan", "Voice", "VoiceError", "make_session"]

LOG = logging.getLogger("tts.inference.voice")
MAX_INT16 = 32767.0
WARMUP_TEXT = "Warming up the voice."
# Every Piper word time is moved this much earlier. The model's durations put a word's
# start and end 46-55 ms (median) after Whisper base's; on the 30 bench sentences
# (stress/timing_corpus.ENGLISH) a constant shift of 20-30 ms minimized both, and this is
# the middle of it, measured on those and checked on sentences never used to choose it
# (CHECK_EN). It is kept below Whisper's own lead over exact word positions (it starts
# espeak-ng's words ~32 ms before espeak's own events): docs/word_timings.md.
WORD_TIMING_LEAD_S = 0.025


def aligned_model_bytes(model_path: str | Path) -> bytes:
    """The model with its phoneme durations (the `Ceil` tensor) as a second output.

    The extra output is a tensor the graph computes anyway: the audio is the same, and a
    run that wants word timings (or a padded batch its items' lengths) reads it."""
    import onnx
    from piper.patch_voice_with_alignment import add_alignment_output

    model = onnx.load(str(model_path))
    if len(model.graph.output) == 1:
        add_alignment_output(model)
    return model.SerializeToString()


def read_voice_config(config_path: str | Path) -> dict:
    with open(config_path, encoding="utf-8") as handle:
        return json.load(handle)


class Voice:
    """A loaded Piper voice with a single-threaded session and an optional wide one."""

    def __init__(
        self,
        name: str,
        config: PiperConfig,
        session: ort.InferenceSession,
        solo_session: ort.InferenceSession | None = None,
    ) -> None:
        self.name = name
        self.config = config
        self._session = session
        self._solo_session = solo_session
        # piper's PiperVoice does the phonemization (espeak-ng and the other phoneme
        # types it supports); its own session is never run.
        self._phonemizer = PiperVoice(session=session, config=config)

    @classmethod
    def load(cls, files: VoiceFiles, plan: ThreadPlan) -> Voice:
        config = PiperConfig.from_dict(read_voice_config(files.config_path))
        model_bytes = aligned_model_bytes(files.model_path)
        session = make_session(model_bytes, plan.intra_op_threads, plan)
        solo = make_session(model_bytes, plan.solo_threads, plan) if plan.solo_threads > 1 else None
        return cls(files.name, config, session, solo)

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    def phonemize(self, text: str) -> list[list[str]]:
        return [p for p in self._phonemizer.phonemize(text) if p]

    def to_ids(self, phonemes: list[str]) -> list[int]:
        return self._phonemizer.phonemes_to_ids(phonemes)

    def scales(self, options: SynthesisOptions) -> np.ndarray:
        if not options.speed > 0:
            raise VoiceError(f"speed must be > 0, got {options.speed}")
        noise = options.noise_scale if options.noise_scale is not None else self.config.noise_scale
        noise_w = options.noise_w_scale
        if noise_w is None:
            noise_w = self.config.noise_w_scale
        length = self.config.length_scale / options.speed
        return np.array([noise, length, noise_w], dtype=np.float32)

    def speaker_input(self, speaker_id: int | None) -> np.ndarray | None:
        if self.config.num_speakers <= 1:
            if speaker_id not in (None, 0):
                raise VoiceError(f"voice {self.name} has a single speaker")
            return None
        speaker = 0 if speaker_id is None else speaker_id
        if not 0 <= speaker < self.config.num_speakers:
            raise VoiceError(f"speaker id {speaker} out of range for voice {self.name}")
        return np.array([speaker], dtype=np.int64)

    def infer(self, phoneme_ids: list[int], options: SynthesisOptions) -> np.ndarray:
        """One sentence of phoneme ids -> float32 audio in [-1, 1], peak-normalized like piper."""
        return self.infer_with_frames(phoneme_ids, options)[0]

    def infer_with_frames(
        self, phoneme_ids: list[int], options: SynthesisOptions
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Audio as infer(), and the decoder frames of each phoneme id (None if the model
        has no duration output)."""
        inputs: dict[str, np.ndarray] = {
            "input": np.array([phoneme_ids], dtype=np.int64),
            "input_lengths": np.array([len(phoneme_ids)], dtype=np.int64),
            "scales": self.scales(options),
        }
        speaker = self.speaker_input(options.speaker_id)
        if speaker is not None:
            inputs["sid"] = speaker
        session = self._solo_session if options.solo and self._solo_session else self._session
        outputs = session.run(None, inputs)
        audio = outputs[0].squeeze().astype(np.float32)
        frames = outputs[1].reshape(-1) if len(outputs) > 1 else None
        peak = float(np.max(np.abs(audio))) if audio.size else 0.0
        if peak < 1e-8:
            return np.zeros_like(audio), frames
        return np.clip(audio / peak, -1.0, 1.0), frames

    def ids_with_positions(self, phonemes: list[str]) -> tuple[list[int], list[int]]:
        """to_ids(phonemes), and the id index of each phoneme (-1: not in the id map)."""
        id_map = self.config.phoneme_id_map
        pad = list(id_map.get("_", []))
        ids = [*id_map.get("^", []), *pad]
        positions = []
        for phoneme in phonemes:
            if phoneme not in id_map:
                positions.append(-1)
                continue
            positions.append(len(ids))
            ids.extend(id_map[phoneme])
            ids.extend(pad)
        ids.extend(id_map.get("$", []))
        return ids, positions

    def synthesize(self, text: str, options: SynthesisOptions) -> Iterator[np.ndarray]:
        """Yield int16 audio, one array per sentence espeak finds in `text`."""
        for phonemes in self.phonemize(text):
            audio = self.infer(self.to_ids(phonemes), options)
            yield (audio * MAX_INT16).astype(np.int16)

    def synthesize_unit(self, text: str, options: SynthesisOptions) -> np.ndarray:
        parts = list(self.synthesize(text, options))
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int16)

    def synthesize_timed(
        self, text: str, options: SynthesisOptions
    ) -> tuple[np.ndarray, list[WordTiming]]:
        """synthesize_unit's audio and the timing of every word of `text` in it."""
        parts, words, offset = [], [], 0
        for phonemes in self.phonemize(text):
            ids, positions = self.ids_with_positions(phonemes)
            audio, frames = self.infer_with_frames(ids, options)
            if frames is None:
                raise VoiceError(f"voice {self.name} has no duration output: no timings")
            words.extend(phoneme_words(phonemes, positions, frames, len(audio), offset))
            parts.append((audio * MAX_INT16).astype(np.int16))
            offset += len(audio)
        audio = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int16)
        return audio, self.word_timings(text, words)

    def word_timings(self, text: str, words: list[PhonemeWord]) -> list[WordTiming]:
        """The words of `text` placed on the phoneme words of its synthesis (and moved
        WORD_TIMING_LEAD_S earlier)."""
        tokens = word_tokens(text)
        keys = [self.phoneme_key(text[start:end]) for start, end in tokens]
        spans = align_tokens(keys, words)
        lead = round(WORD_TIMING_LEAD_S * self.config.sample_rate)
        return [WordTiming(a, b, max(s - lead, 0), max(e - lead, 0))
                for (a, b), (s, e) in zip(tokens, spans, strict=True)]

    def phoneme_key(self, word: str) -> str:
        return phoneme_key("".join("".join(p) for p in self.phonemize(word)))

    def warm_up(self) -> None:
        self.synthesize_unit(WARMUP_TEXT, SynthesisOptions())
        if self._solo_session is not None:
            self.synthesize_unit(WARMUP_TEXT, SynthesisOptions(solo=True))


def phoneme_words(
    phonemes: list[str], positions: list[int], frames: np.ndarray, samples: int, offset: int
) -> list[PhonemeWord]:
    """The sentence's phoneme words (runs between spaces and punctuation) and their samples.

    A word ends with its last phoneme's id. The ids between two words (pad, space, pad)
    belong to the second: that is where its first sound builds up (the closure of a /t/),
    and word starts measured against forced alignment came out ~100 ms late without them
    (docs/word_timings.md). After punctuation, a word starts at its first phoneme: the
    ids before it are the pause. The samples per frame come from this run (its audio is
    exactly frames x hop long)."""
    total = float(frames.sum())
    per_frame = samples / total if total > 0 else 0.0
    ends = np.cumsum(frames)  # frames up to and including each id
    words: list[PhonemeWord] = []
    key, first, last = [], -1, -1
    previous_last, after_pause = -1, True
    for phoneme, position in [*zip(phonemes, positions, strict=True), (" ", -1)]:
        punctuation = bool(phoneme) and unicodedata.category(phoneme[0])[0] == "P"
        if phoneme.isspace() or punctuation:
            if key and first >= 0:
                if after_pause or previous_last < 0:
                    start = ends[first - 1] if first > 0 else 0.0
                else:
                    start = ends[previous_last]
                words.append(PhonemeWord(phoneme_key("".join(key)),
                                         offset + round(float(start) * per_frame),
                                         offset + round(float(ends[last]) * per_frame)))
                previous_last, after_pause = last, False
            after_pause = after_pause or punctuation
            key, first, last = [], -1, -1
            continue
        key.append(phoneme)
        if position >= 0:
            first = position if first < 0 else first
            last = position
    return [w for w in words if w.key]
