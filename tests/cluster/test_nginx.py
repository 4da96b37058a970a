"""The generated nginx config against toy upstreams: retries, pass-through of the
instances' answers, nginx's own errors in the server's JSON shape, streaming, the
forwarded address; and the shipped deploy/nginx file is the generator's output."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest

from tests.cluster.conftest import NGINX, needs_nginx
from tests.cluster.upstreams import ToyUpstream
from tts_server.cluster.nginx import PROXY_BIND, NginxProcess, Site, render_main, render_site
from tts_server.cluster.processes import free_port

pytestmark = needs_nginx
REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "deploy" / "nginx" / "tts-server.conf"


class Proxy:
    def __init__(self, nginx: NginxProcess) -> None:
        self.nginx = nginx
        self.url = f"http://127.0.0.1:{nginx.listen_port}"

    async def split_post(self, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        """A POST whose body leaves 50 ms after its headers (a separate TCP segment)."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.nginx.listen_port)
        writer.write(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(body)
        await writer.drain()
        raw = await reader.read()
        writer.close()
        head, _, payload = raw.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
        return int(lines[0].split()[1]), headers, payload


ProxyFactory = Callable[..., Proxy]


@pytest.fixture
async def proxy(tmp_path: Path) -> AsyncIterator[ProxyFactory]:
    started: list[NginxProcess] = []

    def start(upstreams: list[ToyUpstream], replace: tuple[str, str] | None = None,
              **options: object) -> Proxy:
        port = free_port()
        site = Site(listen=f"127.0.0.1:{port}", upstreams=tuple(u.address for u in upstreams),
                    request_timeout_s=5, retry_after_s=3, proxy_bind=PROXY_BIND,
                    **options)  # type: ignore[arg-type]
        nginx = NginxProcess(NGINX, tmp_path / f"nginx{len(started)}", site, port,
                             worker_processes="1")
        if replace is not None:  # a variant of the generated config, to show why it is not
            original = nginx.write_config
            nginx.write_config = lambda: _patched(original(), *replace)  # type: ignore
        started.append(nginx)
        return Proxy(nginx.start())

    yield start
    for nginx in started:
        nginx.stop(timeout_s=5)
        assert nginx.child is not None and not nginx.child.leftovers()


def _patched(path: Path, old: str, new: str) -> Path:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))
    return path


@pytest.fixture
async def upstreams() -> AsyncIterator[Callable[..., ToyUpstream]]:
    made: list[ToyUpstream] = []

    async def make(**kwargs: object) -> ToyUpstream:
        made.append(await ToyUpstream(**kwargs).start())  # type: ignore[arg-type]
        return made[-1]

    yield make  # type: ignore[misc]
    for upstream in made:
        await upstream.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


# ---- the shipped file ---------------------------------------------------------------------


def test_shipped_config_is_what_the_generator_prints():
    """deploy/nginx/tts-server.conf is regenerated, never edited by hand: its own header
    names the command, and this test runs that command."""
    command = [sys.executable, "-m", "tts_server.cluster", "nginx-conf", "--listen", "80",
               "--upstream", "10.0.0.11:8080", "--upstream", "10.0.0.12:8080",
               "--upstream", "10.0.0.13:8080"]
    printed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=True)
    assert SHIPPED.read_text() == printed.stdout


def test_shipped_config_passes_nginx_t(tmp_path: Path):
    main = render_main(SHIPPED.read_text(), tmp_path)
    (tmp_path / "temp").mkdir()
    (tmp_path / "nginx.conf").write_text(main)
    result = subprocess.run([NGINX, "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"),
                             "-e", str(tmp_path / "error.log")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_timeouts_follow_the_request_deadline():
    text = render_site(Site(listen="80", upstreams=("a:1", "b:2", "c:3"), request_timeout_s=95.5,
                            max_body_bytes=2_000_000))
    assert "proxy_read_timeout 106s;" in text  # the server's own 503 comes first
    assert text.count("proxy_next_upstream_timeout 96s;") == 2
    assert text.count("proxy_next_upstream_tries 3;") == 2
    assert "client_max_body_size 1954k;" in text


# ---- retries --------------------------------------------------------------------------------


async def test_a_dropped_connection_is_retried_on_the_next_instance(proxy, upstreams):
    dropper, good = await upstreams(mode="drop"), await upstreams(mode="ok")
    front = proxy([dropper, good])
    for _ in range(4):
        status, _, body = await front.split_post("/api/tts", b'{"text": "hi"}')
        assert status == 200 and json.loads(body)["port"] == good.port
    assert dropper.received, "least_conn never chose the dropping instance"


async def test_without_request_buffering_a_dropped_post_is_lost(proxy, upstreams):
    """Why proxy_request_buffering stays on: with it off, a body that arrives after the
    headers makes the request non-retryable once sent (nginx 1.22)."""
    dropper, good = await upstreams(mode="drop"), await upstreams(mode="ok")
    front = proxy([dropper, good], replace=("proxy_request_buffering on;",
                                            "proxy_request_buffering off;"))
    statuses = [(await front.split_post("/api/tts", b'{"text": "hi"}'))[0] for _ in range(4)]
    assert 503 in statuses  # nginx's 502, in our JSON shape


async def test_a_job_submission_is_not_repeated_once_sent(proxy, upstreams):
    dropper, good = await upstreams(mode="drop"), await upstreams(mode="ok")
    front = proxy([dropper, good])
    outcomes = [await front.split_post("/api/tts/jobs", b'{"text": "hi"}') for _ in range(4)]
    lost = [(h, b) for s, h, b in outcomes if s != 200]
    assert len(dropper.received) == len(lost) >= 1
    for headers, body in lost:  # the client learns it must retry (with its Idempotency-Key)
        assert headers["retry-after"] == "3"
        assert json.loads(body)["error"]["code"] == "unavailable"


async def test_a_503_is_retried_and_the_last_one_passed_through(proxy, upstreams, session):
    shed = {"status": 503, "headers": {"Retry-After": "7", "Content-Type": "application/json"},
            "body": b'{"error": {"code": "shedding", "message": "busy"}}'}
    first, second = await upstreams(mode="status", **shed), await upstreams(mode="status", **shed)
    front = proxy([first, second])
    async with session.post(front.url + "/api/tts", json={"text": "hi"}) as response:
        assert response.status == 503
        assert response.headers["Retry-After"] == "7"
        assert (await response.json())["error"]["code"] == "shedding"
    assert len(first.received) == len(second.received) == 1  # each instance once

    good = await upstreams(mode="ok")
    front = proxy([await upstreams(mode="status", **shed), good])
    for _ in range(3):
        async with session.post(front.url + "/api/tts", json={"text": "hi"}) as response:
            assert response.status == 200


async def test_a_429_is_not_retried(proxy, upstreams, session):
    limited = await upstreams(mode="status", status=429,
                              headers={"Retry-After": "1", "Content-Type": "application/json"},
                              body=b'{"error": {"code": "rate_limited", "message": "slow"}}')
    other = await upstreams(mode="ok")
    front = proxy([limited, other], max_fails=100)
    answers = []
    for _ in range(6):
        async with session.post(front.url + "/api/tts", json={"text": "hi"}) as response:
            answers.append((response.status, response.headers.get("Retry-After")))
    assert (429, "1") in answers
    assert len(other.received) + len(limited.received) == 6  # nothing sent twice


async def test_no_instance_left_gives_a_json_503_with_retry_after(proxy, session):
    gone = [ToyUpstream(port=free_port()), ToyUpstream(port=free_port())]  # nothing listens
    front = proxy(gone)
    async with session.post(front.url + "/api/tts", json={"text": "hi"}) as response:
        assert response.status == 503
        assert response.headers["Retry-After"] == "3"
        assert (await response.json())["error"]["code"] == "unavailable"
        assert response.headers["Server"] == "nginx"  # no version


# ---- what passes and what does not ----------------------------------------------------------


async def test_forwarded_for_is_the_real_client_and_cannot_be_spoofed(proxy, upstreams):
    echo = await upstreams(mode="ok")
    front = proxy([echo])
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.3", 0))
    async with aiohttp.ClientSession(connector=connector) as client:
        async with client.post(front.url + "/api/tts", json={"text": "hi"},
                               headers={"X-Forwarded-For": "6.6.6.6"}) as response:
            seen = await response.json()
    assert seen["x-forwarded-for"] == "127.0.0.3"
    assert seen["peer"] == PROXY_BIND  # what the instances trust (auth.trusted_proxies)


async def test_nginx_own_limits_and_metrics_answer_json(proxy, upstreams, session):
    echo = await upstreams(mode="ok")
    front = proxy([echo], max_body_bytes=4096)
    async with session.post(front.url + "/api/tts", data=b"x" * 8192,
                            headers={"Content-Type": "application/json"}) as response:
        assert response.status == 413
        assert (await response.json())["error"]["code"] == "body_too_large"
    async with session.get(front.url + "/metrics") as response:
        assert response.status == 404
        assert (await response.json())["error"]["code"] == "not_found"
    assert not echo.received


async def test_a_stream_leaves_nginx_chunk_by_chunk(proxy, upstreams, session):
    streamer = await upstreams(mode="stream", chunks=3, chunk_delay_s=0.5)
    front = proxy([streamer])
    started = time.monotonic()
    arrivals = []
    async with session.post(front.url + "/api/tts", json={"text": "hi", "stream": True}) as resp:
        async for _ in resp.content.iter_any():
            arrivals.append(time.monotonic() - started)
    assert arrivals[0] < 0.3 and arrivals[-1] > 0.9


async def test_a_slow_reader_slows_the_instance_instead_of_filling_a_temp_file(proxy, upstreams):
    """proxy_buffering off: nginx passes back-pressure on, so a stream nobody reads stops the
    instance's writes (and an abandoned stream is noticed); with buffering on, nginx would
    read the whole 64 MB ahead into a temp file."""
    flood = await upstreams(mode="flood", flood_bytes=64 << 20)
    front = proxy([flood])
    reader, writer = await asyncio.open_connection("127.0.0.1", front.nginx.listen_port)
    writer.write(b"GET /api/x HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    await asyncio.sleep(2.0)  # read nothing
    assert flood.flood_done_s is None
    writer.close()


async def test_instances_all_marked_failed_are_still_asked(proxy, upstreams, session):
    """Passive health counts 503s as failures: once every instance shed a few requests,
    each is out for fail_timeout. nginx must still pass their own answers on (the backup
    entries), not answer "no live upstreams" itself."""
    shed = {"status": 503, "headers": {"Retry-After": "7", "Content-Type": "application/json"},
            "body": b'{"error": {"code": "shedding", "message": "busy"}}'}
    first, second = await upstreams(mode="status", **shed), await upstreams(mode="status", **shed)
    front = proxy([first, second], max_fails=1)
    for _ in range(4):
        async with session.post(front.url + "/api/tts", json={"text": "hi"}) as response:
            assert response.status == 503
            assert (await response.json())["error"]["code"] == "shedding"
            assert response.headers["Retry-After"] == "7"
