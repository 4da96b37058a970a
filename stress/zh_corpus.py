"""Unique Chinese news text for the Mandarin benchmarks: sentences and 100-300-character
paragraphs that never repeat (a serial number and random figures in every sentence), so
no cache can answer. Reproducible from a seed; numbers, dates and percentages exercise the
normalizer the way real news does."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable

CITIES = ("北京", "上海", "广州", "深圳", "成都", "杭州", "武汉", "西安", "南京", "重庆",
          "天津", "苏州", "长沙", "郑州", "青岛", "昆明", "厦门", "哈尔滨", "兰州", "贵阳")
BODIES = ("市政府", "统计局", "气象台", "交通运输部门", "教育部门", "卫生健康委员会",
          "文化和旅游局", "生态环境局", "科技企业", "研究团队", "农业农村局", "消防救援队伍")
TOPICS = ("新能源汽车", "城市轨道交通", "夜间经济", "老旧小区改造", "跨境电商", "智慧农业",
          "人工智能产业", "文化旅游", "生态保护", "数字政务", "职业教育", "社区养老服务")
ACTIONS = ("发布了", "启动了", "完成了", "公布了", "推出了", "通过了", "更新了", "部署了")
THINGS = ("年度报告", "专项计划", "试点方案", "调查结果", "三年行动方案", "管理办法",
          "服务指南", "监测数据")
WEATHER = ("晴转多云", "小雨", "阴", "多云", "雷阵雨", "晴")

# Each template takes its own random slots; `{n}` is the paragraph's serial number.
TEMPLATES: tuple[Callable[[random.Random, int], str], ...] = (
    lambda r, n: (f"据{r.choice(CITIES)}{r.choice(BODIES)}第{n}号通报，今年前{r.randint(2, 11)}"
                  f"个月{r.choice(TOPICS)}相关投资同比增长{r.randint(2, 39)}.{r.randint(1, 9)}%。"),
    lambda r, n: (f"{r.choice(CITIES)}{r.choice(BODIES)}{r.choice(ACTIONS)}"
                  f"{r.choice(TOPICS)}{r.choice(THINGS)}，预计惠及{r.randint(2, 980)}万居民。"),
    lambda r, n: (f"截至{r.randint(1, 12)}月{r.randint(1, 28)}日，全市已建成"
                  f"{r.randint(12, 4800)}个服务站点，覆盖率达到{r.randint(51, 99)}%。"),
    lambda r, n: (f"气象部门预计，{r.choice(CITIES)}明天{r.choice(WEATHER)}，最高气温"
                  f"{r.randint(5, 36)}℃，最低气温{r.randint(-8, 4)}℃，请市民注意增减衣物。"),
    lambda r, n: (f"专家表示，{r.choice(TOPICS)}正处在快速发展阶段，"
                  f"未来{r.randint(3, 10)}年市场规模有望突破{r.randint(2, 90)}千亿元。"),
    lambda r, n: (f"记者从{r.choice(CITIES)}了解到，{r.choice(TOPICS)}项目第{r.randint(2, 9)}"
                  f"期工程已于{r.randint(2019, 2025)}年{r.randint(1, 12)}月正式开工。"),
    lambda r, n: (f"活动期间，共有{r.randint(120, 98000)}名市民参与，"
                  f"现场签约项目{r.randint(3, 160)}个，总金额约{r.randint(2, 900)}亿元。"),
    lambda r, n: (f"{r.choice(BODIES)}负责人说，下一步将继续加大{r.choice(TOPICS)}支持力度，"
                  f"力争在{r.randint(2026, 2035)}年前全面完成既定目标。"),
    lambda r, n: (f"数据显示，{r.choice(CITIES)}上半年接待游客{r.randint(100, 9900)}万人次，"
                  f"同比增长{r.randint(1, 60)}%，旅游收入{r.randint(10, 3000)}亿元。"),
    lambda r, n: (f"热线电话{r.randint(10, 99)}{r.randint(100000, 999999)}将全天开放，"
                  f"市民可咨询{r.choice(TOPICS)}相关政策。"),
)


def sentence(rng: random.Random, serial: int) -> str:
    return rng.choice(TEMPLATES)(rng, serial)


def paragraph(rng: random.Random, serial: int, low: int = 100, high: int = 300) -> str:
    """Sentences until the paragraph reaches a length drawn from [low, high - 60], never
    past `high`; the first carries the serial number, so no two paragraphs are the same."""
    target = rng.randint(low, high - 60)
    first = TEMPLATES[0](rng, serial)
    parts, length = [first], len(first)
    while length < target:
        extra = sentence(rng, serial)
        if length + len(extra) > high:
            continue
        parts.append(extra)
        length += len(extra)
    return "".join(parts)


def paragraphs(count: int, seed: int, first_serial: int = 1) -> list[str]:
    rng = random.Random(seed)
    return [paragraph(rng, first_serial + i) for i in range(count)]


def three_sentence_paragraphs(count: int, seed: int, first_serial: int = 1) -> list[str]:
    """For time to first audio: three sentences, the first of them an ordinary one."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        serial = first_serial + i
        out.append(TEMPLATES[0](rng, serial) + sentence(rng, serial) + sentence(rng, serial))
    return out


def unique_sentences(seed: int, first_serial: int = 1) -> Callable[[], str]:
    """A never-ending source of short unique sentences (the seed's payload length, ~15-50
    characters): the seed's user model without its three repeated texts."""
    rng = random.Random(seed)
    counter = itertools.count(first_serial)
    return lambda: _short(rng, next(counter))


def _short(rng: random.Random, serial: int) -> str:
    return (f"第{serial}条快讯：{rng.choice(CITIES)}{rng.choice(BODIES)}{rng.choice(ACTIONS)}"
            f"{rng.choice(TOPICS)}{rng.choice(THINGS)}。")
