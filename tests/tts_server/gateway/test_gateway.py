"""Auth, rate limits and access policies through real HTTP, one or two real servers."""

import asyncio
import hashlib
import signal

import aiohttp
import pytest

VIP, STANDARD = "vip-secret-token", "standard-secret-token"


def token_entry(name: str, token: str, tier: str, **overrides) -> dict:
    return {
        "name": name,
        "tier": tier,
        "sha256": hashlib.sha256(token.encode()).hexdigest(),
        **overrides,
    }


TOKENS = [token_entry("vip-client", VIP, "vip"), token_entry("std-client", STANDARD, "standard")]


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


async def call(url: str, path: str = "/api/voices", method: str = "GET", **kwargs):
    async with aiohttp.ClientSession() as session:
        async with session.request(method, url + path, **kwargs) as response:
            return response.status, response.headers.copy(), await response.read()


async def test_token_matrix(app_client):
    client = await app_client({"auth": {"tokens": TOKENS}})
    status, headers, body = await client.call("GET", "/api/voices")
    assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
    assert b"missing_token" in body
    status, _, body = await client.call("GET", "/api/voices", headers=bearer("wrong"))
    assert status == 401 and b"invalid_token" in body
    status, _, _ = await client.call(
        "GET", "/api/voices", headers={"Authorization": f"Basic {VIP}"}
    )
    assert status == 401
    for token, limit in ((VIP, "100"), (STANDARD, "20")):
        status, headers, _ = await client.call("GET", "/api/voices", headers=bearer(token))
        assert status == 200
        assert headers["X-RateLimit-Limit"] == limit  # the tier's burst
    status, _, body = await client.call(
        "POST", "/api/tts", json={"text": "Hello."}, headers=bearer(STANDARD)
    )
    assert status == 200 and body[:4] == b"RIFF"
    assert (await client.call("GET", "/readyz"))[0] == 200  # probes stay open by default


async def test_revoked_token_stops_working_after_sighup(running_server, tmp_path):
    tokens_file = tmp_path / "tokens.toml"
    entry = token_entry("temp", "temp-token", "standard")
    tokens_file.write_text(
        f'[[tokens]]\nname = "temp"\ntier = "standard"\nsha256 = "{entry["sha256"]}"\n'
    )
    server = running_server({"auth": {"tokens_file": str(tokens_file)}})
    assert (await call(server.url, headers=bearer("temp-token")))[0] == 200
    tokens_file.write_text("")  # revoke
    server.process.send_signal(signal.SIGHUP)
    for _ in range(50):
        if (await call(server.url, headers=bearer("temp-token")))[0] == 401:
            break
        await asyncio.sleep(0.1)
    assert (await call(server.url, headers=bearer("temp-token")))[0] == 401
    assert server.process.poll() is None  # SIGHUP reloads, it does not stop the server


async def test_tier_without_a_feature_gets_403(app_client):
    tiers = {"standard": {"features": ["tts"]}}
    client = await app_client({"auth": {"tokens": TOKENS}, "limits": {"tiers": tiers}})
    body = {"text": "Hello.", "stream": True}
    status, _, payload = await client.call("POST", "/api/tts", json=body, headers=bearer(STANDARD))
    assert status == 403 and b"feature_not_allowed" in payload
    status, _, _ = await client.call("POST", "/api/tts", json=body, headers=bearer(VIP))
    assert status == 200


async def hammer(urls: list[str], token: str, clients: int, seconds: float) -> tuple[int, int]:
    """`clients` loops sending GET /api/voices for `seconds`; returns (accepted, rejected)."""
    accepted = rejected = 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def client(index: int) -> None:
            nonlocal accepted, rejected
            url = urls[index % len(urls)]
            while loop.time() < deadline:
                async with session.get(f"{url}/api/voices", headers=bearer(token)) as response:
                    await response.read()
                    if response.status == 200:
                        accepted += 1
                    elif response.status == 429:
                        rejected += 1
                        assert int(response.headers["Retry-After"]) >= 1
                        assert response.headers["X-RateLimit-Remaining"] == "0"

        await asyncio.gather(*(client(i) for i in range(clients)))
    return accepted, rejected


LIMITED = {"standard": {"requests_per_s": 10.0, "burst": 5}}


async def test_limiter_accuracy_10_per_second_burst_5(running_server):
    server = running_server({"auth": {"tokens": TOKENS}, "limits": {"tiers": LIMITED}})
    accepted, rejected = await hammer([server.url], STANDARD, clients=100, seconds=3.0)
    assert 35 * 0.9 <= accepted <= 35 * 1.1 + 1
    assert rejected > accepted


async def test_shared_limit_across_two_instances_through_redis(running_server, redis_server):
    overrides = {
        "auth": {"tokens": TOKENS},
        "cache": {"redis": redis_server.url},
        # A slow answer would fall back to each instance's own limiter (on_redis_error =
        # "local"): give Redis time on a busy machine, so this measures the shared limit.
        "limits": {"tiers": LIMITED, "backend": "redis", "redis_timeout_ms": 2000},
    }
    servers = [running_server(overrides), running_server(overrides)]
    accepted, _ = await hammer([s.url for s in servers], STANDARD, clients=100, seconds=3.0)
    assert 35 * 0.9 <= accepted <= 35 * 1.1 + 1  # one limit, not one per instance


async def test_unreachable_redis_with_closed_policy_answers_503(running_server, redis_server):
    overrides = {
        "auth": {"tokens": TOKENS},
        "cache": {"redis": redis_server.url},
        "limits": {"backend": "redis", "on_redis_error": "closed"},
    }
    server = running_server(overrides)
    assert (await call(server.url, headers=bearer(STANDARD)))[0] == 200
    redis_server.kill()
    status, headers, body = await call(server.url, headers=bearer(STANDARD))
    assert status == 503 and b"limiter_unavailable" in body and "Retry-After" in headers


async def test_character_quota_runs_out_sooner_for_long_texts(app_client):
    tiers = {"standard": {"chars_per_min": 600, "requests_per_s": 100.0, "burst": 100}}
    tokens = [*TOKENS, token_entry("other", "other-token", "standard")]
    client = await app_client({"auth": {"tokens": tokens}, "limits": {"tiers": tiers}})
    long_text = ("A long sentence that costs many characters of the quota. " * 5)[:290]
    short_text = "Short and cheap text, 30 chars"

    async def spend(token: str, text: str, attempts: int) -> list[int]:
        statuses = []
        for _ in range(attempts):
            status, _, body = await client.call(
                "POST", "/api/tts", json={"text": text}, headers=bearer(token)
            )
            statuses.append(status)
            if status == 429:
                assert b"char_quota_exceeded" in body
        return statuses

    long_statuses = await spend(STANDARD, long_text, 4)
    short_statuses = await spend("other-token", short_text, 24)
    assert long_statuses[:2] == [200, 200] and long_statuses[2:] == [429, 429]
    assert 20 <= short_statuses.count(200) <= 22
    status, _, body = await client.call(
        "POST", "/api/tts", json={"text": "x" * 700}, headers=bearer(VIP)
    )
    assert status == 200  # the vip tier's quota is larger
    status, _, body = await client.call(
        "POST", "/api/tts", json={"text": "y " * 400}, headers=bearer(STANDARD)
    )
    assert status == 413 and b"text_exceeds_quota" in body


@pytest.mark.parametrize("trusted", [[], ["127.0.0.1"]])
async def test_forwarded_for_counts_only_from_trusted_proxies(app_client, trusted):
    overrides = {
        "auth": {"allow_anonymous": True, "trusted_proxies": trusted},
        "limits": {"tiers": {"anonymous": {"requests_per_s": 0.1, "burst": 2}}},
    }
    client = await app_client(overrides)
    statuses = [
        (await client.call("GET", "/api/voices", headers={"X-Forwarded-For": f"203.0.113.{i}"}))[0]
        for i in range(4)
    ]
    if trusted:
        assert statuses == [200] * 4  # four different clients behind the proxy
    else:
        assert statuses == [200, 200, 429, 429]  # spoofed header ignored: one client


async def test_access_policies_for_probes(app_client):
    client = await app_client({"auth": {"tokens": TOKENS, "probe_access": "token"}})
    assert (await client.call("GET", "/readyz"))[0] == 401
    assert (await client.call("GET", "/readyz", headers=bearer(STANDARD)))[0] == 200
    assert (await client.call("GET", "/healthz", headers=bearer(VIP)))[0] == 200


async def test_loopback_policy_judges_the_client_behind_a_trusted_proxy(app_client):
    """Behind a local nginx every peer is 127.0.0.1: the policy must look past it."""
    client = await app_client(
        {"auth": {"trusted_proxies": ["127.0.0.1"], "metrics_access": "loopback"}}
    )
    assert (await client.call("GET", "/metrics"))[0] == 200
    forwarded = {"X-Forwarded-For": "203.0.113.9"}
    status, _, body = await client.call("GET", "/metrics", headers=forwarded)
    assert status == 403 and b"loopback_only" in body
