"""The espeak-ng engine against the real library (espeakng-loader's libespeak-ng), no mocks."""

from __future__ import annotations

import concurrent.futures
import hashlib
import multiprocessing
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from inference import espeak_engine as ee
from inference.espeak_engine import (
    VOICES,
    EspeakInputError,
    EspeakOptions,
    EspeakVoice,
    rate_for_speed,
    select_voice,
    split_sentences,
)
from inference.text import detect_language

SR = 22_050
ENGLISH = "The quick brown fox jumps over the lazy dog. It was a bright cold day in April."
MANDARIN = "人工智能正在改变我们的生活方式。今天的天气晴朗，适合外出散步。"
SEED_PAYLOADS = (
    "人工智能正在改变我们的生活方式。",
    "欢迎收听由IndexTTS-2-LLM生成的语音播报。",
    "今天的天气晴朗，适合外出散步。",
)
# Measured at speed 1.0 (each unit ends with espeak's sentence pause): English about
# 0.063 s per character, Mandarin 0.27-0.30 s per Han character. Bounds are about 2x wide.
EN_SECONDS_PER_CHAR = (0.03, 0.2)
ZH_SECONDS_PER_HAN = (0.15, 0.6)
PEAK_MIN = 8000  # espeak-ng peaks at 19k-33k on these texts


@pytest.fixture(scope="module")
def voices() -> dict[str, EspeakVoice]:
    loaded = {name: EspeakVoice.load(name) for name in VOICES}
    for voice in loaded.values():
        voice.warm_up()
    return loaded


def han_count(text: str) -> int:
    return sum(1 for ch in text if detect_language(ch) == "zh")


def seconds(audio: np.ndarray) -> float:
    return len(audio) / SR


def median_f0(audio: np.ndarray, sr: int = SR) -> float:
    """Median fundamental frequency over voiced frames, by normalized autocorrelation."""
    x = audio.astype(np.float64)
    frame, hop = int(0.04 * sr), int(0.01 * sr)
    starts = range(0, len(x) - frame, hop)
    rms = np.array([np.sqrt(np.mean(x[i : i + frame] ** 2)) for i in starts])
    shortest, longest = sr // 400, sr // 60  # 60-400 Hz
    pitches = []
    for i, level in zip(starts, rms, strict=True):
        if level < 0.2 * rms.max():
            continue
        seg = x[i : i + frame] - x[i : i + frame].mean()
        ac = np.correlate(seg, seg, "full")[frame - 1 :]
        ac = ac / ac[0]
        lag = shortest + int(np.argmax(ac[shortest:longest]))
        if ac[lag] > 0.5:  # clearly periodic: a voiced frame
            pitches.append(sr / lag)
    assert len(pitches) > 50, "too few voiced frames to estimate a pitch"
    return float(np.median(pitches))


def voiced_fraction(audio: np.ndarray) -> float:
    frame = int(0.02 * SR)
    frames = audio[: len(audio) // frame * frame].astype(np.float64).reshape(-1, frame)
    return float(np.mean(np.sqrt(np.mean(frames**2, axis=1)) > 500))


# --- catalog and loading --------------------------------------------------------------


def test_catalog_offers_english_and_mandarin_in_both_genders():
    assert {(v.language, v.gender) for v in VOICES.values()} == {
        ("en_US", "male"), ("en_US", "female"), ("zh_CN", "male"), ("zh_CN", "female"),
    }
    assert set(VOICES) == {"espeak-en-male", "espeak-en-female", "espeak-zh-male",
                           "espeak-zh-female"}
    assert all(v.engine == "espeak" for v in VOICES.values())
    assert all(name == v.name for name, v in VOICES.items())


def test_unknown_voice_and_variant_are_rejected(voices):
    with pytest.raises(EspeakInputError, match="unknown espeak voice"):
        EspeakVoice.load("espeak-fr-male")
    with pytest.raises(EspeakInputError, match="variant"):
        voices["espeak-en-male"].synthesize_unit("Hi.", EspeakOptions(variant="f99"))
    with pytest.raises(EspeakInputError, match="variant"):
        voices["espeak-en-male"].synthesize_unit("Hi.", EspeakOptions(variant="../f3"))


def test_library_comes_from_espeakng_loader_with_a_steady_overlay(voices):
    import espeakng_loader

    library = ee.get_library()
    assert library.source == "espeakng-loader"
    assert library.library_path == espeakng_loader.get_library_path()
    assert library.sample_rate == SR and library.version.startswith("1.5")
    overlay = Path(library.data_path)
    assert (overlay / "phontab").resolve() == Path(espeakng_loader.get_data_path(), "phontab")
    for variant in ("f3", ee.STEADY_VARIANT):
        text = (overlay / "voices" / "!v" / variant).read_text(errors="replace")
        assert text.rstrip().endswith("flutter 0\nroughness 8")


def test_overlay_is_built_once_and_reused(tmp_path):
    import espeakng_loader

    first = ee.build_overlay(espeakng_loader.get_data_path(), root=tmp_path)
    second = ee.build_overlay(espeakng_loader.get_data_path(), root=tmp_path)
    assert first == second and first.parent == tmp_path
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no leftover build dirs
    assert (first / "voices" / "!v" / "f3").is_file()
    assert (first / "lang").is_symlink()


# --- audio ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(VOICES))
def test_each_voice_speaks_its_language(voices, name):
    voice = voices[name]
    english = voice.info.language == "en_US"
    text = ENGLISH if english else MANDARIN
    audio = voice.synthesize_unit(text)
    assert voice.sample_rate == SR
    assert audio.dtype == np.int16 and audio.ndim == 1
    assert np.abs(audio.astype(np.int32)).max() > PEAK_MIN
    assert voiced_fraction(audio) > 0.4
    if english:
        low, high = EN_SECONDS_PER_CHAR
        assert low * len(text) < seconds(audio) < high * len(text)
    else:
        low, high = ZH_SECONDS_PER_HAN
        assert low * han_count(text) < seconds(audio) < high * han_count(text)


@pytest.mark.parametrize("language", ["en", "zh"])
def test_female_variant_has_a_higher_pitch(voices, language):
    text = ENGLISH if language == "en" else MANDARIN
    male = median_f0(voices[f"espeak-{language}-male"].synthesize_unit(text))
    female = median_f0(voices[f"espeak-{language}-female"].synthesize_unit(text))
    # Measured: en 101 vs 208 Hz, zh 92 vs 187 Hz.
    assert 70 < male < 140
    assert 150 < female < 300
    assert female > 1.5 * male


def test_variant_option_overrides_the_voice_variant(voices):
    male = voices["espeak-en-male"]
    plain = male.synthesize_unit(ENGLISH)
    f4 = male.synthesize_unit(ENGLISH, EspeakOptions(variant="f4"))
    assert male.espeak_name(EspeakOptions(variant="f4")) == "en-us+f4"
    assert median_f0(f4) > 1.5 * median_f0(plain)


@pytest.mark.parametrize("name", ["espeak-en-male", "espeak-zh-female"])
def test_speed_changes_the_duration(voices, name):
    voice = voices[name]
    text = ENGLISH if "en" in name else MANDARIN
    normal = seconds(voice.synthesize_unit(text, EspeakOptions(speed=1.0)))
    fast = seconds(voice.synthesize_unit(text, EspeakOptions(speed=2.0)))
    slow = seconds(voice.synthesize_unit(text, EspeakOptions(speed=0.5)))
    # Measured on English: 0.46 and 2.04.
    assert 0.35 < fast / normal < 0.65
    assert 1.6 < slow / normal < 2.5


def test_speed_maps_to_words_per_minute_with_espeaks_clamps(voices):
    assert rate_for_speed(1.0) == 175
    assert rate_for_speed(2.0) == 350
    assert rate_for_speed(4.0) == 700 and rate_for_speed(10.0) == 700
    assert rate_for_speed(0.5) == 88
    assert rate_for_speed(0.25) == 80 and rate_for_speed(0.01) == 80
    for bad in (0, -1.0, float("nan"), float("inf"), "fast"):
        with pytest.raises(EspeakInputError):
            rate_for_speed(bad)
    voice = voices["espeak-en-male"]
    # espeak cannot go below 80 wpm: 0.25 and 80/175 are the same audio.
    slowest = voice.synthesize_unit("Slow words.", EspeakOptions(speed=0.25))
    floor = voice.synthesize_unit("Slow words.", EspeakOptions(speed=80 / 175))
    assert np.array_equal(slowest, floor)
    fastest = voice.synthesize_unit(ENGLISH, EspeakOptions(speed=4.0))
    assert 0.15 < seconds(fastest) / seconds(voice.synthesize_unit(ENGLISH)) < 0.35


def test_options_from_the_piper_engine_shape_are_accepted(voices):
    class PiperLikeOptions:  # like inference.voice.SynthesisOptions: speed, no variant
        speed = 2.0
        speaker_id = None

    voice = voices["espeak-en-male"]
    assert np.array_equal(
        voice.synthesize_unit(ENGLISH, PiperLikeOptions()),
        voice.synthesize_unit(ENGLISH, EspeakOptions(speed=2.0)),
    )


@pytest.mark.parametrize("voice_name", ["espeak-zh-male", "espeak-zh-female"])
@pytest.mark.parametrize("payload", SEED_PAYLOADS)
def test_seed_payloads_speak_with_the_mandarin_voice(voices, voice_name, payload):
    assert select_voice(payload, voices[voice_name].info.gender).name == voice_name
    audio = voices[voice_name].synthesize_unit(payload)
    assert np.abs(audio.astype(np.int32)).max() > PEAK_MIN
    assert voiced_fraction(audio) > 0.4
    low, high = ZH_SECONDS_PER_HAN
    # The Latin name in the second payload adds time: allow it one Han character per letter.
    units = han_count(payload) + sum(ch.isascii() and ch.isalnum() for ch in payload) / 2
    assert low * units < seconds(audio) < high * units


# --- text handling --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "language"),
    [
        ("Hello, world!", "en"),
        ("人工智能正在改变我们的生活方式。", "zh"),
        ("欢迎收听由IndexTTS-2-LLM生成的语音播报。", "zh"),
        ("Model IndexTTS-2 says 你好", "zh"),
        ("12345, 67.8% !?", "en"),
        ("", "en"),
        ("。，！", "en"),  # CJK punctuation without ideographs
        ("𠀀", "zh"),  # extension B ideograph
    ],
)
def test_detect_language(text, language):
    assert detect_language(text) == language


def test_select_voice_by_text_and_gender():
    assert select_voice("Hello").name == "espeak-en-male"
    assert select_voice("Hello", "female").name == "espeak-en-female"
    assert select_voice("你好，IndexTTS", "female").name == "espeak-zh-female"
    with pytest.raises(EspeakInputError):
        select_voice("Hello", "robot")  # type: ignore[arg-type]


@pytest.mark.parametrize("text", ["", "   ", "\n\t \r\n", "\x00\x07\x1b", "...", "。！？"])
def test_silent_text_gives_empty_audio(voices, text):
    voice = voices["espeak-en-male"]
    assert list(voice.synthesize(text)) == []
    audio = voice.synthesize_unit(text)
    assert audio.dtype == np.int16 and audio.size == 0


def test_control_characters_are_ignored(voices):
    voice = voices["espeak-en-male"]
    clean = voice.synthesize_unit("Hello world, how are you?")
    dirty = voice.synthesize_unit("Hel\x00lo\x07 world,\x1b how\u200b are\ufeff you?\x7f")
    assert np.array_equal(clean, dirty)


def test_split_sentences():
    assert split_sentences("One. Two! Three? Pi is 3.14 and v2.0 ships.") == [
        "One.", "Two!", "Three?", "Pi is 3.14 and v2.0 ships.",
    ]
    assert split_sentences("他说：“你好。”然后走了。好！") == [
        "他说：“你好。”", "然后走了。", "好！",
    ]
    assert split_sentences("line one\nline two\n\nnext para") == [
        "line one line two", "next para",
    ]
    long = split_sentences("word " * 500)
    assert len(long) > 1 and all(len(p) <= ee.MAX_CHUNK_CHARS for p in long)
    han = split_sentences("字" * 1000)
    assert [len(p) for p in han] == [400, 400, 200]


def test_synthesize_yields_one_array_per_sentence(voices):
    chunks = list(voices["espeak-en-male"].synthesize("Hello world. Second sentence here!"))
    assert len(chunks) == 2
    for chunk in chunks:
        assert chunk.dtype == np.int16 and 0.4 < seconds(chunk) < 3.0
        assert np.abs(chunk.astype(np.int32)).max() > PEAK_MIN


def test_very_long_text(voices):
    sentences = [f"This is sentence number {i} of a rather long story." for i in range(60)]
    text = " ".join(sentences)
    chunks = list(voices["espeak-en-female"].synthesize(text))
    assert len(chunks) == 60
    total = sum(seconds(c) for c in chunks)
    low, high = EN_SECONDS_PER_CHAR
    assert low * len(text) < total < high * len(text)
    run_on = "和平 " * 2000  # 6000 characters, no sentence end
    audio = voices["espeak-zh-male"].synthesize_unit(run_on)
    low, high = ZH_SECONDS_PER_HAN
    assert low * 4000 < seconds(audio) < high * 4000


# --- determinism, endurance, concurrency ----------------------------------------------


def test_repeated_calls_give_identical_audio(voices):
    # Interleave other voices and texts: they advance espeak-ng's internal counters.
    for name, text in (("espeak-en-female", ENGLISH), ("espeak-zh-male", MANDARIN)):
        voice = voices[name]
        first = voice.synthesize_unit(text)
        for other in ("Something else entirely.", "别的话。", "x" * 7):
            voices["espeak-en-male"].synthesize_unit(other)
            voices["espeak-zh-female"].synthesize_unit(other)
            assert np.array_equal(voice.synthesize_unit(text), first)


def test_fifty_quick_calls_in_a_row(voices):
    names = sorted(VOICES)
    reference = voices["espeak-zh-female"].synthesize_unit(SEED_PAYLOADS[1])
    for i in range(50):
        voice = voices[names[i % 4]]
        text = f"Call number {i}." if voice.info.language == "en_US" else f"第{i}次调用。"
        audio = voice.synthesize_unit(text)
        assert audio.size > 0.3 * SR and np.abs(audio.astype(np.int32)).max() > PEAK_MIN
    assert np.array_equal(voices["espeak-zh-female"].synthesize_unit(SEED_PAYLOADS[1]), reference)


def test_threads_are_serialized(voices):
    jobs = [("espeak-en-male", ENGLISH), ("espeak-zh-female", MANDARIN)] * 4
    expected = {name: voices[name].synthesize_unit(text) for name, text in jobs}
    results: list[tuple[str, np.ndarray]] = []

    def run(name: str, text: str) -> None:
        results.append((name, voices[name].synthesize_unit(text)))

    threads = [threading.Thread(target=run, args=job) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(results) == len(jobs)
    for name, audio in results:
        assert np.array_equal(audio, expected[name])


def synthesize_in_child(name: str, text: str) -> tuple[int, int, str]:
    voice = EspeakVoice.load(name)
    audio = voice.synthesize_unit(text)
    return voice.sample_rate, len(audio), hashlib.sha256(audio.tobytes()).hexdigest()


def test_works_in_a_spawned_process_and_matches_this_one(voices):
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        rate, count, digest = pool.submit(
            synthesize_in_child, "espeak-zh-female", SEED_PAYLOADS[0]
        ).result(timeout=120)
    here = voices["espeak-zh-female"].synthesize_unit(SEED_PAYLOADS[0])
    assert rate == SR and count == len(here) > SR
    assert digest == hashlib.sha256(here.tobytes()).hexdigest()


def test_engine_does_not_import_onnxruntime_or_piper():
    code = (
        "import sys; from inference.espeak_engine import EspeakVoice; "
        "v = EspeakVoice.load('espeak-en-male'); assert v.synthesize_unit('Hi.').size; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('onnxruntime', 'piper')))"
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True,
                         text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"


def test_the_wheel_comes_before_the_system_library():
    candidates = ee.library_candidates()
    assert candidates[0][2] == "espeakng-loader"
    assert all(source in ("espeakng-loader", "system") for _, _, source in candidates)


FALLBACK_CHILD = """
import sys
sys.modules["espeakng_loader"] = None  # as if the wheel were not installed
from inference import espeak_engine as ee
try:
    voice = ee.EspeakVoice.load("espeak-zh-female")
except ee.EspeakError as exc:
    print("error:", exc)
else:
    audio = voice.synthesize_unit("人工智能正在改变我们的生活方式。")
    print("ok:", ee.get_library().source, audio.size, int(abs(audio.astype(int)).max()))
"""


def test_without_the_wheel_the_system_library_or_a_clear_error(tmp_path):
    import ctypes.util

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "TTS_ESPEAK_CACHE": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", FALLBACK_CHILD], cwd=root, env=env,
                         capture_output=True, text=True, timeout=120, check=True).stdout
    if ctypes.util.find_library("espeak-ng") is None:
        assert out.startswith("error: no usable espeak-ng library: install the espeakng-loader")
    else:  # e.g. Debian's libespeak-ng1 1.51 + espeak-ng-data
        status, source, size, peak = out.split()
        assert (status, source) == ("ok:", "system")
        assert int(size) > 2 * SR and int(peak) > PEAK_MIN


def test_overlay_follows_changes_of_its_source(tmp_path):
    import espeakng_loader

    shipped = Path(espeakng_loader.get_data_path())
    source = tmp_path / "source"
    (source / "voices" / "!v").mkdir(parents=True)
    for entry in shipped.iterdir():
        if entry.name != "voices":
            (source / entry.name).symlink_to(entry)
    (source / "voices" / "!v" / "f3").write_bytes((shipped / "voices" / "!v" / "f3").read_bytes())
    first = ee.build_overlay(source, root=tmp_path / "cache")
    (source / "xx_dict").write_bytes(b"new data")
    second = ee.build_overlay(source, root=tmp_path / "cache")
    assert second != first and (second / "xx_dict").read_bytes() == b"new data"
    (source / "voices" / "!v" / "f3").write_bytes(b"language variant\nname changed\n")
    third = ee.build_overlay(source, root=tmp_path / "cache")
    assert third not in (first, second)
    variant = (third / "voices" / "!v" / "f3").read_bytes()
    assert variant.startswith(b"language variant\nname changed")
