"""A do-nothing /api/tts for `python -m stress selftest`: its own process, answers at once."""

from __future__ import annotations

import argparse
import asyncio
import socket
import struct
import sys

from aiohttp import web

from . import eventloop

SAMPLE_RATE = 16_000
SILENCE_S = 0.1
_PCM = bytes(int(SAMPLE_RATE * SILENCE_S) * 2)
_WAV_HEADER = (
    b"RIFF"
    + struct.pack("<I", 36 + len(_PCM))
    + b"WAVEfmt "
    + struct.pack("<IHHIIHH", 16, 1, 1, SAMPLE_RATE, SAMPLE_RATE * 2, 2, 16)
    + b"data"
    + struct.pack("<I", len(_PCM))
)
BODY = _WAV_HEADER + _PCM
HEADERS = {
    "Content-Type": "audio/wav",
    "X-Sample-Rate": str(SAMPLE_RATE),
    "X-Audio-Duration": f"{SILENCE_S:.3f}",
}


async def synthesize(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=BODY, headers=HEADERS)


def make_app() -> web.Application:
    app = web.Application()
    app.router.add_post("/api/tts", synthesize)
    return app


async def serve(host: str, port: int) -> None:
    """Serves until killed; prints the bound port on stdout once it listens."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    runner = web.AppRunner(make_app(), access_log=None, handle_signals=False)
    await runner.setup()
    await web.SockSite(runner, sock, backlog=1024).start()
    print(sock.getsockname()[1], flush=True)
    await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stress.trivial_server", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port (default: any free one)")
    args = parser.parse_args(argv)
    eventloop.run(serve(args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
