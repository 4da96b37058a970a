"""One launcher for this server as a child process, shared by the tests and every benchmark.

`ServerProcess` runs `python -m tts_server` as ./run.sh would, on a free loopback port,
with an optional config file and environment overrides; `wait_ready`, `stop` (signal,
then SIGKILL after a timeout) and the probes the tests need. `free_port` and `wait_http`
are the small pieces every script used to write again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

# One definition of each, beside the cluster launcher that needs them at run time.
from tts_server.cluster.cluster import shm_segments_of
from tts_server.cluster.processes import free_port

__all__ = ["REPO", "ServerProcess", "free_port", "http_status", "shm_segments_of", "wait_http"]

REPO = Path(__file__).resolve().parent.parent


def http_status(url: str, headers: Mapping[str, str] | None = None,
                timeout_s: float = 2.0) -> int | None:
    """The status of a GET, or None when nothing answers."""
    try:
        request = urllib.request.Request(url, headers=dict(headers or {}))
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def wait_http(url: str, process: subprocess.Popen, timeout_s: float = 180,
              ok: Sequence[int] = (200,)) -> None:
    """Until `url` answers one of `ok`; raises if the process exits first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args} exited with {process.returncode}")
        if http_status(url) in ok:
            return
        time.sleep(0.2)
    raise TimeoutError(url)


class ServerProcess:
    """`python -m tts_server` as a child process, as ./run.sh would start it."""

    def __init__(
        self,
        config_path: Path | None = None,
        log_path: Path | None = None,
        probe_token: str = "",
        *,
        env: Mapping[str, str] | None = None,
        args: Sequence[str] = (),
        port: int | None = None,
    ) -> None:
        self.probe_headers = {"Authorization": f"Bearer {probe_token}"} if probe_token else {}
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log: IO[bytes] | int = open(log_path, "wb") if log_path else subprocess.DEVNULL
        cmd = [sys.executable, "-m", "tts_server"]
        if config_path is not None:
            cmd += ["--config", str(config_path)]
        cmd += [*args, "--port", str(self.port)]
        self.process = subprocess.Popen(
            cmd, cwd=REPO, env={**os.environ, **(env or {})},
            stdout=self._log, stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_ready(self, timeout_s: float = 120.0, path: str = "/readyz") -> ServerProcess:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited {self.process.returncode}:\n{self.log()}")
            if self.get_status(path) == 200:
                return self
            time.sleep(0.2)
        raise TimeoutError(f"server not ready in {timeout_s}s:\n{self.log()}")

    def get_status(self, path: str) -> int | None:
        return http_status(self.url + path, self.probe_headers)

    def worker_pids(self, engine: str = "piper") -> list[int]:
        """The live workers of one engine's pool, as /readyz reports them."""
        request = urllib.request.Request(self.url + "/readyz", headers=self.probe_headers)
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                body = json.load(response)
        except urllib.error.HTTPError as exc:
            body = json.load(exc)
        workers = body["pools"][engine]["workers"]
        return [w["pid"] for w in workers if w["state"] != "dead" and w["pid"]]

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout_s)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            if not isinstance(self._log, int):
                self._log.close()

    def log(self) -> str:
        if self.log_path is None:
            return "(no log kept)"
        if not isinstance(self._log, int):
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def shm_segments(self) -> list[str]:
        return shm_segments_of(self.pid)
