"""Metrics and logs of a real server, parsed with prometheus_client's own text parser."""

import asyncio
import json
import os
import re
import signal
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import REPO, post_tts


async def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """Every sample: (name, sorted labels) -> value."""
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{url}/metrics") as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain")
            text = await response.text()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def total(samples: dict, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    return sum(
        value
        for (sample, sample_labels), value in samples.items()
        if sample == name and set(labels.items()) <= set(sample_labels)
    )


async def post(url: str, body: dict) -> int:
    return (await post_tts(url, body))[0]


@pytest.fixture
def server(running_server):
    return running_server({"cache": {"redis": "off"}})


async def test_counts_after_hits_misses_an_error_and_a_fallback_voice(server):
    statuses = [
        await post(server.url, {"text": "First sentence to count."}),
        await post(server.url, {"text": "Second sentence to count."}),
        await post(server.url, {"text": "First sentence to count."}),  # hit
        await post(server.url, {"text": ""}),  # 400
        await post(server.url, {"text": "Formant voice.", "voice": "espeak-en-male"}),
    ]
    assert statuses == [200, 200, 200, 400, 200]
    samples = await scrape(server.url)
    assert total(samples, "tts_requests_total", route="/api/tts", status="200") == 4
    assert total(samples, "tts_requests_total", route="/api/tts", status="400") == 1
    assert total(samples, "tts_requests_total", route="/api/tts", engine="espeak") == 1
    assert total(samples, "tts_cache_requests_total", result="miss") == 3
    assert total(samples, "tts_cache_requests_total", result="hit-l1") == 1
    assert total(samples, "tts_synthesis_seconds_count", engine="piper") == 2
    assert total(samples, "tts_synthesis_seconds_count", engine="espeak") == 1
    assert total(samples, "tts_request_duration_seconds_count", route="/api/tts") == 5
    assert total(samples, "tts_real_time_factor_ratio_count", engine="piper") == 2
    assert 1.0 < total(samples, "tts_audio_seconds_total", engine="piper") < 6.0
    assert total(samples, "tts_characters_synthesized_total", engine="piper") == 24 + 25
    assert total(samples, "tts_encoding_seconds_count", format="wav") == 4
    assert total(samples, "tts_workers_up", engine="piper") == 2
    assert total(samples, "tts_breaker_state", voice="joe") == 0
    assert total(samples, "tts_degradation_level") == 0
    assert total(samples, "tts_process_resident_memory_bytes", process="piper-0") > 50e6


async def test_worker_metrics_survive_a_restart_without_double_counting(server):
    for i in range(4):
        assert await post(server.url, {"text": f"Keep worker busy number {i}."}) == 200
    before = await scrape(server.url)
    cpu_before = total(before, "tts_process_cpu_seconds_total", process="piper-0")
    assert cpu_before > 0
    for pid in server.worker_pids():
        os.kill(pid, signal.SIGKILL)
    for _ in range(200):
        after = await scrape(server.url)
        restarted = total(after, "tts_worker_restarts_total", engine="piper") == 2
        if restarted and total(after, "tts_workers_up", engine="piper") == 2:
            break
        await asyncio.sleep(0.1)
    assert total(after, "tts_worker_restarts_total", engine="piper") == 2
    assert total(after, "tts_process_cpu_seconds_total", process="piper-0") >= cpu_before
    assert total(after, "tts_synthesis_seconds_count") == total(
        before, "tts_synthesis_seconds_count"
    )
    api = {"route": "/api/tts"}
    assert total(after, "tts_requests_total", **api) == total(before, "tts_requests_total", **api)


async def test_metrics_stay_valid_with_64_requests_in_flight(server):
    async def many() -> list[int]:
        texts = [f"Concurrent request {i} for the scrape test." for i in range(64)]
        return await asyncio.gather(*(post(server.url, {"text": t}) for t in texts))

    load = asyncio.create_task(many())
    peaks = []
    while not load.done():
        samples = await scrape(server.url)  # raises if the exposition does not parse
        peaks.append(total(samples, "tts_requests_in_flight", route="/api/tts"))
        await asyncio.sleep(0.1)
    assert await load == [200] * 64
    assert max(peaks) >= 8  # the scrapes really happened under load
    samples = await scrape(server.url)
    assert total(samples, "tts_requests_total", route="/api/tts", status="200") == 64


async def family_names(url: str) -> set[str]:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{url}/metrics") as response:
            text = await response.text()
    return {family.name for family in text_string_to_metric_families(text)}


def family_of(sample_name: str) -> str:
    return re.sub(r"_(total|bucket|count|sum)$", "", sample_name)


async def test_dashboard_panels_only_query_exported_metrics(server):
    await post(server.url, {"text": "Fill the histograms."})
    exported = await family_names(server.url)
    dashboard = json.loads((REPO / "deploy/grafana/dashboard.json").read_text())
    queried = set()
    for panel in dashboard["panels"]:
        assert panel["title"] and panel["targets"]
        for target in panel["targets"]:
            queried |= {family_of(m) for m in re.findall(r"\btts_[a-z0-9_]+", target["expr"])}
    assert queried, "the dashboard queries nothing"
    assert queried <= exported, f"not exported: {sorted(queried - exported)}"
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in (
        "requests per second",
        "p95",
        "error",
        "cpu",
        "memory",
        "cache hit",
        "queue",
        "real-time factor",
        "engine split",
        "degradation",
    ):
        assert topic in titles


def test_prometheus_config_scrapes_the_metrics_path():
    text = (REPO / "deploy/prometheus/prometheus.yml").read_text()
    assert "metrics_path: /metrics" in text and "127.0.0.1:8080" in text


async def test_access_log_is_one_json_line_per_request(running_server):
    server = running_server({"server": {"log_format": "json"}, "cache": {"redis": "off"}})
    await post(server.url, {"text": "Log me as JSON."})
    await asyncio.sleep(0.2)
    lines = [
        json.loads(line)
        for line in Path(server.log_path).read_text().splitlines()
        if line.startswith("{")
    ]
    access = [e for e in lines if e["logger"] == "tts.access" and e.get("route") == "/api/tts"]
    assert len(access) == 1
    entry = access[0]
    for field in (
        "request_id",
        "status",
        "voice",
        "engine",
        "chars",
        "audio_s",
        "cache",
        "queue_ms",
        "synthesis_ms",
        "total_ms",
    ):
        assert field in entry, field
    assert (entry["status"], entry["voice"], entry["cache"], entry["chars"]) == (
        200,
        "joe",
        "miss",
        15,
    )


async def test_metrics_access_policy_and_switch(running_server):
    server = running_server({"server": {"metrics": False}})
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{server.url}/metrics") as response:
            assert response.status == 404
