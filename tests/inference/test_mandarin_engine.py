"""The FastSpeech2 engine on the real converted models: durations, audio, chunks, speed."""

from __future__ import annotations

import numpy as np
import pytest

from inference import worker
from inference.mandarin import SAMPLE_RATE, build, models
from inference.mandarin.engine import MandarinVoice
from inference.options import SynthesisOptions, ThreadPlan, VoiceError

# Durations (frames) of build.CHECK_SYMBOLS at speed 1, measured on the first build.
CHECK_DURATIONS = [2, 4, 5, 8, 0, 6, 8, 0, 5, 7, 3, 6, 10, 2, 5, 7, 4, 5, 9, 2, 5, 7, 4, 9, 12, 6]


@pytest.fixture(scope="module")
def voice(mandarin_model) -> MandarinVoice:
    return MandarinVoice.load(models.voice_files(mandarin_model), ThreadPlan())


def seconds(audio: np.ndarray) -> float:
    return len(audio) / SAMPLE_RATE


def test_fixed_ids_give_fixed_durations(voice, mandarin_model):
    ids = build.check_inputs(mandarin_model.mapper)["input_ids"][0].tolist()
    durations, mel = voice.acoustic(ids, 1.0)
    assert durations.tolist() == CHECK_DURATIONS
    assert mel.shape == (1, sum(CHECK_DURATIONS), 80)
    slow, _ = voice.acoustic(ids, 2.0)
    assert 1.8 * sum(CHECK_DURATIONS) <= slow.sum() <= 2.2 * sum(CHECK_DURATIONS)


def test_unit_is_24khz_int16_of_plausible_length_and_repeatable(voice):
    text = "国家统计局今天发布了最新数据。"  # 14 syllables
    audio = voice.synthesize_unit(text, SynthesisOptions())
    assert voice.sample_rate == 24_000 and audio.dtype == np.int16
    assert 1.5 <= seconds(audio) <= 5.0
    assert np.sqrt(np.mean((audio / 32768.0) ** 2)) > 0.02
    assert np.array_equal(audio, voice.synthesize_unit(text, SynthesisOptions()))


def test_speed_scales_duration(voice):
    text = "今天的天气非常好，我们一起去公园散步。"
    normal = seconds(voice.synthesize_unit(text, SynthesisOptions()))
    fast = seconds(voice.synthesize_unit(text, SynthesisOptions(speed=2.0)))
    slow = seconds(voice.synthesize_unit(text, SynthesisOptions(speed=0.5)))
    assert fast < 0.65 * normal and slow > 1.6 * normal
    with pytest.raises(VoiceError):
        voice.synthesize_unit(text, SynthesisOptions(speed=0.0))


def test_single_speaker(voice):
    with pytest.raises(VoiceError):
        voice.synthesize_unit("你好", SynthesisOptions(speaker_id=1))


def test_3000_unpunctuated_characters_are_all_spoken(voice):
    text = "中华人民共和国" * 428 + "中华人民共"  # 3,000 characters, no punctuation
    audio = voice.synthesize_unit(text, SynthesisOptions())
    # About 0.15-0.3 s per syllable, and nothing cut off by the 2048-frame position table.
    assert 450 <= seconds(audio) <= 900


def test_slow_long_text_stays_within_the_position_table(voice):
    audio = voice.synthesize_unit("中华人民共和国" * 30, SynthesisOptions(speed=0.25))
    assert seconds(audio) > 4 * 0.15 * 210


def test_an_overlong_chunk_is_split_and_retried(voice):
    from inference.mandarin.frontend import syllables

    syl = tuple(syllables("中华人民共和国" * 25))  # 175 syllables: > 2048 frames in one run
    audio = voice.run_chunk(syl, 1.0, solo=False)
    assert len(audio) / SAMPLE_RATE > 175 * 0.15


def test_latin_letters_and_numbers_are_spoken(voice):
    base = seconds(voice.synthesize_unit("欢迎收听由生成的语音播报。", SynthesisOptions()))
    mixed = seconds(voice.synthesize_unit("欢迎收听由IndexTTS-2-LLM生成的语音播报。",
                                          SynthesisOptions()))
    # 12 letters and a digit: at least ~16 more syllables.
    assert mixed > base + 16 * 0.12
    short = seconds(voice.synthesize_unit("会议开始", SynthesisOptions()))
    timed = seconds(voice.synthesize_unit("会议10:30开始", SynthesisOptions()))
    assert timed > short + 5 * 0.12  # 十点三十分


def test_empty_text_gives_no_audio(voice):
    assert voice.synthesize_unit("，。……", SynthesisOptions()).size == 0


def test_worker_loads_the_engine_for_fastspeech2_files(mandarin_model):
    engine = worker.load_engine(models.voice_files(mandarin_model), ThreadPlan(solo_threads=2))
    assert isinstance(engine, MandarinVoice) and engine.sample_rate == 24_000
    engine.warm_up()
    audio = engine.synthesize_unit("测试", SynthesisOptions(solo=True))
    assert audio.dtype == np.int16 and audio.size > 0


def test_timings_read_each_character_and_each_number_as_written(voice):
    text = "欢迎收听由IndexTTS-2生成的播报，时间10:30，票价¥88.8，折扣15%。"
    audio, words = voice.synthesize_timed(text, SynthesisOptions())
    assert len(audio) == len(voice.synthesize_unit(text, SynthesisOptions()))
    heard = [text[w.start_char:w.end_char] for w in words]
    assert heard == ["欢", "迎", "收", "听", "由", "IndexTTS", "2", "生", "成", "的", "播",
                     "报", "时", "间", "10:30", "票", "价", "¥88.8", "折", "扣", "15%"]
    starts = [w.start_sample for w in words]
    assert starts == sorted(starts) and all(w.end_sample <= len(audio) for w in words)
    # The pauses after the commas lie between words: no word spans them.
    comma = next(w for w in words if text[w.start_char:w.end_char] == "时")
    before = words[words.index(comma) - 1]
    assert comma.start_sample - before.end_sample > 0.1 * SAMPLE_RATE
