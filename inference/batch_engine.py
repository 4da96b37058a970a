"""Batched inference: several sentences through one `session.run`, split back exactly.

The exported Piper graph returns padded audio of shape (batch, 1, 1, max_samples) and no
per-item length. Each item's true length comes from the graph itself: the model is patched
in memory (piper's `add_alignment_output`, which marks the duration predictor's `Ceil`
tensor as a second output) so every run also returns the per-phoneme frame counts
(batch, 1, phonemes), zero on padding. An item's length is then

    samples[i] = sum(durations[i]) * hop_length

where hop_length (256 for Piper medium voices) is read off a real unbatched run at load
time (output samples / total frames, which must divide exactly). Items are cut at that
length, so padding noise past the end (the decoder is not silent there) never leaks into an
item. Each item is then peak-normalized on its own, exactly as `Voice.infer` does.

With noise fixed (noise_scale = noise_w_scale = 0) a batched item matches its unbatched
audio sample for sample in length and within 1e-3 in amplitude (measured ~1e-4 raw on
[-1, 1] audio; tests/inference/test_batch_engine.py asserts it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .protocol import VoiceFiles
from .timing import PhonemeWord, WordTiming
from .voice import (
    SynthesisOptions,
    ThreadPlan,
    Voice,
    aligned_model_bytes,
    make_session,
    phoneme_words,
)

# Phoneme-id count edges of the length buckets: a batch mixes only one bucket's items, so
# padding stays under about a factor of two of the shortest item.
BUCKET_EDGES = (48, 96, 160, 256)
BUCKET_NAMES = ("xs", "short", "medium", "long", "xl")


def bucket_for(phoneme_ids: int, edges: Sequence[int] = BUCKET_EDGES) -> int:
    """Index of the length bucket of an id sequence of this length."""
    for index, edge in enumerate(edges):
        if phoneme_ids <= edge:
            return index
    return len(edges)


def pad_batch(id_seqs: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    if not id_seqs:
        raise ValueError("empty batch")
    lengths = np.array([len(s) for s in id_seqs], dtype=np.int64)
    if lengths.min() < 1:
        raise ValueError("an item has no phoneme ids")
    ids = np.full((len(id_seqs), int(lengths.max())), pad_id, dtype=np.int64)
    for row, seq in enumerate(id_seqs):
        ids[row, : len(seq)] = seq
    return ids, lengths


def normalize_peak(audio: np.ndarray) -> np.ndarray:
    """Peak-normalize like Voice.infer: float32 in [-1, 1], silence stays silence."""
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    if peak < 1e-8:
        return np.zeros_like(audio, dtype=np.float32)
    return np.clip(audio / peak, -1.0, 1.0).astype(np.float32)


@dataclass(frozen=True)
class BatchOutput:
    """Raw (un-normalized) audio per item, cut to its true length, and its durations."""

    audio: list[np.ndarray]
    durations: list[np.ndarray]
    padded_samples: int


class BatchEngine:
    """A voice whose session runs padded batches and reports each item's length."""

    def __init__(self, voice: Voice, session, hop_length: int | None = None) -> None:
        self.voice = voice
        self.session = session
        self.hop_length = hop_length or self._measure_hop()

    @classmethod
    def load(
        cls, files: VoiceFiles, threads: int = 1, plan: ThreadPlan | None = None
    ) -> BatchEngine:
        from piper.config import PiperConfig

        from .voice import read_voice_config

        plan = plan or ThreadPlan(intra_op_threads=threads)
        session = make_session(aligned_model_bytes(files.model_path), threads, plan)
        config = PiperConfig.from_dict(read_voice_config(files.config_path))
        # The Voice phonemizes and resolves scales; its session is the patched one, whose
        # first output is still the audio, so voice.infer keeps working unchanged.
        return cls(Voice(files.name, config, session), session)

    @property
    def sample_rate(self) -> int:
        return self.voice.sample_rate

    def _measure_hop(self) -> int:
        ids = self.voice.to_ids(self.voice.phonemize("Measuring the hop length.")[0])
        inputs = self._inputs([ids], SynthesisOptions(noise_scale=0.0, noise_w_scale=0.0))
        audio, durations = self.session.run(None, inputs)[:2]
        frames = int(round(float(durations.sum())))
        samples = int(audio.size)
        if frames <= 0 or samples % frames:
            raise RuntimeError(f"audio samples {samples} are not a multiple of frames {frames}")
        return samples // frames

    def _inputs(
        self, id_seqs: Sequence[Sequence[int]], options: SynthesisOptions
    ) -> dict[str, np.ndarray]:
        ids, lengths = pad_batch(id_seqs)
        inputs: dict[str, np.ndarray] = {
            "input": ids,
            "input_lengths": lengths,
            "scales": self.voice.scales(options),
        }
        speaker = self.voice.speaker_input(options.speaker_id)
        if speaker is not None:
            inputs["sid"] = np.repeat(speaker, len(id_seqs))
        return inputs

    def run(self, id_seqs: Sequence[Sequence[int]], options: SynthesisOptions) -> BatchOutput:
        """One session.run over the padded batch; items cut at sum(durations) * hop."""
        inputs = self._inputs(id_seqs, options)
        lengths = inputs["input_lengths"]
        audio, durations = self.session.run(None, inputs)[:2]
        audio = audio.reshape(len(id_seqs), -1)
        durations = durations.reshape(len(id_seqs), -1)
        hop = self.hop_length
        items, spans = [], []
        for row in range(len(id_seqs)):
            span = durations[row, : lengths[row]]
            samples = int(round(float(span.sum()))) * hop
            if samples > audio.shape[1]:
                raise RuntimeError(f"item {row}: {samples} samples > padded {audio.shape[1]}")
            items.append(audio[row, :samples].astype(np.float32))
            spans.append(span.astype(np.int64))
        return BatchOutput(items, spans, audio.shape[1])

    def infer_batch(
        self, id_seqs: Sequence[Sequence[int]], options: SynthesisOptions
    ) -> list[np.ndarray]:
        """Float32 audio per item, peak-normalized per item like Voice.infer."""
        return [normalize_peak(a) for a in self.run(id_seqs, options).audio]

    def synthesize_batch(
        self, texts: Sequence[str], options: SynthesisOptions, max_batch: int = 8
    ) -> list[np.ndarray]:
        """int16 audio per text (its sentences concatenated), sentences batched by bucket."""
        return self.synthesize_batch_timed(texts, options, max_batch)[0]

    def synthesize_batch_timed(
        self, texts: Sequence[str], options: SynthesisOptions, max_batch: int = 8,
        timings: bool = False,
    ) -> tuple[list[np.ndarray], list[list[WordTiming]]]:
        """synthesize_batch(), and with `timings` each text's words (else empty lists)."""
        voice = self.voice
        sentences: list[tuple[int, list[str], list[int], list[int]]] = []
        for index, text in enumerate(texts):
            for phonemes in voice.phonemize(text):
                ids, positions = voice.ids_with_positions(phonemes)
                sentences.append((index, phonemes, ids, positions))
        by_bucket: dict[int, list[int]] = {}
        for position, sentence in enumerate(sentences):
            by_bucket.setdefault(bucket_for(len(sentence[2])), []).append(position)
        audio: dict[int, np.ndarray] = {}
        frames: dict[int, np.ndarray] = {}
        for positions in by_bucket.values():
            for start in range(0, len(positions), max_batch):
                chunk = positions[start : start + max_batch]
                out = self.run([sentences[p][2] for p in chunk], options)
                for p, item, spans in zip(chunk, out.audio, out.durations, strict=True):
                    audio[p], frames[p] = normalize_peak(item), spans
        per_text: list[list[np.ndarray]] = [[] for _ in texts]
        heard: list[list[PhonemeWord]] = [[] for _ in texts]
        offsets = [0] * len(texts)
        for position, (index, phonemes, _, id_positions) in enumerate(sentences):
            pcm = (audio[position] * 32767.0).astype(np.int16)
            if timings:
                heard[index].extend(phoneme_words(phonemes, id_positions, frames[position],
                                                  len(pcm), offsets[index]))
            per_text[index].append(pcm)
            offsets[index] += len(pcm)
        audios = [np.concatenate(p) if p else np.zeros(0, np.int16) for p in per_text]
        words = [voice.word_timings(text, heard[i]) if timings else []
                 for i, text in enumerate(texts)]
        return audios, words
