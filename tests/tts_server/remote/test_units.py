"""The remote engine's pieces without a server: decoding, Retry-After, body, config, voices."""

from __future__ import annotations

import email.utils
import struct
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.support import REPO
from tests.tts_server.remote.conftest import tone_wav
from tts_server.config import ConfigError, RemoteEngineSettings, Settings, settings_from_dict
from tts_server.encoding.formats import get_format
from tts_server.remote.client import UpstreamError, decode_audio, parse_retry_after, request_body
from tts_server.remote.voices import remote_voices, upstream_identity, with_remote_fallbacks
from tts_server.speech.request import build_request
from tts_server.speech.service import SpeechService
from tts_server.speech.voices import VoiceRegistry


def wav(samples: bytes, rate: int, channels: int = 1, bits: int = 16, tag: int = 1,
        data_size: int | None = None) -> bytes:
    align = channels * bits // 8
    fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * align, align, bits)
    size = len(samples) if data_size is None else data_size
    return (b"RIFF" + struct.pack("<I", 4 + 8 + len(fmt) + 8 + len(samples)) + b"WAVE"
            + b"fmt " + struct.pack("<I", len(fmt)) + fmt
            + b"LIST" + struct.pack("<I", 3) + b"abc\x00"  # an odd chunk, padded
            + b"data" + struct.pack("<I", size) + samples)


def bad_audio(data: bytes, fmt: str = "wav") -> str:
    with pytest.raises(UpstreamError) as caught:
        decode_audio(data, fmt, 22050)
    assert caught.value.outcome == "bad_audio"
    return str(caught.value)


def test_16_bit_mono_at_the_rate_comes_back_untouched():
    samples = np.arange(-500, 500, dtype="<i2").tobytes()
    assert decode_audio(wav(samples, 22050), "wav", 22050) == samples
    streamed = tone_wav(0.5, streamed=True)  # what this server streams
    assert decode_audio(streamed, "wav", 22050) == streamed[44:]


def test_float_stereo_at_another_rate_becomes_mono_at_ours():
    rate = 44100
    t = np.arange(rate) / rate  # one second
    left = (0.5 * np.sin(2 * np.pi * 440 * t)).astype("<f4")
    stereo = np.stack([left, left], axis=1).tobytes()
    pcm = decode_audio(wav(stereo, rate, channels=2, bits=32, tag=3), "wav", 22050)
    out = np.frombuffer(pcm, dtype="<i2")
    assert abs(len(out) - 22050) <= 2
    assert 0.45 < np.abs(out[1000:-1000]).max() / 32768 < 0.55


def test_24_bit_samples_keep_their_sign_and_scale():
    values = [0, 1 << 22, -(1 << 22), (1 << 23) - 1]
    raw = b"".join(v.to_bytes(3, "little", signed=True) for v in values)
    out = np.frombuffer(decode_audio(wav(raw, 22050, bits=24), "wav", 22050), dtype="<i2")
    assert out.tolist() == [0, 16384, -16384, 32767]


def test_broken_answers_are_bad_audio():
    samples = np.zeros(100, dtype="<i2").tobytes()
    assert "truncated" in bad_audio(wav(samples, 22050, data_size=400))
    assert "partial" in bad_audio(wav(samples[:-1], 22050))
    assert "not a WAV" in bad_audio(b"<html>502 Bad Gateway</html>")
    assert "without a data chunk" in bad_audio(wav(samples, 22050)[:48])
    assert "unsupported" in bad_audio(wav(samples, 22050, tag=85))  # MP3 inside RIFF
    assert "odd" in bad_audio(b"\x00" * 11, "pcm")
    assert decode_audio(b"\x01\x00" * 5, "pcm", 24000) == b"\x01\x00" * 5


def test_retry_after_as_seconds_or_date():
    assert parse_retry_after("7") == 7.0
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 28 <= parse_retry_after(when) <= 30.5
    assert parse_retry_after("soon") == 0.0
    assert parse_retry_after(None) == 0.0


def remote(**fields: object) -> RemoteEngineSettings:
    values = {"name": "gpu", "base_url": "http://10.1.2.3:8000", "voices": {"ada": "alloy"},
              **fields}
    return settings_from_dict({"engines": {"remote": [values]}}).engines.remote[0]


def test_request_body_is_the_openai_shape_plus_extra_fields():
    settings = remote(model="index-tts-2", voice_field="ref_audio",
                      extra={"extra_params": {"top_p": 0.8}, "language": "en"})
    body = request_body(settings, "/refs/ada.wav", "Hello.", 1.25)
    assert body == {"model": "index-tts-2", "input": "Hello.", "ref_audio": "/refs/ada.wav",
                    "response_format": "wav", "speed": 1.25,
                    "extra_params": {"top_p": 0.8}, "language": "en"}
    assert "model" not in request_body(remote(), "alloy", "Hi.", 1.0)


@pytest.mark.parametrize(("fields", "message"), [
    ({"base_url": "ftp://gpu"}, "base_url must be http(s)"),
    ({"base_url": "http://gpu:99999"}, "bad port"),
    ({"name": "piper"}, "local engine"),
    ({"name": "GPU box"}, "must be 1-32 of"),
    ({"voices": {}}, "voices must map at least one voice"),
    ({"response_format": "mp3"}, "response_format must be one of"),
    ({"max_concurrent": 0}, "max_concurrent must be 1..256"),
    ({"read_timeout_s": 0}, "read_timeout_s must be > 0"),
    ({"sample_rate": 100}, "sample_rate must be 8000..192000"),
    ({"extra": {"input": "x"}}, "are set by the server"),
    ({"voice_field": "speed"}, "are set by the server"),
    ({"gender": "robot"}, "gender must be"),
    ({"api_key_env": "TTS_TEST_SURELY_UNSET"}, "TTS_TEST_SURELY_UNSET (api_key_env) is not set"),
    ({"colour": "blue"}, "unknown setting(s) in [engines.remote[0]]: colour"),
    ({"max_concurrent": "2"}, "engines.remote[0].max_concurrent must be int"),
])
def test_a_bad_entry_is_one_clear_line(fields, message):
    with pytest.raises(ConfigError) as caught:
        remote(**fields)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_entries_must_not_share_names_or_voices():
    one = {"name": "a", "base_url": "http://h", "voices": {"ada": "x"}}
    with pytest.raises(ConfigError, match=r"name\(s\) \['a'\] used twice"):
        settings_from_dict({"engines": {"remote": [one, {**one, "voices": {"bea": "y"}}]}})
    with pytest.raises(ConfigError, match=r"voice\(s\) \['ada'\] defined twice"):
        settings_from_dict({"engines": {"remote": [one, {**one, "name": "b"}]}})
    with pytest.raises(ConfigError, match="needs base_url"):
        settings_from_dict({"engines": {"remote": [{"name": "a", "voices": {"x": "y"}}]}})


def test_check_config_names_the_bad_entry_in_one_line(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text('[[engines.remote]]\nname = "gpu"\nbase_url = "gpu:8000"\n'
                      'voices = { ada = "alloy" }\n')
    done = subprocess.run([sys.executable, "-m", "tts_server", "check-config", "--config",
                           str(config)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr == ("config error: engines.remote 'gpu': base_url must be "
                           "http(s)://host[:port][/path], got 'gpu:8000'\n")


def test_upstream_identity_covers_url_model_voice_and_extra_not_the_key(monkeypatch):
    base = remote(model="m")
    same = {upstream_identity(base, "alloy"), upstream_identity(remote(model="m"), "alloy")}
    assert len(same) == 1
    monkeypatch.setenv("TTS_TEST_KEY", "secret")
    assert upstream_identity(remote(model="m", api_key_env="TTS_TEST_KEY"), "alloy") in same
    others = {upstream_identity(remote(model="m", base_url="http://10.1.2.4:8000"), "alloy"),
              upstream_identity(remote(model="other"), "alloy"),
              upstream_identity(base, "echo"),
              upstream_identity(remote(model="m", extra={"ref_text": "hi"}), "alloy"),
              upstream_identity(remote(model="m", response_format="pcm"), "alloy")}
    assert len(others) == 5 and not others & same


def registry(*entries: RemoteEngineSettings, **voices: object) -> VoiceRegistry:
    settings = Settings().replace(voices={"precision": "fp32", "genders": {"joe": "male"},
                                          **voices})
    return VoiceRegistry.from_settings(with_remote_fallbacks(settings.voices, entries),
                                       remote=remote_voices(entries))


def test_remote_voices_and_their_local_fallbacks():
    found = registry(
        remote(gender="male", voices={"ada": "alloy"}),
        remote(name="gpu2", gender="female", voices={"bea": "nova"}),
        remote(name="gpu3", language="zh_CN", gender="female", voices={"lin": "x"}),
        remote(name="gpu4", fallback="espeak-en-female", voices={"cai": "y"}),
    )
    ada = found.voices["ada"]
    assert (ada.engine, ada.remote, ada.quality, ada.sample_rate) == ("gpu", True, "remote", 22050)
    assert not found.voices["joe"].remote
    assert found.fallbacks["ada"] == "joe"  # local, same language and gender, neural first
    assert found.fallbacks["bea"] == "espeak-en-female"
    assert found.fallbacks["lin"] == "espeak-zh-female"
    assert found.fallbacks["cai"] == "espeak-en-female"
    assert found.fallbacks["joe"] == "espeak-en-male"  # local voices keep theirs
    assert found.route("ada", "en") is ada


def test_bad_remote_voice_names_stop_the_start():
    with pytest.raises(ConfigError, match=r"voice\(s\) \['joe'\] exist locally"):
        registry(remote(voices={"joe": "alloy"}))
    with pytest.raises(ConfigError, match="voices.fallbacks.ada points to unknown voice 'nope'"):
        registry(remote(fallback="nope"))


def test_two_upstreams_never_share_a_cache_key():
    found = registry(remote(voices={"ada": "alloy"}),
                     remote(name="gpu2", base_url="http://10.9.9.9", voices={"bea": "alloy"}))
    service = SpeechService(None, None, {})  # type: ignore[arg-type]
    settings = Settings()

    def key(voice: str) -> str:
        request = build_request("Hello there.", found.voices[voice], 1.0, None,
                                get_format("wav"), False, settings)
        return service.key_for(request)

    assert len({key("ada"), key("bea"), key("joe")}) == 3


def test_the_ladder_keeps_remote_voices_on_their_upstream_but_an_open_breaker_does_not():
    from tts_server.resilience.breaker import BreakerPolicy, CircuitBreaker
    from tts_server.speech.synthesizer import Synthesizer

    found = registry(remote(gender="male", voices={"ada": "alloy"}))
    breakers = {name: CircuitBreaker(BreakerPolicy(1, 60.0, 60.0)) for name in found.fallbacks}
    engines = {"gpu": None, "piper": None, "espeak": None}  # route() only asks which exist
    synthesizer = Synthesizer(engines, found, breakers, 10.0, 1)  # type: ignore[arg-type]

    def routed(voice: str) -> str:
        request = build_request("Hello there.", found.voices[voice], 1.0, None,
                                get_format("wav"), False, Settings())
        return synthesizer.route(request, prefer_fallback=True).voice.name

    assert routed("joe") == "espeak-en-male"  # the ladder relieves the CPU
    assert routed("ada") == "ada"  # a remote voice costs the CPU nothing
    breakers["ada"].record_failure()
    assert routed("ada") == "joe"
