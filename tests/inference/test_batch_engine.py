"""Batched inference on the real voice: exact splits, same audio as one by one (noise fixed)."""

from __future__ import annotations

import numpy as np
import pytest

from inference.batch_engine import BatchEngine, bucket_for, pad_batch
from inference.voice import SynthesisOptions, ThreadPlan, Voice, VoiceError
from tests.inference.conftest import JOE

DETERMINISTIC = SynthesisOptions(noise_scale=0.0, noise_w_scale=0.0)
# Normalized float audio in [-1, 1]: batched and unbatched runs differ only by float
# reduction order inside padded tensors (measured ~2e-4 at most).
TOLERANCE = 2e-3
TEXTS = [
    "Hi.",
    "Please keep your belongings with you at all times.",
    "The transport authority supported a plan to plant trees along the river despite "
    "objections from several members.",
    "Do you know when the ferry to Austin leaves?",
]


@pytest.fixture(scope="module")
def engine() -> BatchEngine:
    return BatchEngine.load(JOE, threads=1)


@pytest.fixture(scope="module")
def voice() -> Voice:
    return Voice.load(JOE, ThreadPlan())


@pytest.fixture(scope="module")
def id_seqs(voice) -> list[list[int]]:
    return [voice.to_ids(voice.phonemize(t)[0]) for t in TEXTS]


def test_hop_length_is_read_off_the_model(engine):
    assert engine.hop_length == 256


def test_batched_items_match_unbatched_audio_and_length_exactly(engine, voice, id_seqs):
    batched = engine.infer_batch(id_seqs, DETERMINISTIC)
    assert len(batched) == len(id_seqs)
    for ids, audio in zip(id_seqs, batched, strict=True):
        single = voice.infer(ids, DETERMINISTIC)
        assert len(audio) == len(single)  # sample-exact split
        assert np.abs(audio - single).max() <= TOLERANCE


def test_split_points_are_the_durations_times_hop_and_padding_is_cut(engine, id_seqs):
    out = engine.run(id_seqs, DETERMINISTIC)
    longest = max(len(a) for a in out.audio)
    assert out.padded_samples == longest
    for audio, durations, ids in zip(out.audio, out.durations, id_seqs, strict=True):
        assert len(durations) == len(ids)
        assert len(audio) == int(durations.sum()) * engine.hop_length
    # The decoder is not silent past a short item's end: cutting exactly matters.
    shortest = min(range(len(id_seqs)), key=lambda i: len(out.audio[i]))
    assert len(out.audio[shortest]) < out.padded_samples


def test_a_batch_of_one_equals_single_inference(engine, voice, id_seqs):
    for ids in id_seqs:
        (one,) = engine.infer_batch([ids], DETERMINISTIC)
        single = voice.infer(ids, DETERMINISTIC)
        assert len(one) == len(single)
        assert np.abs(one - single).max() <= 1e-5


def test_synthesize_batch_equals_per_text_synthesis(engine, voice):
    texts = ["Good morning. The meeting starts soon.", "Thank you.", TEXTS[2]]
    batched = engine.synthesize_batch(texts, DETERMINISTIC, max_batch=4)
    for text, audio in zip(texts, batched, strict=True):
        single = voice.synthesize_unit(text, DETERMINISTIC)
        assert audio.dtype == np.int16
        assert len(audio) == len(single)
        assert np.abs(audio.astype(np.int32) - single.astype(np.int32)).max() <= 64


def test_order_inside_a_batch_does_not_change_an_item(engine, id_seqs):
    forward = engine.infer_batch(id_seqs, DETERMINISTIC)
    backward = engine.infer_batch(id_seqs[::-1], DETERMINISTIC)[::-1]
    for a, b in zip(forward, backward, strict=True):
        assert len(a) == len(b)
        assert np.abs(a - b).max() <= TOLERANCE


def test_single_speaker_voice_rejects_a_speaker_id(engine, id_seqs):
    with pytest.raises(VoiceError, match="single speaker"):
        engine.infer_batch(id_seqs[:2], SynthesisOptions(speaker_id=2))


def test_padding_and_buckets():
    ids, lengths = pad_batch([[1, 5, 2], [1, 2]])
    assert ids.tolist() == [[1, 5, 2], [1, 2, 0]]
    assert lengths.tolist() == [3, 2]
    with pytest.raises(ValueError, match="empty batch"):
        pad_batch([])
    with pytest.raises(ValueError, match="no phoneme ids"):
        pad_batch([[1], []])
    edges = (10, 20)
    assert [bucket_for(n, edges) for n in (1, 10, 11, 20, 21, 500)] == [0, 0, 1, 1, 2, 2]
