"""The neural Mandarin voice through a real server: routing, formats, /v1, jobs, speed,
streaming, a worker killed mid-request, a corrupted model, and the licence switch.

One server (licence accepted) serves most tests of this module; the corrupted-model tests
start their own small ones. The model comes from `python -m inference.mandarin.ensure`,
which `./run.sh test` runs first: without it the module is skipped (failed under CI).
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import av
import numpy as np
import pytest

from inference.mandarin import models
from tests.support import ServerProcess, decode_wav, merged, write_config
from tts_server.config import load_settings
from tts_server.speech.voices import VoiceRegistry

VOICE = "zh-baker-female"
RATE = 24_000
SEED_PAYLOADS = [  # /work/shared/seed: the seed's Locust test, with "voice": "female"
    "人工智能正在改变我们的生活方式。",
    "欢迎收听由IndexTTS-2-LLM生成的语音播报。",
    "今天的天气晴朗，适合外出散步。",
]
PARAGRAPH = ("国家统计局今天发布数据显示，十月份全国居民消费价格同比上涨百分之零点二。"
             "其中城市上涨百分之零点三，农村持平。食品价格下降，非食品价格上涨百分之一点二。")
ACCEPTED = {
    "voices": {"accept_noncommercial": True},
    "pool": {"mandarin_workers": 2, "max_unit_retries": 1},
    # The job API needs the "jobs" feature; anonymous loopback callers get it here.
    "limits": {"tiers": {"anonymous": {"features": ["tts", "stream", "jobs"]}}},
}


def built_model() -> models.BuiltModel:
    built, reason = models.find_built(None)
    if built is None:
        message = (f"Mandarin model not built ({reason}): run "
                   "`.venv/bin/python -m inference.mandarin.ensure` (./run.sh test does)")
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return built


@pytest.fixture(scope="module")
def zh_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    built_model()
    folder = tmp_path_factory.mktemp("zh_server")
    server = ServerProcess(write_config(folder / "config.toml", merged(ACCEPTED)),
                           folder / "server.log")
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


async def post(url: str, body: dict, path: str = "/api/tts") -> tuple[int, dict, bytes]:
    async with aiohttp.ClientSession() as session:
        async with session.post(url + path, json=body) as response:
            return response.status, dict(response.headers), await response.read()


def seconds_of_wav(body: bytes) -> float:
    samples, rate, _ = decode_wav(body)
    assert rate == RATE
    return len(samples) / rate


def rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean((samples.astype(np.float64) / 32768) ** 2)))


# ---- the seed's payloads and routing ----------------------------------------------------------


@pytest.mark.parametrize("text", SEED_PAYLOADS)
async def test_seed_payloads_with_voice_female_are_neural_24khz(zh_server, text):
    status, headers, body = await post(zh_server.url, {"text": text, "voice": "female"})
    assert status == 200, body
    assert (headers["X-Engine"], headers["X-Voice"]) == ("fastspeech2", VOICE)
    assert headers["X-Sample-Rate"] == "24000"
    samples, rate, wav = decode_wav(body)
    assert (rate, wav.channels) == (RATE, 1)
    seconds = len(samples) / rate
    # 0.12-0.45 s per character (the Latin letters of the second are spelled out).
    assert 0.12 * len(text) <= seconds <= 0.45 * len(text), seconds
    assert rms(samples) > 0.02


async def test_chinese_aliases_route_to_the_neural_voice_but_male_stays_espeak(zh_server):
    for voice in (None, "default", "female"):
        body = {"text": "早上好。"} if voice is None else {"text": "早上好。", "voice": voice}
        status, headers, _ = await post(zh_server.url, body)
        assert (status, headers["X-Voice"]) == (200, VOICE), voice
    status, headers, _ = await post(zh_server.url, {"text": "早上好。", "voice": "male"})
    assert (status, headers["X-Voice"], headers["X-Engine"]) == (200, "espeak-zh-male", "espeak")
    status, headers, _ = await post(zh_server.url, {"text": "Good morning.", "voice": "female"})
    assert (status, headers["X-Voice"]) == (200, "espeak-en-female")
    status, _, body = await post(zh_server.url, {"text": "Good morning.", "voice": VOICE})
    assert status == 422 and b"language_mismatch" in body


async def test_the_voice_is_listed_with_its_licence_and_announced_at_start(zh_server):
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{zh_server.url}/api/voices") as response:
            voices = {v["name"]: v for v in (await response.json())["voices"]}
    voice = voices[VOICE]
    assert (voice["engine"], voice["language"], voice["sample_rate"]) == (
        "fastspeech2", "zh_CN", RATE)
    assert (voice["gender"], voice["quality"], voice["commercial_use"]) == (
        "female", "neural", False)
    assert "NON-COMMERCIAL" in voice["license"]
    assert voices["joe"]["commercial_use"] is True and voices["joe"]["license"]
    started = [line for line in zh_server.log().splitlines() if "non-commercial voices" in line]
    assert len(started) == 1 and VOICE in started[0]


# ---- formats, /v1, jobs, speed, streaming -------------------------------------------------------


def decode_any(data: bytes) -> tuple[int, float]:
    """(sample rate, seconds) of an encoded file, read back with FFmpeg (PyAV)."""
    with av.open(io.BytesIO(data)) as container:
        frames = list(container.decode(audio=0))
    return frames[0].sample_rate, sum(f.samples for f in frames) / frames[0].sample_rate


async def test_every_format_carries_the_same_audio(zh_server):
    text = "今天的天气晴朗，适合外出散步。我们下午三点在公园门口见面。"
    status, _, wav = await post(zh_server.url, {"text": text})
    assert status == 200
    reference = seconds_of_wav(wav)
    for audio_format in ("mp3", "opus", "aac", "flac", "pcm"):
        for stream in (False, True):
            body = {"text": text, "format": audio_format, "stream": stream}
            status, headers, data = await post(zh_server.url, body)
            assert (status, headers["X-Engine"]) == (200, "fastspeech2"), (audio_format, data)
            if audio_format == "pcm":
                rate, seconds = int(headers["X-Sample-Rate"]), len(data) / 2 / RATE
                assert rate == RATE
            else:
                rate, seconds = decode_any(data)
            # Codec delay and frame padding: a few tens of milliseconds at most.
            assert seconds == pytest.approx(reference, abs=0.12), (audio_format, stream)


async def test_openai_pcm_is_24khz_from_the_neural_voice(zh_server):
    body = {"model": "tts-1", "voice": "alloy", "input": SEED_PAYLOADS[2],
            "response_format": "pcm"}
    status, headers, data = await post(zh_server.url, body, "/v1/audio/speech")
    assert status == 200, data
    assert (headers["X-Engine"], headers["X-Sample-Rate"]) == ("fastspeech2", "24000")
    _, _, wav = await post(zh_server.url, {"text": SEED_PAYLOADS[2]})
    assert len(data) / 2 / RATE == pytest.approx(seconds_of_wav(wav), abs=0.01)


async def test_a_job_is_spoken_by_the_neural_voice(zh_server):
    async with aiohttp.ClientSession() as session:
        body = {"text": PARAGRAPH * 3, "voice": "female", "format": "wav"}
        async with session.post(f"{zh_server.url}/api/tts/jobs", json=body) as response:
            assert response.status == 202, await response.text()
            job_id = (await response.json())["job_id"]
        deadline = time.monotonic() + 120
        while True:
            async with session.get(f"{zh_server.url}/api/tts/jobs/{job_id}") as response:
                doc = await response.json()
            if doc["status"] in ("done", "failed", "cancelled"):
                break
            assert time.monotonic() < deadline, doc
            await asyncio.sleep(0.2)
        assert doc["status"] == "done", doc
        async with session.get(f"{zh_server.url}/api/tts/jobs/{job_id}/audio") as response:
            audio = await response.read()
    samples, rate, _ = decode_wav(audio)
    assert rate == RATE and 0.12 * len(PARAGRAPH) * 3 <= len(samples) / rate
    assert rms(samples) > 0.02


async def test_speed_changes_the_length(zh_server):
    text = "我们一起去公园散步，然后去图书馆看书。"
    lengths = {}
    for speed in (0.5, 1.0, 2.0):
        status, _, body = await post(zh_server.url, {"text": text, "speed": speed})
        assert status == 200
        lengths[speed] = seconds_of_wav(body)
    assert lengths[2.0] < 0.65 * lengths[1.0] and lengths[0.5] > 1.6 * lengths[1.0]


async def test_streaming_starts_after_the_first_unit_and_matches_the_whole(zh_server):
    text = PARAGRAPH * 3  # nine sentences: nine units, two at a time
    async with aiohttp.ClientSession() as session:
        started = time.monotonic()
        body = {"text": text, "speed": 0.9, "stream": True, "format": "pcm"}
        async with session.post(f"{zh_server.url}/api/tts", json=body) as response:
            assert response.headers["Transfer-Encoding"] == "chunked"
            assert response.headers["X-Cache"] == "miss"
            first = await response.content.readexactly(2)
            first_audio_s = time.monotonic() - started
            streamed = first + await response.read()
            total_s = time.monotonic() - started
    assert first_audio_s < total_s / 3
    status, headers, whole = await post(zh_server.url, {"text": text, "speed": 0.9})
    assert (status, headers["X-Cache"]) == (200, "hit-l1")  # the stream was cached whole
    assert streamed == whole[44:]


async def test_the_lead_clause_unit_keeps_the_audio_of_the_uncut_text(zh_server):
    """The paragraph's first clause is a unit of its own (text.split_units): the pause the
    engine puts after a clause is neither lost nor doubled at that boundary, so the streamed
    audio is the engine's own audio of the sentence units, sample for sample."""
    from inference.mandarin.engine import MandarinVoice
    from inference.options import SynthesisOptions, ThreadPlan
    from tts_server.speech.text import normalize, split_units

    text = normalize(PARAGRAPH)
    units, sentences = split_units(text, 400), split_units(text, 400, lead=False)
    assert units[0] == "国家统计局今天发布数据显示," and len(units) == len(sentences) + 1
    voice = MandarinVoice.load(models.voice_files(built_model()), ThreadPlan())
    expected = b"".join(voice.synthesize_unit(s, SynthesisOptions()).tobytes()
                        for s in sentences)
    clause_alone = voice.synthesize_unit(units[0], SynthesisOptions())
    body = {"text": PARAGRAPH + "再见。", "stream": True, "format": "pcm"}  # not cached
    status, headers, streamed = await post(zh_server.url, body)
    assert (status, headers["X-Engine"]) == (200, "fastspeech2")
    tail = voice.synthesize_unit("再见。", SynthesisOptions()).tobytes()
    assert streamed == expected + tail
    # the 0.2 s clause pause is in it once: right after the first clause's own audio
    pause = streamed[len(clause_alone) * 2:][: int(0.2 * RATE) * 2]
    assert len(pause) == int(0.2 * RATE) * 2 and not any(pause)


async def test_a_400_character_unit_at_speed_025_fits_the_slab(zh_server):
    # Numbers read out are the longest audio per character: ~20 MB at 24 kHz, more than
    # Piper's 16 MiB slab (pool.mandarin_shm_slab_bytes holds it).
    text = ("2024年10月15日，销售额达到123456789元，同比增长12.5%，" * 20)[:399] + "。"
    status, headers, body = await post(zh_server.url, {"text": text, "speed": 0.25,
                                                       "format": "pcm"})
    assert (status, headers.get("X-Engine")) == (200, "fastspeech2"), body[:200]
    assert len(body) > 16 * 1024 * 1024


# ---- failures -----------------------------------------------------------------------------------


async def readyz(url: str) -> dict:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{url}/readyz") as response:
            return await response.json()


async def test_a_worker_killed_mid_request_is_retried_on_the_neural_voice(zh_server):
    # Two long sentences: two units of ~1 s of synthesis each, one per worker.
    sentence = "，".join(["各地区各部门认真落实稳就业政策，城镇新增就业人数保持稳定"] * 3)
    text = f"{sentence}。{sentence}！"
    restarts = (await readyz(zh_server.url))["pools"]["fastspeech2"]["restarts"]

    async def kill_while_busy() -> None:
        deadline = time.monotonic() + 10
        while not (await readyz(zh_server.url))["pools"]["fastspeech2"]["busy_workers"]:
            assert time.monotonic() < deadline, "the units never started"
            await asyncio.sleep(0.01)
        for pid in zh_server.worker_pids("fastspeech2"):
            os.kill(pid, signal.SIGKILL)

    (status, headers, body), _ = await asyncio.gather(
        post(zh_server.url, {"text": text, "voice": "female"}), kill_while_busy())
    assert (status, headers["X-Engine"]) == (200, "fastspeech2"), body[:200]
    assert seconds_of_wav(body) > 0.12 * len(text)
    assert "retrying unit" in zh_server.log()
    # Audio from the fallback is never cached: a hit now proves every unit was neural.
    status, headers, again = await post(zh_server.url, {"text": text, "voice": "female"})
    assert (headers["X-Cache"], again) == ("hit-l1", body)
    deadline = time.monotonic() + 60
    while (doc := await readyz(zh_server.url))["status"] != "ready":
        assert time.monotonic() < deadline
        await asyncio.sleep(0.2)
    assert doc["pools"]["fastspeech2"]["restarts"] >= restarts + 2


def corrupt_copy(target: Path, rewrite_manifest: bool) -> None:
    """The build copied into `target`, its acoustic model overwritten with other bytes of
    the same size; with rewrite_manifest the manifest is made to agree (a build that
    checks out but will not load)."""
    source = built_model().folder
    copy = target / source.name
    shutil.copytree(source, copy)
    acoustic = copy / models.ACOUSTIC_FILE
    acoustic.write_bytes(b"\x00not an onnx model" * (acoustic.stat().st_size // 18)
                         + b"\x00" * (acoustic.stat().st_size % 18))
    if rewrite_manifest:
        manifest = json.loads((copy / models.MANIFEST_FILE).read_text())
        manifest["outputs"]["acoustic"]["sha256"] = models.sha256_file(acoustic)
        (copy / models.MANIFEST_FILE).write_text(json.dumps(manifest))


@pytest.mark.parametrize(("rewrite_manifest", "expected_log"), [
    (False, "is corrupted: its SHA-256 differs"),
    (True, "pool cannot start"),
])
async def test_a_corrupted_model_falls_back_to_espeak_with_a_log_line(
        running_server, tmp_path, rewrite_manifest, expected_log):
    corrupt_copy(tmp_path, rewrite_manifest)
    server = running_server({
        **ACCEPTED,
        # fp32: the INT8 copy would be rebuilt in the empty models_dir (20 s).
        "voices": {"accept_noncommercial": True, "models_dir": str(tmp_path),
                   "precision": "fp32"},
        "pool": {"workers": 1, "mandarin_workers": 1},
    })
    status, headers, body = await post(server.url, {"text": SEED_PAYLOADS[0],
                                                    "voice": "female"})
    assert (status, headers["X-Engine"], headers["X-Voice"]) == (200, "espeak",
                                                                 "espeak-zh-female")
    log = server.log()
    assert expected_log in log and "Chinese falls back to espeak-ng" in log
    assert "non-commercial voices active: none" in log
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{server.url}/api/voices") as response:
            names = {v["name"] for v in (await response.json())["voices"]}
    assert VOICE not in names


# ---- the licence switch and the cache identity (no server needed) -----------------------------


def registry(**voices: object) -> VoiceRegistry:
    settings = load_settings(environ={})  # fp32: no INT8 copy to build for this
    return VoiceRegistry.from_settings(
        settings.replace(voices={"precision": "fp32", **voices}).voices)


def test_without_accepting_the_licence_the_voice_is_absent_and_chinese_is_espeak():
    off = registry()
    assert VOICE not in off.voices
    assert off.route("female", "zh").name == "espeak-zh-female"
    assert off.route(None, "zh").name == "espeak-zh-female"
    assert "none (voices.accept_noncommercial = false)" in off.noncommercial_summary()


def test_accepted_voice_is_keyed_by_the_model_hash_and_falls_back_to_espeak():
    built = built_model()
    on = registry(accept_noncommercial=True)
    voice = on.voices[VOICE]
    assert voice.model_id == models.model_id(built)
    assert built.model_sha256[:16] in voice.model_id
    assert on.fallback_for(voice).name == "espeak-zh-female"
    assert on.route("male", "zh").name == "espeak-zh-male"
    assert on.remove_engine("fastspeech2") == [VOICE]
    assert on.route("female", "zh").name == "espeak-zh-female"


async def test_word_timings_name_the_characters_and_numbers_as_written(zh_server):
    text = "新闻播报：今天10:30，气温２５℃，涨幅15%。ＡＩ技术发展很快！"
    status, headers, body = await post(zh_server.url, {"text": text, "timestamps": "words"})
    assert status == 200 and headers["X-Engine"] == "fastspeech2"
    doc = json.loads(body)
    assert doc["sample_rate"] == 24000
    heard = [w["text"] for w in doc["words"]]
    assert heard[:6] == ["新", "闻", "播", "报", "今", "天"]
    assert {"10:30", "２５", "℃", "15%", "ＡＩ"} <= set(heard)  # full-width kept as sent
    for word in doc["words"]:
        assert text[word["start_char"]:word["end_char"]] == word["text"]
        assert 0 <= word["start_s"] <= word["end_s"] <= doc["duration_s"] + 1e-3
    starts = [w["start_s"] for w in doc["words"]]
    assert starts == sorted(starts)
    status, headers, body = await post(zh_server.url, {"text": text, "captions": "srt"})
    assert status == 200
    cues = [block.split("\n")[2] for block in body.decode().split("\n\n") if block.strip()]
    # Long cues are cut at the last comma before 6 s; the text is the client's own.
    assert "".join(cues) == text and cues[-1] == "ＡＩ技术发展很快！"
    assert all(len(cue) <= 30 for cue in cues)
