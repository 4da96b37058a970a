import numpy as np
import pytest

from inference.voice import SynthesisOptions, ThreadPlan, Voice, VoiceError
from tests.inference.conftest import JOE

DETERMINISTIC = SynthesisOptions(noise_scale=0.0, noise_w_scale=0.0)


@pytest.fixture(scope="module")
def voice() -> Voice:
    return Voice.load(JOE, ThreadPlan(solo_threads=2))


def test_phonemize_and_ids_follow_the_voice_config(voice):
    phonemes = voice.phonemize("Hello world. Second sentence.")
    assert len(phonemes) == 2
    ids = voice.to_ids(phonemes[0])
    assert ids[0] == voice.config.phoneme_id_map["^"][0]
    assert all(isinstance(i, int) for i in ids)


def test_synthesize_yields_one_int16_chunk_per_sentence(voice):
    chunks = list(voice.synthesize("Hello world. Second sentence here.", DETERMINISTIC))
    assert len(chunks) == 2
    for chunk in chunks:
        assert chunk.dtype == np.int16
        assert 0.3 < len(chunk) / voice.sample_rate < 4.0
        assert np.abs(chunk).max() > 10000  # peak-normalized, not silence


def test_speed_maps_to_length_scale(voice):
    normal = voice.synthesize_unit("The quick brown fox jumps.", DETERMINISTIC)
    fast = voice.synthesize_unit(
        "The quick brown fox jumps.",
        SynthesisOptions(speed=2.0, noise_scale=0.0, noise_w_scale=0.0),
    )
    assert 0.4 < len(fast) / len(normal) < 0.7  # durations are rounded up per phoneme


def test_solo_session_gives_the_same_audio(voice):
    text = "Threads must not change the words."
    single = voice.synthesize_unit(text, DETERMINISTIC).astype(np.int32)
    solo = voice.synthesize_unit(
        text, SynthesisOptions(noise_scale=0.0, noise_w_scale=0.0, solo=True)
    ).astype(np.int32)
    assert len(single) == len(solo)
    assert np.abs(single - solo).max() <= 64  # float reduction order differs across threads


def test_single_speaker_voice_rejects_speaker_ids(voice):
    with pytest.raises(VoiceError, match="single speaker"):
        voice.synthesize_unit("Hi.", SynthesisOptions(speaker_id=3))
