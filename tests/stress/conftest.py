"""Fixtures: start a local /api/tts app in-process on a free 127.0.0.1 port."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from tests.stress.helpers import Handler, tts_app

StartServer = Callable[[Handler], Awaitable[str]]


@pytest.fixture
def serve(aiohttp_server: Any) -> StartServer:
    """serve(handler) -> base URL of a server whose POST /api/tts runs `handler`."""

    async def start(handler: Handler) -> str:
        server = await aiohttp_server(tts_app(handler), host="127.0.0.1")
        return f"http://127.0.0.1:{server.port}"

    return start
