"""Slowloris clients: open N connections that send request headers one byte per second.

    python -m stress.slowloris --port P [--connections 300] [--source 127.0.0.3] [--seconds 20]

Loopback only. Prints one JSON line: how many connections the server closed, after how long,
and the status line of what it answered before closing (408 header timeout, 429 over the
per-client cap), so a test can check the header deadline from outside the server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

HEAD = b"POST /api/tts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
DRIP = b"X-Slow: " + b"a" * 200


async def one(port: int, source: str, seconds: float, interval_s: float) -> dict[str, Any]:
    started = time.monotonic()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    except OSError as exc:
        return {"closed_after_s": 0.0, "status": None, "error": type(exc).__name__}
    answer = asyncio.create_task(reader.read(4096))
    writer.write(HEAD)
    for byte in DRIP:
        done, _ = await asyncio.wait([answer], timeout=interval_s)
        if done or time.monotonic() - started > seconds:
            break
        try:
            writer.write(bytes([byte]))
        except (ConnectionError, RuntimeError):
            break
    try:
        left_s = max(0.0, seconds - (time.monotonic() - started))
        data = await asyncio.wait_for(answer, timeout=left_s)
    except TimeoutError:
        writer.close()
        return {"closed_after_s": None, "status": None}
    except OSError:
        data = b""
    closed_after = time.monotonic() - started
    writer.close()
    status = data.split(b"\r\n", 1)[0].decode("latin-1") if data else None
    return {"closed_after_s": round(closed_after, 2), "status": status}


async def attack(port: int, connections: int, source: str, seconds: float,
                 interval_s: float) -> dict[str, Any]:
    results = await asyncio.gather(*(one(port, source, seconds, interval_s)
                                     for _ in range(connections)))
    closed = [r["closed_after_s"] for r in results if r["closed_after_s"] is not None]
    statuses: dict[str, int] = {}
    for result in results:
        key = (result["status"] or "no answer").split(" ", 1)[-1][:3]
        statuses[key] = statuses.get(key, 0) + 1
    return {"connections": connections, "closed": len(closed),
            "max_closed_after_s": max(closed, default=None), "statuses": statuses,
            "closed_after_s": sorted(closed)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--connections", type=int, default=300)
    parser.add_argument("--source", default="127.0.0.3", help="a loopback source address")
    parser.add_argument("--seconds", type=float, default=20.0, help="give up after this long")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between bytes")
    args = parser.parse_args(argv)
    if not args.source.startswith("127."):
        parser.error("--source must be a loopback address")
    report = asyncio.run(attack(args.port, args.connections, args.source, args.seconds,
                                args.interval))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
