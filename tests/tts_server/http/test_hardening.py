"""Regression tests of the adversarial report's bad-input bugs (RELIABILITY.md, B1-B18), each
against a real server over real HTTP (raw sockets where a client library would refuse)."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import re
import socket
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from tests.support import ServerProcess, decode_wav, merged, write_config

FULL, PLAIN, METRICS = "full-secret-token", "plain-secret-token", "metrics-secret-token"
# "plain" may synthesize and run jobs but not stream.
TIERS = {
    "standard": {"requests_per_s": 1000.0, "burst": 1000, "chars_per_min": 10_000_000},
    "plain": {"requests_per_s": 1000.0, "burst": 1000, "features": ["tts", "jobs"]},
    "anonymous": {"requests_per_s": 1000.0, "burst": 1000, "chars_per_min": 10_000_000},
}


def entry(name: str, token: str, tier: str) -> dict[str, str]:
    return {"name": name, "tier": tier, "sha256": hashlib.sha256(token.encode()).hexdigest()}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Tokens and anonymous callers side by side; /metrics needs a token."""
    folder = tmp_path_factory.mktemp("hardening")
    overrides: dict[str, dict[str, Any]] = {
        "auth": {"allow_anonymous": True, "metrics_access": "token",
                 "tokens": [entry("full", FULL, "standard"), entry("plain", PLAIN, "plain"),
                            entry("metrics", METRICS, "standard")]},
        "limits": {"tiers": TIERS},
        "jobs": {"max_text_chars": 20_000, "poll_interval_s": 0.1},
    }
    process = ServerProcess(write_config(folder / "config.toml", merged(overrides)),
                            folder / "server.log")
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


async def call(url: str, method: str, path: str, **kwargs: Any) -> tuple[int, Any, bytes]:
    async with aiohttp.ClientSession() as session:
        async with session.request(method, url + path, **kwargs) as response:
            return response.status, response.headers.copy(), await response.read()


def error_code(body: bytes) -> str:
    return json.loads(body)["error"]["code"]


def raw_exchange(port: int, request: bytes, timeout_s: float = 10.0) -> bytes:
    """Send bytes as they are; everything the server answers until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def split_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


POST_ROUTES = (("/api/tts", {"text": "hi"}),
               ("/v1/audio/speech", {"model": "tts-1", "voice": "alloy", "input": "hi"}),
               ("/api/tts/jobs", {"text": "hi"}))


# ---- B1, B2, B3: bodies ----------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/tts", "/api/tts/jobs"])
@pytest.mark.parametrize("value", [["wav"], {}, {"wav": 1}])
async def test_format_as_a_list_or_object_is_400_invalid_format(server, path, value):
    status, _, body = await call(server.url, "POST", path, json={"text": "hi", "format": value},
                                 headers=bearer(FULL))
    assert (status, error_code(body)) == (400, "invalid_format")


@pytest.mark.parametrize(("path", "valid"), POST_ROUTES)
async def test_deep_nesting_and_huge_integers_are_400_invalid_json(server, path, valid):
    bodies = ["[" * 10_000 + "]" * 10_000,
              '{"a":' * 5_000 + "1" + "}" * 5_000,
              json.dumps(valid)[:-1] + ', "speed": ' + "1" * 5_000 + "}"]
    for raw in bodies:
        status, _, body = await call(server.url, "POST", path, data=raw.encode(),
                                     headers={"Content-Type": "application/json", **bearer(FULL)})
        assert status == 400, raw[:40]
        assert error_code(body) == "invalid_json"
        assert len(body) < 1024


# ---- B14: limits after NFKC -------------------------------------------------------------------


async def test_text_growing_past_the_limit_under_nfkc_is_413(server):
    text = "\ufdfa" * 5_000  # 18 characters each after NFKC: 90,000
    for path, limit in (("/api/tts", 5_000), ("/api/tts/jobs", 20_000)):
        status, _, body = await call(server.url, "POST", path, json={"text": text},
                                     headers=bearer(FULL))
        assert (status, error_code(body)) == (413, "text_too_long"), path
        assert str(limit) in json.loads(body)["error"]["message"]


# ---- B8: punctuation-only sentences in jobs ---------------------------------------------------


async def wait_job(url: str, job_id: str, timeout_s: float = 90.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        status, _, body = await call(url, "GET", f"/api/tts/jobs/{job_id}", headers=bearer(FULL))
        assert status == 200, body
        doc = json.loads(body)
        if doc["status"] in ("done", "failed", "cancelled"):
            return doc
        assert time.monotonic() < deadline, doc
        await asyncio.sleep(0.2)


@pytest.mark.parametrize("text", ["One.\n—\nTwo.", "Hello. ... ! ? Bye.", "A. 。 B."])
async def test_a_job_with_a_punctuation_only_sentence_is_done_and_decodes(server, text):
    status, _, body = await call(server.url, "POST", "/api/tts/jobs", json={"text": text},
                                 headers=bearer(FULL))
    assert status == 202, body
    doc = await wait_job(server.url, json.loads(body)["job_id"])
    assert doc["status"] == "done", doc
    status, _, audio = await call(server.url, "GET", f"/api/tts/jobs/{doc['job_id']}/audio",
                                  headers=bearer(FULL))
    assert status == 200
    samples, rate, _ = decode_wav(audio)
    assert rate == 22050 and len(samples) / rate > 0.3


# ---- B4, B5: job fields -------------------------------------------------------------------


@pytest.mark.parametrize("url", ["http://[::1", "http://[zz]/", "http://h:99999/", "ftp://h/"])
async def test_a_malformed_callback_url_is_400(server, url):
    status, _, body = await call(server.url, "POST", "/api/tts/jobs",
                                 json={"text": "hi", "callback_url": url}, headers=bearer(FULL))
    assert (status, error_code(body)) == (400, "invalid_callback_url")


@pytest.mark.parametrize("limit", ["²", "١٢", "５", "-1", "0", "101", "1e2"])
async def test_a_non_ascii_or_out_of_range_limit_is_400(server, limit):
    status, _, body = await call(server.url, "GET", "/api/tts/jobs", params={"limit": limit},
                                 headers=bearer(FULL))
    assert (status, error_code(body)) == (400, "invalid_limit")


# ---- B7, B15, B16: static files, counted right, no version ------------------------------------


async def metric_value(url: str, pattern: str) -> float:
    status, _, body = await call(url, "GET", "/metrics", headers=bearer(METRICS))
    assert status == 200
    found = re.search(pattern + r" ([0-9.e+]+)", body.decode())
    return float(found.group(1)) if found else 0.0


async def test_static_misses_are_json_404s_counted_and_logged_as_404(server):
    series = r'tts_requests_total\{engine="",route="/static/\{name\}",status="404"[^}]*\}'
    before = await metric_value(server.url, series)
    for path in ("/static/missing.js", "/static/" + "a/" * 3000, "/static/" + "b" * 300,
                 "/static/../config.toml", "/static/%2e%2e/config.toml"):
        status, headers, body = await call(server.url, "GET", path)
        assert status == 404, path
        assert headers["Content-Type"].startswith("application/json")
        assert error_code(body) == "not_found"
    assert await metric_value(server.url, series) - before >= 3  # "..": normalized away
    log = server.log()
    assert "GET /static/missing.js 404" in log
    assert "a/" * 200 not in log  # logged paths are cut short too
    status, headers, body = await call(server.url, "GET", "/static/app.js")
    assert status == 200 and len(body) > 1000


async def test_no_version_in_the_server_header(server):
    for method, path in (("GET", "/healthz"), ("GET", "/static/app.js"), ("GET", "/nope")):
        _, headers, _ = await call(server.url, method, path)
        assert headers["Server"] == "tts-server", path
    status, headers, _ = split_response(raw_exchange(server.port, b"FOO / HTTP/1.1\r\n\r\n"))
    assert status == 400 and headers["server"] == "tts-server"


# ---- B17: protocol errors --------------------------------------------------------------------


@pytest.mark.parametrize("request_bytes", [
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: " + b"a" * 10_000 + b"\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",
    b"get /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /healthz HTTP/1.9\r\nHost: x\r\n\r\n",
    b"POST /api/tts HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
    b"GET /" + b"u" * 9_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40,
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
])
async def test_unparseable_requests_get_a_json_400_that_quotes_nothing(server, request_bytes):
    status, headers, body = split_response(raw_exchange(server.port, request_bytes))
    assert status == 400
    assert headers["content-type"].startswith("application/json")
    assert headers["connection"] == "close"
    assert error_code(body) == "bad_http_request"
    assert b"aaaa" not in body and b"uuuu" not in body and b"\\x" not in body
    assert (await call(server.url, "GET", "/healthz"))[0] == 200


# ---- B18: bounded echoes ---------------------------------------------------------------------


async def test_error_messages_quote_client_input_only_briefly(server):
    long_name = "v" * 100_000
    status, _, body = await call(server.url, "POST", "/api/tts",
                                 json={"text": "hi", "voice": long_name})
    assert (status, error_code(body)) == (400, "unknown_voice")
    assert len(body) < 2048
    status, _, body = await call(server.url, "POST", "/v1/audio/speech",
                                 json={"model": "tts-1", "voice": long_name, "input": "hi"})
    assert status == 400 and len(body) < 2048 and "vvvv" in body.decode()
    status, _, body = await call(server.url, "POST", "/v1/audio/speech",
                                 json={"model": "m" * 100_000, "voice": "alloy", "input": "hi"})
    assert status == 400 and len(body) < 2048


# ---- B6, B12: tokens and policies --------------------------------------------------------------


async def test_non_utf8_bearer_bytes_are_401_invalid_token(server):
    request = (b"GET /api/voices HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\xfd\r\n"
               b"Connection: close\r\n\r\n")
    status, headers, body = split_response(raw_exchange(server.port, request))
    assert (status, error_code(body)) == (401, "invalid_token")
    assert headers["www-authenticate"].startswith("Bearer")
    assert "UnicodeEncodeError" not in server.log()


async def test_the_token_policy_needs_a_valid_token_even_with_anonymous_callers(server):
    assert (await call(server.url, "GET", "/api/voices"))[0] == 200  # anonymous may call the API
    status, _, body = await call(server.url, "GET", "/metrics")
    assert (status, error_code(body)) == (401, "missing_token")
    status, _, body = await call(server.url, "GET", "/metrics", headers=bearer("wrong"))
    assert (status, error_code(body)) == (401, "invalid_token")
    assert (await call(server.url, "GET", "/metrics", headers=bearer(METRICS)))[0] == 200


# ---- B11: /v1 and the stream feature -----------------------------------------------------------


async def test_v1_honours_the_stream_feature(server):
    speech = {"model": "tts-1", "voice": "alloy", "input": "Hello there.", "response_format": "wav"}
    status, _, body = await call(server.url, "POST", "/v1/audio/speech",
                                 json={**speech, "stream_format": "sse"}, headers=bearer(PLAIN))
    assert status == 403
    assert json.loads(body)["error"]["code"] == "feature_not_allowed"
    assert json.loads(body)["error"]["type"] == "permission_error"
    status, headers, audio = await call(server.url, "POST", "/v1/audio/speech", json=speech,
                                        headers=bearer(PLAIN))
    assert status == 200 and "Transfer-Encoding" not in headers
    assert int(headers["Content-Length"]) == len(audio)
    samples, rate, _ = decode_wav(audio)
    assert rate == 22050 and len(samples) > 0
    status, headers, streamed = await call(server.url, "POST", "/v1/audio/speech", json=speech,
                                           headers=bearer(FULL))
    assert status == 200 and headers["Transfer-Encoding"] == "chunked"
    assert streamed[:4] == b"RIFF"


async def test_openai_sdk_works_for_a_tier_without_stream(server):
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=f"{server.url}/v1", api_key=PLAIN)
    response = await client.audio.speech.create(model="tts-1", voice="alloy", input="Hi there.",
                                                response_format="wav")
    samples, rate, _ = decode_wav(io.BytesIO(response.read()).getvalue())
    assert rate == 22050 and len(samples) > 0
    await client.close()


# ---- the one local user ------------------------------------------------------------------------


async def test_a_loopback_server_without_tokens_serves_its_local_user_the_job_api(
        running_server):
    local = running_server({"pool": {"workers": 1}})
    status, _, body = await call(local.url, "POST", "/api/tts/jobs", json={"text": "Hello."})
    assert status == 202, body
    job_id = json.loads(body)["job_id"]
    status, _, body = await call(local.url, "GET", f"/api/tts/jobs/{job_id}")
    assert status == 200 and json.loads(body)["job_id"] == job_id


def test_anonymous_callers_elsewhere_keep_their_tier_rules():
    from tts_server.config import Settings
    from tts_server.gateway import Gateway
    from tts_server.gateway.auth import Identity

    anonymous = Identity("anonymous@10.0.0.9", "anonymous", "ip:10.0.0.9")
    public = Settings().replace(server={"host": "0.0.0.0"}, auth={"allow_anonymous": True})
    assert not Gateway(public).may_use(anonymous, "jobs")
    assert Gateway(public).may_use(anonymous, "stream")
    assert Gateway(Settings()).may_use(anonymous, "jobs")  # loopback, no token: the local user
    with_tokens = Settings().replace(auth={"allow_anonymous": True, "tokens_file": "/dev/null"})
    assert not Gateway(with_tokens).may_use(anonymous, "jobs")


# ---- B22: one warning per limiter outage ----------------------------------------------------


async def test_an_unreachable_limiter_redis_warns_once_not_per_request(running_server):
    from tests.support import free_port

    dead = f"redis://127.0.0.1:{free_port()}/0"
    server = running_server({"pool": {"workers": 1}, "cache": {"redis": "off"},
                             "limits": {"backend": "redis", "redis": dead}})
    statuses = [(await call(server.url, "GET", "/api/voices"))[0] for _ in range(20)]
    assert statuses == [200] * 20  # on_redis_error = "local": the local limiter answers
    assert server.log().count("rate limiter: redis unreachable") == 1


async def test_expect_100_continue_works_and_other_expectations_get_json_417(server):
    request = (b"POST /api/tts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               b"Expect: teapot-" + b"q" * 500 + b"\r\nContent-Length: 2\r\n\r\n{}")
    status, headers, body = split_response(raw_exchange(server.port, request))
    assert (status, error_code(body)) == (417, "expectation_failed")
    assert b"qqqq" not in body and headers["server"] == "tts-server"
    body = json.dumps({"text": "Continue."}).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(b"POST /api/tts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Expect: 100-continue\r\nConnection: close\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body))
        assert sock.recv(64).startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200") and b"RIFF" in answer
