"""A cluster on one machine: a shared redis-server, N instances, nginx in front.

Start order: Redis (the instances need it), the instances (all at once; each must answer
/readyz), nginx (last, so it never routes to an instance still loading). Stop order, the
reverse: nginx (graceful: no new requests, the ones in flight finish), the instances
(SIGTERM, all at once: each drains, hands its running jobs back to Redis, stops its
workers and unlinks its shared memory), Redis (last: it flushes its AOF), then the run
folder. Anything still alive after its grace period is SIGKILLed with its process group.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from inference.protocol import SHM_NAME_PREFIX
from tts_server.config import ConfigError, Settings, load_settings

from .nginx import PROXY_BIND, NginxProcess, Site, find_nginx, nginx_version
from .processes import Child, free_port, port_in_use
from .redis import SharedRedis, ping

LOG = logging.getLogger("tts.cluster")
REPO = Path(__file__).resolve().parent.parent.parent
DEFAULT_CROSS_INSTANCE_WAIT_MS = 10_000


class ClusterError(RuntimeError):
    """Bad input or a part that cannot start; the message is one line for the user."""


@dataclass(frozen=True)
class ClusterOptions:
    instances: int = 3
    port: int = 8080  # nginx
    base_port: int = 0  # first instance port; 0 = port + 1
    config: Path | None = None  # the instances' config.toml (default: the repository's)
    workers: int = 0  # inference processes per instance; 0 = cores / instances (at least 1)
    redis_url: str = ""  # an external Redis instead of starting one
    redis_port: int = 0  # the started Redis; 0 = a free port
    redis_dir: Path | None = None  # its AOF folder; None = inside the run folder (deleted)
    run_dir: Path | None = None  # logs, nginx prefix; None = a temporary folder
    cross_instance_wait_ms: int = 0  # 0 = the config's, or 10 s when the config says 0
    nginx_workers: str = "auto"
    ready_timeout_s: float = 300.0
    env: Mapping[str, str] = field(default_factory=dict)  # more overrides for the instances

    @property
    def instance_ports(self) -> list[int]:
        first = self.base_port or self.port + 1
        return [first + i for i in range(self.instances)]


def shm_segments_of(pid: int) -> list[str]:
    """The shared-memory slabs a front process with this pid created (inference.protocol)."""
    try:
        return [n for n in os.listdir("/dev/shm") if n.startswith(f"{SHM_NAME_PREFIX}{pid}-")]
    except OSError:
        return []


def _proxy_source() -> str:
    """127.0.0.2 when this machine routes it (Linux: all of 127/8), else 127.0.0.1."""
    with socket.socket() as sock:
        try:
            sock.bind((PROXY_BIND, 0))
        except OSError:
            return "127.0.0.1"
    return PROXY_BIND


class Instance:
    """One `python -m tts_server` child on 127.0.0.1:port."""

    def __init__(self, index: int, port: int, config: Path | None, env: Mapping[str, str],
                 run_dir: Path) -> None:
        self.index = index
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        args = [sys.executable, "-m", "tts_server", "--port", str(port)]
        if config is not None:
            args += ["--config", str(config)]
        self.log_path = run_dir / f"instance-{index}.log"
        self.child = Child(f"instance {index} (:{port})", args, self.log_path, env=env,
                           cwd=REPO)
        self._terminated = False

    @property
    def pid(self) -> int:
        return self.child.pid

    def start(self) -> Instance:
        self.child.start()
        self._terminated = False
        return self

    def terminate(self) -> None:
        """SIGTERM, once: the server takes a second signal as "exit at once"."""
        if not self._terminated:
            self._terminated = True
            self.child.send(signal.SIGTERM)

    def readyz(self) -> tuple[int | None, dict]:
        try:
            with urllib.request.urlopen(self.url + "/readyz", timeout=2) as response:
                return response.status, json.load(response)
        except urllib.error.HTTPError as exc:
            try:
                return exc.code, json.load(exc)
            except ValueError:
                return exc.code, {}
        except (OSError, ValueError):
            return None, {}

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            if not self.child.running():
                raise ClusterError(f"{self.child.name} exited with "
                                   f"{self.child.process.returncode}: {self._last_line()}")
            status, _ = self.readyz()
            if status == 200:
                return
            if status in (401, 403):
                raise ClusterError(f"{self.child.name}: /readyz answers {status}; the launcher "
                                   "needs auth.probe_access = \"open\" or \"loopback\"")
            if time.monotonic() > deadline:
                raise ClusterError(f"{self.child.name} not ready in {timeout_s:g} s")
            time.sleep(0.2)

    def _last_line(self) -> str:
        lines = [line for line in self.child.log_tail(40).splitlines() if line.strip()]
        return lines[-1] if lines else f"see {self.log_path}"

    def stop(self, timeout_s: float) -> int | None:
        """SIGTERM (drain, hand jobs back, stop workers); past timeout_s, force_stop()."""
        if self.child.process is None:
            return None
        self.terminate()
        try:
            self.child.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            LOG.warning("%s still running after %g s: killing it", self.child.name, timeout_s)
        self.force_stop()
        return self.child.process.returncode

    def force_stop(self) -> None:
        """SIGKILL the front and give its workers and resource tracker a moment to exit
        (the tracker unlinks the shared memory), then SIGKILL the rest of the group and
        unlink whatever shared memory is left."""
        if self.child.process is None:
            return
        self.kill()
        deadline = time.monotonic() + 3.0
        while self.child.leftovers() and time.monotonic() < deadline:
            time.sleep(0.05)
        self.child.kill_group()
        for name in shm_segments_of(self.pid):
            with contextlib.suppress(OSError):
                os.unlink(f"/dev/shm/{name}")

    def kill(self) -> None:
        """SIGKILL the front process only, as a crash would; its workers follow by themselves."""
        self.child.send(signal.SIGKILL)
        if self.child.process is not None:
            self.child.process.wait()


class Cluster:
    def __init__(self, options: ClusterOptions) -> None:
        self.options = options
        self._keep_run_dir = options.run_dir is not None
        self._run_dir = options.run_dir
        self.redis: SharedRedis | None = None
        self.redis_url = options.redis_url
        self.instances: list[Instance] = []
        self.nginx: NginxProcess | None = None
        self.settings: Settings | None = None
        self.url = f"http://127.0.0.1:{options.port}"
        self._stopped = False

    @property
    def run_dir(self) -> Path:
        """Logs, the nginx prefix and (by default) Redis's data: made on first use, so a
        launch refused before anything starts leaves no folder behind."""
        if self._run_dir is None:
            self._run_dir = Path(tempfile.mkdtemp(prefix="tts-cluster-"))
        self._run_dir.mkdir(parents=True, exist_ok=True)
        return self._run_dir

    # ---- checks before anything starts ------------------------------------------------------

    def preflight(self) -> str:
        """Everything that can be refused before a process starts; ClusterError if not."""
        options = self.options
        if options.instances < 1:
            raise ClusterError("--instances must be at least 1")
        nginx = find_nginx()
        if nginx is None:
            raise ClusterError("nginx is not installed (apt-get install nginx, or set "
                               "TTS_NGINX to its path; ./run.sh cluster installs it as root)")
        ports = {"nginx": options.port, **{f"instance {i + 1}": p
                                           for i, p in enumerate(options.instance_ports)}}
        if options.redis_port and not options.redis_url:
            ports["redis"] = options.redis_port
        seen: dict[int, str] = {}
        for name, port in ports.items():
            if not 0 < port < 65536:
                raise ClusterError(f"port {port} ({name}) is out of range")
            if port in seen:
                raise ClusterError(f"port {port} is given to both {seen[port]} and {name}")
            seen[port] = name
            if port_in_use(port):
                raise ClusterError(f"port {port} ({name}) is in use")
        if options.redis_url:
            try:
                ping(options.redis_url)
            except RuntimeError as exc:
                raise ClusterError(str(exc)) from None
        self._settings(self._instance_env("redis://127.0.0.1:1/0"))  # the config is valid
        return nginx

    def _settings(self, env: Mapping[str, str]) -> Settings:
        try:
            return load_settings(self.options.config, env)
        except ConfigError as exc:
            raise ClusterError(f"config error: {exc}") from None

    def _workers(self) -> int:
        if self.options.workers:
            return self.options.workers
        return max(1, (os.cpu_count() or 1) // self.options.instances)

    def _instance_env(self, redis_url: str) -> dict[str, str]:
        """The instances' environment: the caller's, then what a cluster needs."""
        env = {**os.environ, **self.options.env}
        env.update({
            "TTS_SERVER__HOST": '"127.0.0.1"',
            "TTS_CACHE__ENABLED": "true",
            "TTS_CACHE__REDIS": json.dumps(redis_url),
            "TTS_LIMITS__BACKEND": '"redis"',
            "TTS_LIMITS__REDIS": '"cache"',
            "TTS_AUTH__TRUSTED_PROXIES": json.dumps([_proxy_source()]),
            "TTS_POOL__WORKERS": str(self._workers()),
        })
        wait_ms = (self.options.cross_instance_wait_ms
                   or self._settings(env).cache.cross_instance_wait_ms
                   or DEFAULT_CROSS_INSTANCE_WAIT_MS)
        env["TTS_CACHE__CROSS_INSTANCE_WAIT_MS"] = str(wait_ms)
        return env

    # ---- start and stop ---------------------------------------------------------------------

    def start(self) -> Cluster:
        """Start Redis, the instances, nginx; on any failure stop what started, then raise."""
        nginx_binary = self.preflight()
        try:
            self._start_redis()
            env = self._instance_env(self.redis_url)
            self.settings = self._settings(env)
            self.instances = [Instance(i + 1, port, self.options.config, env, self.run_dir)
                              for i, port in enumerate(self.options.instance_ports)]
            for instance in self.instances:
                instance.start()
                LOG.info("%s: pid %d, log %s", instance.child.name, instance.pid,
                         instance.log_path)
            for instance in self.instances:
                instance.wait_ready(self.options.ready_timeout_s)
            self._start_nginx(nginx_binary)
        except ClusterError as exc:
            self._keep_run_dir = True  # the logs say why
            self.stop()
            raise ClusterError(f"{exc} (logs in {self.run_dir})") from None
        except BaseException:
            self.stop()
            raise
        return self

    def _start_redis(self) -> None:
        if self.redis_url:
            LOG.info("redis: %s (external, not started here)", self.redis_url)
            return
        settings = self._settings({**os.environ, **self.options.env}).cache
        data_dir = self.options.redis_dir or self.run_dir / "redis"
        self.redis = SharedRedis(self.options.redis_port or free_port(), data_dir,
                                 self.run_dir / "redis.log",
                                 settings.private_redis_maxmemory_bytes,
                                 settings.private_redis_policy)
        try:
            self.redis.start()
        except (RuntimeError, OSError) as exc:
            raise ClusterError(f"redis-server would not start: {exc}") from None
        self.redis_url = self.redis.url

    def _start_nginx(self, binary: str) -> None:
        assert self.settings is not None
        prefix = self.run_dir / "nginx"
        prefix.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:  # nginx's workers run as nobody: let them reach their prefix
            for folder in (self.run_dir, prefix):
                folder.chmod(0o711)
        upstreams = tuple(f"127.0.0.1:{i.port}" for i in self.instances)
        site = Site.from_settings(self.settings, f"127.0.0.1:{self.options.port}", upstreams,
                                  proxy_bind=_proxy_source())
        self.nginx = NginxProcess(binary, prefix, site, self.options.port,
                                  self.options.nginx_workers,
                                  shutdown_timeout_s=self.settings.server.drain_timeout_s)
        try:
            self.nginx.start()
        except RuntimeError as exc:
            raise ClusterError(str(exc).splitlines()[0] + f" (see {prefix / 'error.log'})") \
                from None
        LOG.info("nginx %s: pid %d, %s -> %d instances", nginx_version(binary),
                 self.nginx.child.pid, self.url, len(self.instances))

    @property
    def instance_stop_timeout_s(self) -> float:
        server = self.settings.server if self.settings else None
        pool = self.settings.pool if self.settings else None
        drain = server.drain_timeout_s if server else 30.0
        return drain + 2 * (pool.stop_timeout_s if pool else 5.0) + 10.0

    def stop(self) -> None:
        """nginx, then every instance (in parallel), then Redis, then the run folder."""
        if self._stopped:
            return
        self._stopped = True
        try:
            self._stop_in_order()
        finally:
            for instance in self.instances:
                instance.force_stop()
            for child in self.children():
                child.kill_group()
            if not self._keep_run_dir and self._run_dir is not None:
                shutil.rmtree(self._run_dir, ignore_errors=True)

    def _stop_in_order(self) -> None:
        drain_s = self.settings.server.drain_timeout_s if self.settings else 30.0
        if self.nginx is not None:
            LOG.info("stopping nginx")
            self.nginx.stop(timeout_s=drain_s + 5)
        running = [i for i in self.instances if i.child.running()]
        if running:
            LOG.info("stopping %d instances", len(running))
        for instance in running:
            instance.terminate()
        for instance in running:
            code = instance.stop(self.instance_stop_timeout_s)
            LOG.info("%s exited with %s", instance.child.name, code)
        if self.redis is not None:
            LOG.info("stopping redis-server")
            self.redis.stop()

    def children(self) -> list[Child]:
        found = [self.nginx.child] if self.nginx and self.nginx.child else []
        found += [i.child for i in self.instances]
        if self.redis is not None and self.redis.child is not None:
            found.append(self.redis.child)
        return found

    def leftovers(self) -> list[int]:
        """Processes still alive in any process group this cluster started."""
        return [pid for child in self.children() for pid in child.leftovers()]

    # ---- faults (tests and benchmarks) ------------------------------------------------------

    def restart_instance(self, index: int) -> Instance:
        """SIGTERM instance `index` (1-based), wait for its exit, start it, wait for /readyz."""
        instance = self.instances[index - 1]
        instance.stop(self.instance_stop_timeout_s)
        instance.start()
        instance.wait_ready(self.options.ready_timeout_s)
        return instance
