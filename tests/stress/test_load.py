"""The load loops against local servers with known behaviour: latency, errors, limits, rates."""

from __future__ import annotations

import asyncio
import io
import statistics
import time

from aiohttp import web

from stress.runner import ClosedLoad, OpenLoad, ThinkTime
from stress.stats import level_stats
from tests.stress.conftest import StartServer
from tests.stress.helpers import run_one, unused_port


async def instant(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=b"ok")


async def test_a_50ms_handler_gives_p50_near_50ms(serve: StartServer) -> None:
    async def sleepy(request: web.Request) -> web.Response:
        await asyncio.sleep(0.05)
        return web.Response(body=b"ok")

    result = await run_one(await serve(sleepy), ClosedLoad(8), duration_s=1.5)
    stats = level_stats(result.samples, result.elapsed_s)
    assert stats.latency is not None and stats.ttfb is not None
    assert stats.successes >= 50
    assert 45.0 <= stats.latency.p50_ms <= 120.0
    assert 45.0 <= stats.ttfb.p50_ms <= stats.latency.p50_ms + 1.0
    # 8 users with 50 ms each cannot exceed 160 requests/s, and should get well over a third.
    assert 50.0 <= stats.qps <= 165.0


async def test_every_tenth_request_failing_gives_ten_percent_http_500(serve: StartServer) -> None:
    served = 0

    async def flaky(request: web.Request) -> web.Response:
        nonlocal served
        served += 1
        if served % 10 == 0:
            return web.json_response({"error": {"code": "boom", "message": "x"}}, status=500)
        return web.Response(body=b"ok")

    result = await run_one(await serve(flaky), ClosedLoad(4), duration_s=20, max_requests=200)
    stats = level_stats(result.samples, result.elapsed_s)
    assert result.stopped_by == "max_requests"
    assert stats.requests == 200
    assert stats.errors == {"http_500": 20}
    assert stats.error_rate == 0.1
    assert stats.successes == 180
    assert all(s.status == 500 for s in result.samples if not s.ok)


async def test_think_time_spaces_each_users_requests(serve: StartServer) -> None:
    result = await run_one(await serve(instant), ClosedLoad(4, ThinkTime(0.2, 0.4)), duration_s=2.0)
    # Each user: one request, then ~0.3 s pauses: about 7 per user in 2 s; never hundreds.
    assert 12 <= len(result.samples) <= 48
    assert result.stopped_by == "time"
    assert 2.0 <= result.elapsed_s < 3.0


async def test_closed_loop_stops_by_itself_at_the_duration(serve: StartServer) -> None:
    result = await run_one(await serve(instant), ClosedLoad(4), duration_s=0.8)
    assert result.stopped_by == "time"
    assert 0.8 <= result.elapsed_s < 1.8
    assert max(s.sent_s for s in result.samples) < 0.8


async def test_open_loop_holds_its_rate_when_the_server_keeps_up(serve: StartServer) -> None:
    result = await run_one(await serve(instant), OpenLoad(50.0), duration_s=2.0)
    stats = level_stats(result.samples, result.elapsed_s)
    assert stats.requests == 100
    assert stats.send_rate is not None
    assert abs(stats.send_rate - 50.0) <= 2.5
    assert abs(stats.qps - 50.0) <= 2.5
    scheduled = sorted(s.scheduled_s for s in result.samples)
    assert scheduled == [index / 50.0 for index in range(100)]


async def test_open_loop_overload_grows_latency_instead_of_dropping_the_rate(
    serve: StartServer,
) -> None:
    lock = asyncio.Lock()

    async def serialized(request: web.Request) -> web.Response:
        async with lock:  # one at a time, 100 ms each: at most 10 requests/s
            await asyncio.sleep(0.1)
        return web.Response(body=b"ok")

    result = await run_one(await serve(serialized), OpenLoad(30.0), duration_s=1.5)
    stats = level_stats(result.samples, result.elapsed_s)
    by_schedule = sorted(result.samples, key=lambda s: s.scheduled_s)
    first = statistics.mean(s.latency_s for s in by_schedule[:10])
    last = statistics.mean(s.latency_s for s in by_schedule[-10:])
    assert stats.requests == 45 and stats.successes == 45  # all offered, all sent, none lost
    assert stats.send_rate is not None and abs(stats.send_rate - 30.0) <= 3.0
    # Ideal: request i ends at ~0.1*(i+1) s, so the last ones wait ~3 s past their due time.
    assert last > first + 1.5
    assert by_schedule[-1].latency_s > 2.0
    assert stats.qps < 15.0


async def test_open_loop_latency_includes_the_clients_own_lateness(serve: StartServer) -> None:
    served = 0

    async def stalls_once(request: web.Request) -> web.Response:
        nonlocal served
        served += 1
        if served == 3:
            time.sleep(0.5)  # blocks the shared event loop: the dispatcher falls 0.5 s behind
        return web.Response(body=b"ok")

    result = await run_one(await serve(stalls_once), OpenLoad(20.0), duration_s=1.5)
    late = [s for s in result.samples if s.sent_s - s.scheduled_s > 0.3]
    assert len(result.samples) == 30
    assert len(late) >= 4  # those due during the stall left late...
    for sample in late:  # ...and their latency counts from when they were due, not sent
        assert sample.latency_s >= sample.sent_s - sample.scheduled_s > 0.3
        assert sample.done_s - sample.sent_s < sample.latency_s - 0.3


async def test_open_loop_stops_at_max_requests(serve: StartServer) -> None:
    result = await run_one(await serve(instant), OpenLoad(100.0), duration_s=10.0, max_requests=7)
    assert result.stopped_by == "max_requests"
    assert len(result.samples) == 7
    assert result.elapsed_s < 2.0


async def test_a_port_with_nothing_listening_is_a_connection_error() -> None:
    url = f"http://127.0.0.1:{unused_port()}"
    result = await run_one(url, ClosedLoad(2), duration_s=5.0, max_requests=20)
    stats = level_stats(result.samples, result.elapsed_s)
    assert stats.errors == {"connection": 20}
    assert all(s.status is None and s.first_byte_s is None for s in result.samples)
    assert stats.latency is None and stats.qps == 0.0


async def test_a_handler_slower_than_the_timeout_is_a_timeout(serve: StartServer) -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(1.0)
        return web.Response(body=b"late")

    result = await run_one(
        await serve(slow), ClosedLoad(2), duration_s=5.0, max_requests=4, timeout_s=0.2
    )
    stats = level_stats(result.samples, result.elapsed_s)
    assert stats.errors == {"timeout": 4}
    assert stats.latency_all is not None
    assert 190.0 <= stats.latency_all.p50_ms <= 600.0


async def test_x_cache_and_audio_duration_headers_are_counted(serve: StartServer) -> None:
    served = 0

    async def cached(request: web.Request) -> web.Response:
        nonlocal served
        served += 1
        value = ("hit-l1", "hit-l2", "miss", "coalesced")[served % 4]
        return web.Response(body=b"x", headers={"X-Cache": value, "X-Audio-Duration": "0.500"})

    result = await run_one(await serve(cached), ClosedLoad(2), duration_s=5.0, max_requests=40)
    stats = level_stats(result.samples, result.elapsed_s)
    assert stats.cache.counts == {"hit-l1": 10, "hit-l2": 10, "miss": 10, "coalesced": 10}
    assert stats.cache.hits == 20 and stats.cache.coalesced == 10
    assert stats.cache.hit_rate == 0.5
    assert stats.audio_seconds == 20.0


async def test_cache_hit_rate_is_none_without_the_header(serve: StartServer) -> None:
    result = await run_one(await serve(instant), ClosedLoad(1), duration_s=5.0, max_requests=5)
    stats = level_stats(result.samples, result.elapsed_s)
    assert stats.cache.with_header == 0
    assert stats.cache.hit_rate is None


async def test_progress_line_shows_elapsed_qps_p95_and_errors(serve: StartServer) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    await run_one(
        await serve(instant),
        ClosedLoad(2),
        duration_s=0.7,
        stream=terminal,
        progress_interval_s=0.2,
    )
    text = terminal.getvalue()
    assert "\r\x1b[K[concurrency 2]" in text
    for part in ("/0.7 s", "QPS", "p95", "errors 0.0%", "in flight"):
        assert part in text
    assert text.endswith("\r\x1b[K")  # the line is cleared once the level ends


async def test_requests_carry_the_token_and_the_body(serve: StartServer) -> None:
    seen: list[tuple[str, bytes]] = []

    async def record(request: web.Request) -> web.Response:
        seen.append((request.headers.get("Authorization", ""), await request.read()))
        return web.Response(body=b"ok")

    from stress.client import TargetOptions
    from stress.runner import RunOptions, run_levels

    target = TargetOptions(base_url=await serve(record), token="t0k")
    options = RunOptions(duration_s=5.0, max_requests=3, quiet=True)
    await run_levels([ClosedLoad(1)], lambda: b'{"text":"a"}', target, options, [])
    assert seen == [("Bearer t0k", b'{"text":"a"}')] * 3
