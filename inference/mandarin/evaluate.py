"""Intelligibility and speed of the Mandarin voice against espeak-ng's cmn voice.

    python -m inference.mandarin.evaluate [--count 20] [--show] [--models-dir DIR]

Synthesizes the news sentences below (written for this project, no Latin letters) with the
neural voice (one intra-op thread) and with espeak-ng (`espeak-zh-female`), transcribes
both with multilingual Whisper base (`inference.wer.whisper_base_dir`, language zh, the
prompt 以下是普通话的句子。) and prints each engine's corpus CER and the neural voice's
real-time factor (synthesis seconds / audio seconds, the Whisper time not included).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

NEWS_SENTENCES = (
    "国家统计局今天发布数据，今年前三季度国内生产总值同比增长百分之五点二。",
    "气象台预计，明天北方大部分地区将迎来降温，局地有中到大雨。",
    "市政府宣布，新建的地铁线路将于下个月正式开通运营。",
    "教育部表示，今年将继续扩大农村地区学校的招生规模。",
    "受强冷空气影响，华北地区气温下降八到十度。",
    "这座城市的常住人口已经突破一千万人。",
    "科学家在南海发现了一个新的珊瑚礁生态系统。",
    "春节期间，全国铁路共发送旅客约一亿人次。",
    "该公司第三季度营业收入达到二百五十亿元。",
    "考古队在河南出土了一批珍贵的青铜器。",
    "卫生部门提醒市民，流感高发季节要注意勤洗手、多通风。",
    "全国人大常委会会议今天上午在北京开幕。",
    "今年的粮食总产量再创历史新高。",
    "新能源汽车的销量连续五个月保持增长。",
    "图书馆将在周末延长开放时间，方便市民借阅。",
    "这场音乐会吸引了两万多名观众到场观看。",
    "专家建议，老年人每天应该进行适量的户外运动。",
    "暴雨导致部分路段积水，交通部门已经启动应急预案。",
    "我国自主研制的大型客机完成了首次商业飞行。",
    "志愿者们在社区开展了垃圾分类宣传活动。",
)


@dataclass
class EngineReport:
    engine: str
    cer: float
    audio_s: float
    synth_s: float
    transcripts: list[str] = field(default_factory=list, repr=False)

    @property
    def rtf(self) -> float:
        return self.synth_s / self.audio_s if self.audio_s else float("nan")


def _timed(synthesize, sentences: Sequence[str]) -> tuple[list[np.ndarray], float]:
    audios, started = [], time.perf_counter()
    for text in sentences:
        audios.append(synthesize(text))
    return audios, time.perf_counter() - started


def neural_audio(sentences: Sequence[str], models_dir=None) -> tuple[list[np.ndarray], float, int]:
    from ..options import SynthesisOptions, ThreadPlan
    from .engine import MandarinVoice
    from .models import find_built, voice_files

    built, reason = find_built(models_dir)
    if built is None:
        raise SystemExit(f"the Mandarin model is not built: {reason}")
    voice = MandarinVoice.load(voice_files(built), ThreadPlan())
    voice.warm_up()
    audios, seconds = _timed(lambda t: voice.synthesize_unit(t, SynthesisOptions()), sentences)
    return audios, seconds, voice.sample_rate


def espeak_audio(sentences: Sequence[str]) -> tuple[list[np.ndarray], float, int]:
    from ..espeak_engine import EspeakVoice

    voice = EspeakVoice.load("espeak-zh-female")
    audios, seconds = _timed(voice.synthesize_unit, sentences)
    return audios, seconds, voice.sample_rate


def judge(engine: str, produced, sentences: Sequence[str], transcriber) -> EngineReport:
    from ..wer import character_error_rate

    audios, seconds, rate = produced
    transcripts = [transcriber.transcribe(a, rate) for a in audios]
    audio_s = sum(len(a) for a in audios) / rate
    return EngineReport(engine, character_error_rate(sentences, transcripts), audio_s, seconds,
                        transcripts)


def zh_transcriber(threads: int = 2):
    from ..wer import ZH_PROMPT, Transcriber, whisper_base_dir

    return Transcriber(whisper_base_dir(), threads=threads, language="zh",
                       initial_prompt=ZH_PROMPT)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m inference.mandarin.evaluate",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=len(NEWS_SENTENCES))
    parser.add_argument("--models-dir", default=None)
    parser.add_argument("--no-espeak", action="store_true")
    parser.add_argument("--show", action="store_true", help="print every transcript")
    args = parser.parse_args(argv)
    sentences = NEWS_SENTENCES[: args.count]
    transcriber = zh_transcriber()
    reports = [judge("fastspeech2", neural_audio(sentences, args.models_dir), sentences,
                     transcriber)]
    if not args.no_espeak:
        reports.append(judge("espeak-ng cmn", espeak_audio(sentences), sentences, transcriber))
    print(f"{'engine':16s} {'sentences':>9s} {'CER':>6s} {'audio s':>8s} {'RTF':>6s}")
    for report in reports:
        print(f"{report.engine:16s} {len(sentences):9d} {report.cer:6.3f} "
              f"{report.audio_s:8.1f} {report.rtf:6.3f}")
        if args.show:
            for ref, hyp in zip(sentences, report.transcripts, strict=True):
                print(f"  {ref} -> {hyp}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
