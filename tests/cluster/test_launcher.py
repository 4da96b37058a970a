"""`python -m tts_server.cluster` as ./run.sh cluster runs it: starts, serves, stops in order
on SIGINT (Ctrl-C) or SIGTERM, and leaves nothing behind; bad input gets one line."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import redis

from tests.cluster.conftest import needs_nginx
from tests.support import free_port, merged, write_config
from tts_server.cluster.cluster import shm_segments_of
from tts_server.cluster.processes import consecutive_free_ports, group_members, port_in_use

pytestmark = needs_nginx
REPO = Path(__file__).resolve().parents[2]


def launcher(tmp_path: Path, *args: str, env: dict[str, str] | None = None,
             instances: int = 2) -> tuple[subprocess.Popen, Path, int]:
    config = write_config(tmp_path / "config.toml", merged({}))
    port = consecutive_free_ports(instances + 1)
    log = tmp_path / "launcher.log"
    command = [sys.executable, "-m", "tts_server.cluster", "--instances", str(instances),
               "--workers", "1", "--port", str(port), "--config", str(config),
               "--redis-dir", str(tmp_path / "redis"), "--run-dir", str(tmp_path / "run"),
               *args]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                   env={**os.environ, **(env or {})}, start_new_session=True)
    return process, log, port


def wait_for_line(process: subprocess.Popen, log: Path, pattern: str,
                  timeout_s: float = 240) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        match = re.search(pattern, log.read_text())
        if match:
            return match.group(0)
        assert process.poll() is None, log.read_text()
        time.sleep(0.2)
    raise AssertionError(f"no {pattern!r} in:\n{log.read_text()}")


def started_pids(text: str) -> list[int]:
    return [int(pid) for pid in re.findall(r": pid (\d+)", text)]


def assert_nothing_left(pids: list[int], ports: list[int]) -> None:
    assert pids
    for pid in pids:
        assert not group_members(pid), f"processes left in group {pid}"
        assert not shm_segments_of(pid)
    assert not [port for port in ports if port_in_use(port)]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_one_command_starts_serves_and_stops_everything_in_order(tmp_path, signum):
    process, log, port = launcher(tmp_path)
    try:
        ready = wait_for_line(process, log, r"cluster ready: .*")
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/tts", data=json.dumps({"text": "Hello."}).encode(),
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            assert response.status == 200 and response.headers["Server"] == "nginx"
        url = re.search(r"redis (redis://\S+)", ready).group(1)
        store = redis.Redis.from_url(url)
        assert store.config_get("appendonly") == {"appendonly": "yes"}
        store.close()
        pids = started_pids(log.read_text())
        assert len(pids) == 4  # redis, two instances, nginx
        process.send_signal(signum)
        assert process.wait(90) == 0, log.read_text()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    text = log.read_text()
    steps = ["stopping nginx", "stopping 2 instances", "instance 1 (:", "instance 2 (:",
             "stopping redis-server", "stopped"]
    positions = [text.index(step, text.index("signal received")) for step in steps]
    assert positions == sorted(positions), text
    assert "exited with 0" in text
    assert_nothing_left(pids, [port, port + 1, port + 2])
    assert (tmp_path / "redis" / "appendonlydir").is_dir()  # the AOF stays for next time


def run_to_exit(tmp_path: Path, *args: str, env: dict[str, str] | None = None,
                timeout_s: float = 120) -> tuple[int, list[str], int]:
    process, log, port = launcher(tmp_path, *args, env=env)
    try:
        code = process.wait(timeout_s)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    if code == 2:  # refused before anything started: not even its folders were made
        assert not (tmp_path / "run").exists() and not (tmp_path / "redis").exists()
    return code, log.read_text().splitlines(), port


def test_nginx_missing_is_one_line_and_nothing_starts(tmp_path):
    code, lines, port = run_to_exit(tmp_path, env={"TTS_NGINX": str(tmp_path / "no-nginx")})
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith("error: nginx is not installed"), lines
    assert not port_in_use(port + 1)


def test_a_port_in_use_is_one_line_and_nothing_starts(tmp_path):
    with socket.socket() as taken:  # the first instance's port of a launch on --port first
        first = consecutive_free_ports(3)
        taken.bind(("127.0.0.1", first + 1))
        taken.listen()
        code, lines, _ = run_to_exit(tmp_path, "--port", str(first))
    assert code == 2
    assert lines == [f"error: port {first + 1} (instance 1) is in use"], lines
    assert not port_in_use(first) and not port_in_use(first + 2)


def test_an_unreachable_redis_url_is_one_line_and_nothing_starts(tmp_path):
    url = f"redis://127.0.0.1:{free_port()}/0"
    code, lines, port = run_to_exit(tmp_path, "--redis", url)
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot reach Redis at {url}"), lines
    assert not port_in_use(port) and not port_in_use(port + 1)


def test_a_bad_config_is_one_line(tmp_path):
    code, lines, _ = run_to_exit(tmp_path, "--config", str(tmp_path / "missing.toml"))
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith("error: config error: config file not found")


def test_an_instance_that_cannot_start_stops_the_rest(tmp_path):
    """Redis and the other instance were started: they are stopped, the error is one line."""
    code, lines, port = run_to_exit(tmp_path, env={"TTS_POOL__READY_TIMEOUT_S": "0.01"})
    assert code == 1, lines
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and "exited with 3: cannot start the inference pool" in errors[0]
    assert errors[0].endswith(f"(logs in {tmp_path / 'run'})")
    assert_nothing_left(started_pids("\n".join(lines)), [port, port + 1, port + 2])


def test_a_killed_launcher_takes_its_children_with_it(tmp_path):
    """SIGKILL of the launcher itself (no chance to clean up): the kernel's parent-death
    signal stops nginx, the instances and Redis, and the instances unlink their memory."""
    process, log, port = launcher(tmp_path)
    try:
        wait_for_line(process, log, r"cluster ready: .*")
        pids = started_pids(log.read_text())
        process.kill()
        process.wait()
        deadline = time.monotonic() + 60
        while any(group_members(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert_nothing_left(pids, [port, port + 1, port + 2])


def test_an_instance_that_dies_is_restarted(tmp_path):
    process, log, port = launcher(tmp_path)
    try:
        wait_for_line(process, log, r"cluster ready: .*")
        first = int(re.search(r"instance 1 \(:\d+\): pid (\d+)", log.read_text()).group(1))
        os.kill(first, signal.SIGKILL)
        back = wait_for_line(process, log, r"instance 1 \(:\d+\) is back \(pid \d+\)")
        assert "exited with -9; restarting it" in log.read_text()
        pids = started_pids(log.read_text()) + [int(re.search(r"pid (\d+)", back).group(1))]
        process.send_signal(signal.SIGTERM)
        assert process.wait(90) == 0, log.read_text()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert_nothing_left([p for p in pids if p != first], [port, port + 1, port + 2])
    assert not group_members(first) and not shm_segments_of(first)
