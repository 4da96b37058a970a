"""Test helpers: configs for real servers (stress/serverproc.py starts them), audio checks."""

from __future__ import annotations

import io
import json
import tomllib
from pathlib import Path
from typing import Any

import soundfile

from stress.serverproc import REPO, ServerProcess, free_port, shm_segments_of
from tts_server.config import deep_update

__all__ = ["REPO", "ServerProcess", "deep_update", "free_port", "shm_segments_of"]


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, dict):
        return "{ " + ", ".join(f'"{k}" = {_toml_value(v)}' for k, v in value.items()) + " }"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return repr(value)


def write_config(path: Path, sections: dict[str, dict[str, Any]]) -> Path:
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in values.items())
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tomllib.loads(path.read_text())  # fail here, not in the server, on a bad test config
    return path


# Deterministic audio (no noise) and short timeouts keep tests exact and quick.
TEST_SECTIONS: dict[str, dict[str, Any]] = {
    "server": {"drain_timeout_s": 10.0, "log_level": "INFO"},
    "pool": {"workers": 2, "restart_backoff_s": 0.2, "stop_timeout_s": 3.0},
    "synthesis": {"noise_scale": 0.0, "noise_w_scale": 0.0},
    # The machine's CPU is the tests' own business: only the ladder's tests turn it on.
    "degradation": {"enabled": False},
}


def merged(overrides: dict[str, dict[str, Any]] | None) -> dict[str, dict[str, Any]]:
    """The repository's config.toml, then the test defaults, then the test's overrides."""
    sections = tomllib.loads((REPO / "config.toml").read_text(encoding="utf-8"))
    for layer in (TEST_SECTIONS, overrides or {}):
        deep_update(sections, layer)
    return sections


def decode_wav(data: bytes) -> tuple[Any, int, soundfile.SoundFile]:
    with soundfile.SoundFile(io.BytesIO(data)) as wav:
        samples = wav.read(dtype="int16")
        return samples, wav.samplerate, wav


def plausible_duration(text: str, seconds: float) -> bool:
    """English speech runs at roughly 10-20 characters a second; allow a wide margin."""
    return len(text) / 30 <= seconds <= len(text) / 5 + 0.5


class Client:
    """One caller of one server, the one HTTP helper of the tests: a real server process
    (`Client.at(url)`) or an in-process app (`Client(test_client)`, see `app_client`)."""

    def __init__(self, session: Any, base_url: str = "", token: str = "") -> None:
        self.session = session
        self.base_url = base_url
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    @classmethod
    def at(cls, session: Any, url: str, token: str = "") -> Client:
        return cls(session, url, token)

    async def call(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any, bytes]:
        """(status, headers, body) of one request; the body is read whole."""
        headers = {**self.headers, **kwargs.pop("headers", None or {})}
        async with self.session.request(method, self.base_url + path, headers=headers,
                                        **kwargs) as response:
            return response.status, response.headers.copy(), await response.read()

    async def post_tts(self, body: Any, path: str = "/api/tts", **kwargs: Any
                       ) -> tuple[int, Any, bytes]:
        return await self.call("POST", path, json=body, **kwargs)

    async def get_json(self, path: str, **kwargs: Any) -> Any:
        status, _, body = await self.call("GET", path, **kwargs)
        return json.loads(body) if body else None


async def post_tts(url: str, body: Any, **kwargs: Any) -> tuple[int, Any, bytes]:
    """One POST /api/tts to a server process on its own connection: (status, headers, body)."""
    import aiohttp

    async with aiohttp.ClientSession() as session:
        return await Client.at(session, url).post_tts(body, **kwargs)


def started_server(folder: Path, overrides: dict[str, dict[str, Any]] | None = None
                   ) -> ServerProcess:
    """A ready server on config.toml + the test sections + `overrides`, logging into
    `folder`; stopped by the caller (module-scoped fixtures)."""
    server = ServerProcess(write_config(folder / "config.toml", merged(overrides)),
                           folder / "server.log")
    try:
        return server.wait_ready()
    except BaseException:
        server.stop()
        raise
