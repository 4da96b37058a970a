"""Finding the server by its port, and CPU/RSS summed over a process tree."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import psutil
import pytest
from aiohttp import web

from stress.resources import (
    CpuMeter,
    ResourceSample,
    process_tree,
    server_pids_for_url,
    summarize,
    tree_roots,
)
from stress.runner import ClosedLoad
from tests.stress.conftest import StartServer
from tests.stress.helpers import run_one, unused_port

BUSY_CHILD = "import time\nend = time.monotonic() + 3\nwhile time.monotonic() < end: pass\n"
PARENT_OF_BUSY_CHILD = (
    f"import subprocess, sys\nsubprocess.run([sys.executable, '-c', {BUSY_CHILD!r}])\n"
)


@pytest.fixture
def parent_with_busy_child() -> Iterator[psutil.Process]:
    parent = subprocess.Popen([sys.executable, "-c", PARENT_OF_BUSY_CHILD])
    process = psutil.Process(parent.pid)
    try:
        deadline = time.monotonic() + 5
        while not process.children() and time.monotonic() < deadline:
            time.sleep(0.02)
        yield process
    finally:
        for child in process.children(recursive=True):
            child.kill()
        parent.kill()
        parent.wait()


async def test_the_listening_process_is_found_by_port(serve: StartServer) -> None:
    async def handler(request: web.Request) -> web.Response:
        raise AssertionError("not called")

    url = await serve(handler)
    assert server_pids_for_url(url) == [os.getpid()]
    assert server_pids_for_url(url + "/") == [os.getpid()]
    assert server_pids_for_url(url.replace("127.0.0.1", "localhost")) == [os.getpid()]


def test_no_process_for_a_free_port_or_a_remote_host() -> None:
    assert server_pids_for_url(f"http://127.0.0.1:{unused_port()}") == []
    assert server_pids_for_url("http://example.invalid:8080") == []  # parsed, never contacted
    assert server_pids_for_url("http://192.0.2.1:8080") == []


def test_tree_roots_drop_descendants(parent_with_busy_child: psutil.Process) -> None:
    child = parent_with_busy_child.children()[0]
    assert tree_roots([child.pid, parent_with_busy_child.pid]) == [parent_with_busy_child.pid]


def test_cpu_is_summed_over_the_whole_tree(parent_with_busy_child: psutil.Process) -> None:
    meter = CpuMeter(lambda: process_tree([parent_with_busy_child.pid]))
    first, _, count = meter.measure()
    assert first is None and count == 2  # parent and busy child
    time.sleep(0.6)
    cpu, rss, count = meter.measure()
    assert count == 2 and rss > 0
    # The child spins on one core; a shared, noisy machine still gives it a good share.
    assert cpu is not None and 10.0 < cpu < 210.0


def test_summary_means_peaks_and_missing_server() -> None:
    samples = [
        ResourceSample(1.0, 50.0, 100, 2, 10.0, 5, 30.0),
        ResourceSample(2.0, 150.0, 300, 2, 95.0, 5, 70.0),
    ]
    summary = summarize(samples)
    assert (summary.server_cpu_mean, summary.server_cpu_max) == (100.0, 150.0)
    assert summary.server_rss_max_bytes == 300
    assert (summary.client_cpu_mean, summary.machine_cpu_mean) == (52.5, 50.0)
    assert not summary.client_saturated
    unknown = summarize([ResourceSample(1.0, None, None, 0, 99.0, 5, 50.0)])
    assert unknown.server_cpu_mean is None and unknown.client_saturated
    assert summarize([]).sample_count == 0


async def test_a_level_samples_the_server_tree_it_is_given(serve: StartServer) -> None:
    async def instant(request: web.Request) -> web.Response:
        return web.Response(body=b"ok")

    url = await serve(instant)
    result = await run_one(url, ClosedLoad(2), duration_s=0.8, server_pids=[os.getpid()])
    assert len(result.resources) >= 2  # every 0.25 s, plus one at the end
    assert all(s.server_cpu_percent is not None for s in result.resources)
    assert all(s.server_rss_bytes and s.server_rss_bytes > 10_000_000 for s in result.resources)
    times = [s.t_s for s in result.resources]
    assert times == sorted(times) and times[-1] <= result.elapsed_s + 0.5


def test_the_descriptor_limit_is_raised_for_big_levels(monkeypatch: pytest.MonkeyPatch) -> None:
    import resource

    from stress import client

    limits = {"soft": 1024, "hard": 4096}
    monkeypatch.setattr(resource, "getrlimit", lambda _: (limits["soft"], limits["hard"]))
    monkeypatch.setattr(
        resource, "setrlimit", lambda _, value: limits.update(soft=value[0], hard=value[1])
    )
    client.raise_open_file_limit(500)  # 500 + headroom fits in 1024: unchanged
    assert limits == {"soft": 1024, "hard": 4096}
    client.raise_open_file_limit(2000)
    assert limits == {"soft": 2000 + client.FD_HEADROOM, "hard": 4096}
    client.raise_open_file_limit(10_000)  # never past the hard limit
    assert limits == {"soft": 4096, "hard": 4096}
