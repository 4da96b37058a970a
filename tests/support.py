"""Test helpers: a real server process on a free loopback port, and audio checks."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path
from typing import Any

import soundfile

from tts_server.config import deep_update

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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


class ServerProcess:
    """`python -m tts_server` as a child process, as ./run.sh would start it."""

    def __init__(self, config_path: Path, log_path: Path, probe_token: str = "") -> None:
        self.probe_headers = {"Authorization": f"Bearer {probe_token}"} if probe_token else {}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = open(log_path, "wb")
        cmd = [sys.executable, "-m", "tts_server", "--config", str(config_path)]
        self.process = subprocess.Popen(
            [*cmd, "--port", str(self.port)], cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited {self.process.returncode}:\n{self.log()}")
            if self.get_status("/readyz") == 200:
                return
            time.sleep(0.2)
        raise TimeoutError(f"server not ready in {timeout_s}s:\n{self.log()}")

    def get_status(self, path: str) -> int | None:
        try:
            request = urllib.request.Request(self.url + path, headers=self.probe_headers)
            with urllib.request.urlopen(request, timeout=2) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return None

    def worker_pids(self, engine: str = "piper") -> list[int]:
        """The live workers of one engine's pool, as /readyz reports them."""
        request = urllib.request.Request(self.url + "/readyz", headers=self.probe_headers)
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                body = json.load(response)
        except urllib.error.HTTPError as exc:
            body = json.load(exc)
        workers = body["pools"][engine]["workers"]
        return [w["pid"] for w in workers if w["state"] != "dead" and w["pid"]]

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout_s)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            self._log.close()

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def shm_segments(self) -> list[str]:
        return shm_segments_of(self.pid)


def shm_segments_of(pid: int) -> list[str]:
    return [name for name in os.listdir("/dev/shm") if name.startswith(f"tts-{pid}-")]


def decode_wav(data: bytes) -> tuple[Any, int, soundfile.SoundFile]:
    with soundfile.SoundFile(io.BytesIO(data)) as wav:
        samples = wav.read(dtype="int16")
        return samples, wav.samplerate, wav


def plausible_duration(text: str, seconds: float) -> bool:
    """English speech runs at roughly 10-20 characters a second; allow a wide margin."""
    return len(text) / 30 <= seconds <= len(text) / 5 + 0.5
