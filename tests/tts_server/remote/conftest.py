"""Upstreams for the remote engine: this server started again (the real thing) and a small
aiohttp app of the test's own for the answers a real server will not give on demand."""

from __future__ import annotations

import asyncio
import math
import os
import signal
import struct
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiohttp import web

from tests.support import ServerProcess, merged, write_config
from tts_server.encoding.wav import wav_header

API_KEY_ENV = "TTS_TEST_UPSTREAM_KEY"
API_KEY = "sk-test-upstream-0123456789"
# The front: one Piper worker (the local fallback), the in-process cache only.
FRONT_SECTIONS: dict[str, dict[str, Any]] = {
    "pool": {"workers": 1},
    "cache": {"redis": "off"},
}
# The upstream: deterministic audio, no cache (every call is a real synthesis).
UPSTREAM_SECTIONS: dict[str, dict[str, Any]] = {"cache": {"enabled": False}}


def entry(base_url: str, **fields: Any) -> dict[str, Any]:
    """An [[engines.remote]] entry speaking as "ada", the upstream's joe voice."""
    return {"name": "gpu", "base_url": base_url, "model": "joe", "voices": {"ada": "alloy"},
            "gender": "male", **fields}


class Servers:
    """Server processes of one test or module, each a front (given entries) or an upstream;
    all stopped at the end (SIGCONT first, in case a test left one stopped)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.started: list[ServerProcess] = []

    def start(self, name: str, sections: dict[str, dict[str, Any]] | None = None,
              entries: list[dict[str, Any]] | None = None, wait: bool = True,
              port: int | None = None) -> ServerProcess:
        layers = {k: dict(v) for k, v in (UPSTREAM_SECTIONS if entries is None
                                          else FRONT_SECTIONS).items()}
        for section, values in (sections or {}).items():
            layers[section] = {**layers.get(section, {}), **values}
        if entries is not None:
            layers["engines"] = {"remote": entries}
        config = write_config(self.folder / f"{name}.toml", merged(layers))
        server = ServerProcess(config, self.folder / f"{name}.log", env={API_KEY_ENV: API_KEY},
                               port=port)
        self.started.append(server)
        return server.wait_ready() if wait else server

    def stop_all(self) -> None:
        for server in self.started:
            if server.process.poll() is None:
                os.kill(server.pid, signal.SIGCONT)
            server.stop()


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Servers]:
    group = Servers(tmp_path)
    yield group
    group.stop_all()


@pytest.fixture(scope="module")
def module_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    group = Servers(tmp_path_factory.mktemp("servers"))
    yield group
    group.stop_all()


# ---- the fault upstream -----------------------------------------------------------------------


def tone_wav(seconds: float, rate: int = 22050, declared_bytes: int | None = None,
             streamed: bool = False) -> bytes:
    """A 220 Hz tone as a 16-bit mono WAV; declared_bytes states another data size,
    streamed the unknown size a streaming server writes."""
    count = max(0, int(seconds * rate))
    samples = (np.sin(np.arange(count) * 2 * math.pi * 220 / rate) * 8000).astype("<i2")
    pcm = samples.tobytes()
    size = len(pcm) if declared_bytes is None else declared_bytes
    return wav_header(rate, None if streamed else size) + pcm


def speech_seconds(text: str) -> float:
    return 0.07 * len(text)


@dataclass
class Call:
    body: dict[str, Any]
    headers: Mapping[str, str]


@dataclass
class FaultUpstream:
    """POST /v1/audio/speech answering as `mode` says; every call is recorded."""

    port: int
    mode: str = "ok"
    retry_after: str = "2"
    # Calls answered normally before `mode` applies (a failure in the middle of a request).
    ok_first: int = 0
    calls: list[Call] = field(default_factory=list)
    # mode "gated": answers wait for this; requests whose client left are counted.
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    abandoned: int = 0
    runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> FaultUpstream:
        app = web.Application()
        app.router.add_post("/v1/audio/speech", self.speech)
        # A stalled answer must end when its client leaves, and teardown must not wait.
        self.runner = web.AppRunner(app, access_log=None, handler_cancellation=True,
                                    shutdown_timeout=1.0)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port, reuse_address=True).start()
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def speech(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.calls.append(Call(body, request.headers.copy()))
        mode = "ok" if len(self.calls) <= self.ok_first else self.mode
        return await ANSWERS[mode](self, body["input"])


async def _ok(up: FaultUpstream, text: str) -> web.Response:
    return web.Response(body=tone_wav(speech_seconds(text)), content_type="audio/wav")


async def _status(status: int, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": {"message": "fault upstream"}}, status=status,
                             headers=headers)


async def _truncated(up: FaultUpstream, text: str) -> web.Response:
    """A header that promises twice the samples that follow (Content-Length is honest)."""
    samples_bytes = len(tone_wav(speech_seconds(text))) - 44
    body = tone_wav(speech_seconds(text), declared_bytes=2 * samples_bytes)
    return web.Response(body=body, content_type="audio/wav")


async def _gated(up: FaultUpstream, text: str) -> web.Response:
    try:
        await up.gate.wait()
    except asyncio.CancelledError:
        up.abandoned += 1
        raise
    return await _ok(up, text)


async def _stalled(up: FaultUpstream, text: str) -> web.Response:
    await asyncio.sleep(3600)
    raise AssertionError("unreachable")


ANSWERS: dict[str, Callable[[FaultUpstream, str], Any]] = {
    "ok": _ok,
    "500": lambda up, text: _status(500),
    "503": lambda up, text: _status(503),
    "400": lambda up, text: _status(400),
    "429": lambda up, text: _status(429, {"Retry-After": up.retry_after}),
    "garbage": lambda up, text: _async(web.Response(body=b"\x00garbage" * 500,
                                                    content_type="audio/wav")),
    "json": lambda up, text: _async(web.json_response({"audio": "none"})),
    "truncated": _truncated,
    "short": lambda up, text: _async(web.Response(body=tone_wav(0.02),
                                                  content_type="audio/wav")),
    "stalled": _stalled,
    "gated": _gated,
}


async def _async(response: web.Response) -> web.Response:
    return response


# ---- client helpers ---------------------------------------------------------------------------


async def post(url: str, path: str, body: dict[str, Any], headers: dict[str, str] | None = None
               ) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession() as session:
        async with session.post(url + path, json=body, headers=headers) as response:
            return response.status, dict(response.headers), await response.read()


async def get_json(url: str, path: str) -> Any:
    async with aiohttp.ClientSession() as session:
        async with session.get(url + path) as response:
            return await response.json()


async def metric(url: str, name: str, **labels: str) -> float:
    """One sample of /metrics (0 when absent)."""
    async with aiohttp.ClientSession() as session:
        async with session.get(url + "/metrics") as response:
            text = await response.text()
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{") or line.startswith(f"{name} "):
            series, _, value = line.rpartition(" ")
            if all(f'{k}="{v}"' in series for k, v in labels.items()) or not wanted:
                return float(value)
    return 0.0


async def remote_pool(url: str, engine: str = "gpu") -> dict[str, Any]:
    return (await get_json(url, "/readyz"))["pools"][engine]


def pcm_of(wav: bytes) -> np.ndarray:
    """The samples of a WAV (ours: sized, or streamed with unknown sizes)."""
    assert wav[:4] == b"RIFF" and wav[36:40] == b"data", wav[:44]
    (rate,) = struct.unpack_from("<I", wav, 24)
    assert rate > 0
    return np.frombuffer(wav[44:], dtype="<i2")
