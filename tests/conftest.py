"""Shared fixtures: config files and real server processes that always clean up."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import Client, ServerProcess, deep_update, free_port, merged, write_config
from tts_server.app import create_app
from tts_server.cache.redis_server import RedisProcess
from tts_server.config import settings_from_dict

ServerFactory = Callable[..., ServerProcess]


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., Path]:
    def make(overrides: dict[str, dict[str, Any]] | None = None, name: str = "config.toml") -> Path:
        return write_config(tmp_path / name, merged(overrides))

    return make


# In-process apps need no second worker: their tests check contracts, not throughput.
IN_PROCESS_SECTIONS: dict[str, dict[str, Any]] = {"pool": {"workers": 1}}


@pytest.fixture
async def app_client(aiohttp_client: Any) -> AsyncIterator[Callable[..., Awaitable[Client]]]:
    """Factory: the real app (create_app and every cleanup context: workers, cache,
    gateway) in this test's event loop behind aiohttp's test client, for contract tests
    (errors, headers, gateway, OpenAI shapes). Lifecycle, signals and kill -9 stay with
    `running_server`, a real process."""

    async def make(overrides: dict[str, dict[str, Any]] | None = None) -> Client:
        layers = dict(IN_PROCESS_SECTIONS)
        deep_update(layers, overrides or {})
        app = create_app(settings_from_dict(merged(layers)))
        return Client(await aiohttp_client(app))

    yield make


@pytest.fixture
def running_server(tmp_path: Path) -> Iterator[ServerFactory]:
    """Factory: start a server with config overrides, wait until ready; stopped at teardown."""
    started: list[ServerProcess] = []

    def start(
        overrides: dict[str, dict[str, Any]] | None = None,
        wait: bool = True,
        probe_token: str = "",
    ) -> ServerProcess:
        index = len(started)
        config = write_config(tmp_path / f"server{index}.toml", merged(overrides))
        server = ServerProcess(config, tmp_path / f"server{index}.log", probe_token)
        started.append(server)
        if wait:
            server.wait_ready()
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One deterministic server for the many tests that only send requests."""
    folder = tmp_path_factory.mktemp("shared_server")
    config = write_config(folder / "config.toml", merged({"text": {"max_text_chars": 2000}}))
    server = ServerProcess(config, folder / "server.log")
    server.wait_ready()
    yield server
    server.stop()


@pytest.fixture
def redis_server() -> Iterator[RedisProcess]:
    """A real redis-server on a free loopback port, stopped at teardown."""
    server = RedisProcess(port=free_port(), allow_debug=True).start()
    yield server
    server.stop()
