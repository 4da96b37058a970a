"""CPU and memory of the server's process tree and of the client itself, sampled with psutil."""

from __future__ import annotations

import asyncio
import ipaddress
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import psutil

ProcessKey = tuple[int, float]  # (pid, create_time): pids are reused, this pair is not


def listening_pids(port: int, host: str = "127.0.0.1") -> list[int]:
    """Processes with a TCP socket listening on `port` at an address that serves `host`."""
    target = _ip_or_none(host)
    pids = {
        conn.pid
        for conn in psutil.net_connections(kind="inet")
        if conn.status == psutil.CONN_LISTEN
        and conn.pid is not None
        and conn.laddr
        and conn.laddr.port == port
        and _serves(_ip_or_none(conn.laddr.ip), target)
    }
    return sorted(pids)


def server_pids_for_url(url: str) -> list[int]:
    """The listening processes behind a loopback URL; [] for other hosts or when none is found."""
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    address = _ip_or_none("127.0.0.1" if host == "localhost" else host)
    if address is None or not address.is_loopback:
        return []
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return tree_roots(listening_pids(port, str(address)))


def tree_roots(pids: Iterable[int]) -> list[int]:
    """Drop pids whose ancestor is also listed (pre-fork servers share the listening socket)."""
    chosen = set(pids)
    roots = []
    for pid in sorted(chosen):
        try:
            ancestors = {parent.pid for parent in psutil.Process(pid).parents()}
        except psutil.Error:
            continue
        if not ancestors & chosen:
            roots.append(pid)
    return roots


def process_tree(root_pids: Sequence[int]) -> list[psutil.Process]:
    """The roots and all their descendants that are still alive."""
    found: dict[int, psutil.Process] = {}
    for pid in root_pids:
        try:
            root = psutil.Process(pid)
            found[pid] = root
            found.update((child.pid, child) for child in root.children(recursive=True))
        except psutil.Error:
            continue
    return list(found.values())


class CpuMeter:
    """CPU use of a changing set of processes, as % of one core, from cpu_times deltas."""

    def __init__(self, processes: Callable[[], list[psutil.Process]]) -> None:
        self._processes = processes
        self._last_cpu: dict[ProcessKey, float] = {}
        self._last_time: float | None = None

    def measure(self) -> tuple[float | None, int, int]:
        """(CPU % since the previous call or None on the first, RSS bytes, process count)."""
        now = time.monotonic()
        cpu_now, rss, count = _read_processes(self._processes())
        used = sum(cpu - self._last_cpu.get(key, 0.0) for key, cpu in cpu_now.items())
        previous, self._last_time, self._last_cpu = self._last_time, now, cpu_now
        if previous is None or now <= previous:
            return None, rss, count
        return 100.0 * used / (now - previous), rss, count


def _read_processes(
    processes: Iterable[psutil.Process],
) -> tuple[dict[ProcessKey, float], int, int]:
    cpu: dict[ProcessKey, float] = {}
    rss = 0
    for process in processes:
        try:
            with process.oneshot():
                times = process.cpu_times()
                key = (process.pid, process.create_time())
                memory = process.memory_info().rss
        except psutil.Error:  # exited between listing and reading
            continue
        cpu[key] = times.user + times.system
        rss += memory
    return cpu, rss, len(cpu)


@dataclass(frozen=True)
class ResourceSample:
    """One reading; CPU % is of one core (200 = two cores busy), over the preceding interval."""

    t_s: float
    server_cpu_percent: float | None
    server_rss_bytes: int | None
    server_processes: int
    client_cpu_percent: float
    client_rss_bytes: int
    machine_cpu_percent: float  # all cores, 100 = the whole machine


class ResourceMonitor:
    """Samples server tree, client and machine every `interval_s` until stopped."""

    def __init__(self, server_pids: Sequence[int], interval_s: float, origin: float) -> None:
        self._server_pids = list(server_pids)
        self._interval_s = interval_s
        self._origin = origin
        me = psutil.Process(os.getpid())
        self._server = CpuMeter(lambda: process_tree(self._server_pids))
        self._client = CpuMeter(lambda: [me])  # not its children: the selftest server is one
        self.samples: list[ResourceSample] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._take()  # primes the CPU baselines; the first reading is not kept
        psutil.cpu_percent(interval=None)
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> list[ResourceSample]:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._take()
        return self.samples

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            self._take()

    def _take(self) -> None:
        server_cpu, server_rss, server_count = self._server.measure()
        client_cpu, client_rss, _ = self._client.measure()
        if client_cpu is None:  # baseline call
            return
        self.samples.append(
            ResourceSample(
                t_s=time.monotonic() - self._origin,
                server_cpu_percent=server_cpu if self._server_pids else None,
                server_rss_bytes=server_rss if self._server_pids else None,
                server_processes=server_count,
                client_cpu_percent=client_cpu,
                client_rss_bytes=client_rss,
                machine_cpu_percent=psutil.cpu_percent(interval=None),
            )
        )


@dataclass(frozen=True)
class ResourceSummary:
    """Means and peaks over a level's samples; None where nothing was measured."""

    sample_count: int
    server_cpu_mean: float | None
    server_cpu_max: float | None
    server_rss_max_bytes: int | None
    client_cpu_mean: float | None
    client_cpu_max: float | None
    machine_cpu_mean: float | None

    @property
    def client_saturated(self) -> bool:
        """The client used most of its one core: numbers may describe the client, not the server."""
        return self.client_cpu_mean is not None and self.client_cpu_mean >= 90.0


def summarize(samples: Sequence[ResourceSample]) -> ResourceSummary:
    server_cpu = [s.server_cpu_percent for s in samples if s.server_cpu_percent is not None]
    server_rss = [s.server_rss_bytes for s in samples if s.server_rss_bytes is not None]
    client_cpu = [s.client_cpu_percent for s in samples]
    return ResourceSummary(
        sample_count=len(samples),
        server_cpu_mean=_mean(server_cpu),
        server_cpu_max=max(server_cpu, default=None),
        server_rss_max_bytes=max(server_rss, default=None),
        client_cpu_mean=_mean(client_cpu),
        client_cpu_max=max(client_cpu, default=None),
        machine_cpu_mean=_mean([s.machine_cpu_percent for s in samples]),
    )


def _mean(values: Sequence[float]) -> float | None:
    return math.fsum(values) / len(values) if values else None


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _ip_or_none(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _serves(listener: IPAddress | None, target: IPAddress | None) -> bool:
    """A listener on the wildcard address serves every target; otherwise it must be that address."""
    return listener is not None and (listener.is_unspecified or listener == target)
