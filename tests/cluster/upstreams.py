"""Toy HTTP/1.1 upstreams (raw asyncio) that nginx proxies to in the config tests: they
answer, drop the connection after reading a request, answer a fixed status, stream slowly,
or flood a reader, and record what they received."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    peer: str


@dataclass
class ToyUpstream:
    mode: str = "ok"  # ok | drop | status | stream | flood
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    chunks: int = 3
    chunk_delay_s: float = 0.5
    flood_bytes: int = 64 << 20
    port: int = 0
    received: list[Received] = field(default_factory=list)
    flood_done_s: float | None = None
    _server: asyncio.AbstractServer | None = None

    async def start(self) -> ToyUpstream:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")[0]
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {k.strip().lower(): v.strip()
                           for k, _, v in (line.partition(":") for line in lines[1:] if line)}
                length = int(headers.get("content-length", "0"))
                body = await reader.readexactly(length) if length else b""
                self.received.append(Received(method, path, headers, body, peer))
                if not await self._answer(writer, headers, peer):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _answer(self, writer: asyncio.StreamWriter, headers: dict[str, str],
                      peer: str) -> bool:
        if self.mode == "drop":
            return False
        if self.mode == "stream":
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
                         b"Content-Type: audio/wav\r\n\r\n")
            for _ in range(self.chunks):
                writer.write(b"3e8\r\n" + b"x" * 1000 + b"\r\n")
                await writer.drain()
                await asyncio.sleep(self.chunk_delay_s)
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            return True
        if self.mode == "flood":
            started = time.monotonic()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % self.flood_bytes)
            block = b"\0" * (1 << 20)
            for _ in range(self.flood_bytes >> 20):
                writer.write(block)
                await writer.drain()
            self.flood_done_s = time.monotonic() - started
            return True
        if self.mode == "status":
            status, extra, body = self.status, self.headers, self.body
        else:
            status, extra = 200, {"Content-Type": "application/json"}
            body = json.dumps({"port": self.port, "peer": peer,
                               "x-forwarded-for": headers.get("x-forwarded-for")}).encode()
        head = f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in extra.items())
        writer.write(head.encode() + b"\r\n" + body)
        await writer.drain()
        return True
