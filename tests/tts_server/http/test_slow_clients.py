"""Slow clients (RELIABILITY.md B13) against a real server with short deadlines: slowloris
header senders, idle, slow-body and slow-reading connections are closed in time, past the
per-client cap new connections get 429, and a normal client does not notice."""

from __future__ import annotations

import asyncio
import json
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator

import aiohttp
import pytest

from tests.support import REPO, ServerProcess, merged, write_config

HEADER_TIMEOUT_S = 3.0
LIMITS = {"header_timeout_s": HEADER_TIMEOUT_S, "body_timeout_s": 3.0, "write_timeout_s": 3.0,
          "keepalive_timeout_s": 4.0, "linger_s": 1.0, "max_connections_per_client": 100}
NORMAL_CLIENT = "127.0.0.2"  # attackers come from other loopback addresses
CACHED = {"text": "A cached announcement for the latency probe."}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp("slow_clients")
    overrides = {"server": LIMITS, "pool": {"workers": 1},
                 "limits": {"tiers": {"anonymous": {"requests_per_s": 1000.0, "burst": 1000}}}}
    process = ServerProcess(write_config(folder / "config.toml", merged(overrides)),
                            folder / "server.log")
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


async def latencies(url: str, count: int) -> list[float]:
    """A normal client from its own address: healthz and a cached synthesis, one at a time."""
    connector = aiohttp.TCPConnector(local_addr=(NORMAL_CLIENT, 0))
    out = []
    async with aiohttp.ClientSession(connector=connector) as session:
        for _ in range(count):
            started = time.perf_counter()
            async with session.get(f"{url}/healthz") as response:
                assert response.status == 200
            async with session.post(f"{url}/api/tts", json=CACHED) as response:
                assert response.status == 200
                await response.read()
            out.append(time.perf_counter() - started)
            await asyncio.sleep(0.05)
    return out


def run_slowloris(port: int, connections: int, source: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "stress.slowloris", "--port", str(port), "--connections",
         str(connections), "--source", source, "--seconds", str(HEADER_TIMEOUT_S + 12)],
        cwd=REPO, stdout=subprocess.PIPE, text=True)


@pytest.mark.timeout(90)
async def test_300_slowloris_senders_are_closed_in_time_and_a_normal_client_is_unaffected(
        server):
    await latencies(server.url, 3)  # warm: the cached text is synthesized once
    baseline = statistics.median(await latencies(server.url, 40))
    # Three sources of 100, at the cap each, plus 100 more from one of them: refused at once.
    attackers = [run_slowloris(server.port, 100, f"127.0.0.{3 + i}") for i in range(3)]
    extra = run_slowloris(server.port, 100, "127.0.0.3")
    await asyncio.sleep(0.5)
    during = statistics.median(await latencies(server.url, 40))
    reports = [json.loads(p.communicate(timeout=60)[0]) for p in (*attackers, extra)]
    held = reports[:3]
    assert sum(r["closed"] for r in reports) == 400, reports
    for report in held:
        # Those admitted were closed with 408 once the header deadline passed.
        assert report["statuses"].get("408", 0) + report["statuses"].get("429", 0) == 100
        assert report["max_closed_after_s"] <= HEADER_TIMEOUT_S + 2.0, report
    refused = sum(r["statuses"].get("429", 0) for r in reports)
    assert refused == 100  # the cap of 100 per address, whichever connections came last
    # Within 1.5x of the baseline (plus 2 ms for timer granularity at millisecond scale).
    assert during <= 1.5 * baseline + 0.002, (baseline, during)


async def test_idle_and_partial_connections_close_at_the_header_deadline(server):
    started = time.monotonic()
    idle = socket.create_connection(("127.0.0.1", server.port))
    partial = socket.create_connection(("127.0.0.1", server.port))
    partial.sendall(b"GET /healthz HTTP/1.1\r\nHo")
    for sock in (idle, partial):
        sock.settimeout(HEADER_TIMEOUT_S + 3)
        data = sock.recv(4096)
        assert time.monotonic() - started <= HEADER_TIMEOUT_S + 2
        if sock is partial:
            assert data.startswith(b"HTTP/1.1 408") and b"header_timeout" in data
        sock.close()


async def test_kept_alive_connections_close_after_the_idle_timeout(server):
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    sock.settimeout(10)
    assert sock.recv(4096).startswith(b"HTTP/1.1 200")
    started = time.monotonic()
    assert sock.recv(4096) == b""  # closed by the server, with no request pending
    assert LIMITS["keepalive_timeout_s"] - 0.5 <= time.monotonic() - started <= 7
    sock.close()


async def test_a_slow_body_gets_408_and_the_connection_closes(server):
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.sendall(b"POST /api/tts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 100000\r\n\r\n{\"text\": \"")
    sock.settimeout(10)
    started = time.monotonic()
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    assert time.monotonic() - started <= 3.0 + LIMITS["linger_s"] + 1.5
    assert data.startswith(b"HTTP/1.1 408") and b"body_timeout" in data
    assert b"Connection: close" in data
    sock.close()


async def test_a_reader_too_slow_to_drain_the_send_buffer_is_cut_off(server):
    # About 8 MB of WAV: more than loopback's socket buffers hold.
    text = " ".join(f"Sentence {i} makes the answer long enough to fill buffers."
                    for i in range(60))
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{server.url}/api/tts", json={"text": text}) as response:
            size = len(await response.read())  # cached now, and several seconds of audio
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    body = json.dumps({"text": text}).encode()
    sock.sendall(b"POST /api/tts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n" % len(body) + body)
    await asyncio.sleep(LIMITS["write_timeout_s"] + 2)  # read nothing meanwhile
    received = 0
    sock.settimeout(5)
    try:
        while chunk := sock.recv(1 << 16):
            received += len(chunk)
    except ConnectionResetError:
        pass
    sock.close()
    assert 0 < received < size
