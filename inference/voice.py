"""The Piper/VITS engine: one voice, its ONNX sessions, text -> phonemes -> ids -> audio.

Knows nothing about HTTP or IPC; a worker process holds one Voice per configured voice.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
from piper.config import PiperConfig
from piper.voice import PiperVoice

from .options import SynthesisOptions, ThreadPlan, VoiceError
from .protocol import VoiceFiles

__all__ = ["SynthesisOptions", "ThreadPlan", "Voice", "VoiceError", "make_session"]

LOG = logging.getLogger("tts.inference.voice")
MAX_INT16 = 32767.0
WARMUP_TEXT = "Warming up the voice."


def make_session(model: str | bytes, threads: int, plan: ThreadPlan) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = plan.inter_op_threads
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Spinning threads burn the core another worker needs; off unless configured.
    spinning = "1" if plan.allow_spinning else "0"
    options.add_session_config_entry("session.intra_op.allow_spinning", spinning)
    options.add_session_config_entry("session.inter_op.allow_spinning", spinning)
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


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
        model_bytes = Path(files.model_path).read_bytes()
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
        inputs: dict[str, np.ndarray] = {
            "input": np.array([phoneme_ids], dtype=np.int64),
            "input_lengths": np.array([len(phoneme_ids)], dtype=np.int64),
            "scales": self.scales(options),
        }
        speaker = self.speaker_input(options.speaker_id)
        if speaker is not None:
            inputs["sid"] = speaker
        session = self._solo_session if options.solo and self._solo_session else self._session
        audio = session.run(None, inputs)[0].squeeze().astype(np.float32)
        peak = float(np.max(np.abs(audio))) if audio.size else 0.0
        if peak < 1e-8:
            return np.zeros_like(audio)
        return np.clip(audio / peak, -1.0, 1.0)

    def synthesize(self, text: str, options: SynthesisOptions) -> Iterator[np.ndarray]:
        """Yield int16 audio, one array per sentence espeak finds in `text`."""
        for phonemes in self.phonemize(text):
            audio = self.infer(self.to_ids(phonemes), options)
            yield (audio * MAX_INT16).astype(np.int16)

    def synthesize_unit(self, text: str, options: SynthesisOptions) -> np.ndarray:
        parts = list(self.synthesize(text, options))
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int16)

    def warm_up(self) -> None:
        self.synthesize_unit(WARMUP_TEXT, SynthesisOptions())
        if self._solo_session is not None:
            self.synthesize_unit(WARMUP_TEXT, SynthesisOptions(solo=True))
