"""Held-out sentences for the word-timing benchmark (stress/bench_timings.py) and its test.

Written for it, in no other corpus of the project: English with the things a normalizer
expands or a tokenizer trips on (numbers, dates, times, money, percentages, abbreviations,
initialisms, mixed case, quotes and dashes, emoji, runs of spaces), and Chinese news-style
sentences (a few with digits, percentages, dates and Latin letters). Nothing here was
tuned against the engines: a sentence stays in even when one of them reads it badly.

ENGLISH and CHINESE are what the benchmark measures, and what the engines' boundary rules
and the Piper lead were chosen on (python -m stress.bench_timings offsets). CHECK_EN is
what the pytest check uses (tests/inference/test_timing_quality.py), written afterwards and
never used to choose anything: plain enough that Whisper base transcribes it reliably,
varied enough to cover numbers, a time, dates, money and abbreviations.
"""

from __future__ import annotations

ENGLISH: tuple[str, ...] = (
    "The ferry to Brindle Island leaves at 7:45 every morning, weather permitting.",
    "On June 14, 2023, the city council approved a budget of $3.2 million for new bike lanes.",
    "Dr. Alvarez said the results were \"encouraging, but far from final.\"",
    "Our train was delayed by 25 minutes because of a signal fault near Oakridge.",
    "Please send the signed forms to Mr. Patel before Friday afternoon.",
    "The museum on Elm St. reopens next week after a two-year renovation.",
    "Prices rose 4.7% in March, the fastest pace since late 2021.",
    "She ran the marathon in three hours and twelve minutes, a personal best!",
    "The NASA probe sent back 1,200 images of the frozen moon.",
    "Is the meeting on Tuesday or Wednesday?  Nobody seems to know.",
    "A small bakery in the old quarter sells about 300 loaves a day.",
    "The recipe calls for 2 cups of flour, 1 egg, and a pinch of salt.",
    "Tickets cost $18 for adults and $9 for children under twelve.",
    "The company's CEO resigned on Monday, citing personal reasons.",
    "Heavy rain flooded several roads in the valley overnight 🌧️ and schools stayed closed.",
    "After the storm, volunteers cleared fallen trees from the park.",
    "The library will extend its opening hours to 10 p.m. during exams.",
    "He bought a used car for £4,500 and drove it straight to the coast.",
    "Scientists in Norway found a new species of deep-sea jellyfish.",
    "The bridge, built in 1889, is still used by thousands of commuters.",
    "Call me back at noon, or send a text if you're running late 🙂",
    "Wind speeds reached 120 km/h along the northern coast on Sunday.",
    "The UN report warns that glaciers are shrinking faster than expected.",
    "Our neighbors adopted a three-legged dog named Pepper.",
    "The final score was 3 to 1, and the crowd went wild.",
    "The concert starts at 8 PM, but the doors open an hour earlier.",
    "I think the iPhone and the MacBook were both on sale last week.",
    "Farmers expect a smaller harvest this year   because of the long drought.",
    "The new hospital wing has 64 beds and a rooftop garden.",
    "Volunteers planted 5,000 trees along the river between April and June.",
)

CHINESE: tuple[str, ...] = (
    "本市今年新建了十二所小学，预计九月投入使用。",
    "气象台发布暴雨蓝色预警，提醒市民减少不必要的外出。",
    "春节假期，全国铁路累计发送旅客超过一亿人次。",
    "这座跨海大桥全长约二十公里，将于明年年底通车。",
    "研究人员在深海发现了一种会发光的新型水母。",
    "今年前三季度，全省粮食产量同比增长百分之三点五。",
    "受寒潮影响，北方多地气温骤降，部分航班延误。",
    "社区图书馆延长了开放时间，周末也可以借书。",
    "这家老字号餐馆已经营业了八十多年，深受居民喜爱。",
    "志愿者们利用周末时间，在河边种下了五千棵树苗。",
    "新版地铁线路图将于下月一日起正式启用。",
    "专家提醒，夏季高温期间要注意防暑降温，多喝水。",
    "该公司宣布，将在西部地区新建一座太阳能发电站。",
    "博物馆推出了夜间参观活动，吸引了大批年轻游客。",
    "2023年，全市新能源汽车销量突破十万辆。",
    "农民们正在抢收小麦，预计本周内完成收割。",
    "这项新技术可以把充电时间缩短到十五分钟以内。",
    "学校组织学生参观了航天科技展览，孩子们兴趣浓厚。",
    "近日，一场马拉松比赛在湖边举行，共有两万名选手参加。",
    "有关部门表示，将进一步加强食品安全监管。",
)

# The pytest check (tests/inference/test_timing_quality.py): sixteen English sentences in
# none of the lists above, written after the Piper boundary rule and its constant lead
# (inference/voice.py WORD_TIMING_LEAD_S) were chosen on ENGLISH; nothing was tuned on them.
CHECK_EN: tuple[str, ...] = (
    "The library on Maple Street opens at 9:30 on weekdays and closes early on Sundays.",
    "Last spring, our neighbors planted 40 apple trees along the river path.",
    "Mrs. Okafor asked the students to finish reading the second chapter by Monday.",
    "The concert tickets cost $45 each, and the money goes to the children's hospital.",
    "A strong wind knocked down several branches, but nobody was hurt.",
    "The bridge was finished in 1932 and repaired again after the flood of 1975.",
    "On March 3, 2021, the museum reopened its gallery of ancient maps.",
    "Please bring a warm coat, because the mountain trail gets cold after sunset.",
    "My grandmother still writes letters by hand and mails them every Tuesday.",
    "The bakery sold more than 300 loaves of bread before noon on Saturday.",
    "Captain Reyes told the crew to check the ropes before the storm arrived.",
    "We waited almost two hours for the bus, so we decided to walk home.",
    "The new school building has bright classrooms and a large garden behind it.",
    "Tom found an old camera in the attic, still wrapped in a yellow towel.",
    "The doctor's office will be closed on December 24 and 25 for the holidays.",
    "After dinner, the children played cards while their parents washed the dishes.",
)
