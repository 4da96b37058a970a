"""Child processes the cluster owns: each in its own session, each stopped by its group.

Every child leads its own session, so a Ctrl-C in the terminal reaches only the launcher,
which then stops the children in order; and each child's own children (nginx workers,
inference workers) share its process group, so one killpg reaches all of them. If the
launcher itself dies, the kernel sends the child `death_signal` (SIGTERM: nginx's master
and the TTS server both shut down cleanly on it, and take their children with them).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

PR_SET_PDEATHSIG = 1


def _parent_death_signal(signum: int):  # noqa: ANN202 - a preexec_fn
    def set_signal() -> None:
        # Tied by the kernel to the forking thread: spawn from the main thread.
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signum)

    return set_signal


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is `pgid`."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        state, pgrp = fields[0], int(fields[2])
        if pgrp == pgid and state != "Z":
            members.append(int(entry))
    return members


class Child:
    """One process started in its own session with its output in a log file."""

    def __init__(self, name: str, args: Sequence[str], log_path: Path,
                 env: Mapping[str, str] | None = None, cwd: Path | None = None,
                 death_signal: int = signal.SIGTERM) -> None:
        self.name = name
        self.args = list(args)
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.death_signal = death_signal
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None, f"{self.name} was not started"
        return self.process.pid

    def start(self) -> Child:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=self.env, cwd=self.cwd, start_new_session=True,
                preexec_fn=_parent_death_signal(self.death_signal),
            )
        return self

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def send(self, signum: int) -> None:
        if self.running():
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signum)

    def stop(self, signum: int = signal.SIGTERM, timeout_s: float = 10.0) -> int | None:
        """Signal, wait up to timeout_s, then SIGKILL the whole group; None if never started."""
        if self.process is None:
            return None
        self.send(signum)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            pass
        self.kill_group()
        return self.process.returncode

    def kill_group(self, wait_s: float = 5.0) -> None:
        """SIGKILL the child and everything left in its process group, and reap it."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        deadline = time.monotonic() + wait_s
        while group_members(self.process.pid) and time.monotonic() < deadline:
            time.sleep(0.05)

    def leftovers(self) -> list[int]:
        return group_members(self.process.pid) if self.process is not None else []

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """True when something already listens on host:port (or the port cannot be bound)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def wait_port(port: int, child: Child, timeout_s: float, host: str = "127.0.0.1") -> None:
    """Until something accepts on host:port; RuntimeError when the child exits first."""
    deadline = time.monotonic() + timeout_s
    while True:
        if not child.running():
            raise RuntimeError(f"{child.name} exited with {child.process.returncode}:\n"
                               f"{child.log_tail()}")
        with socket.socket() as sock:
            sock.settimeout(0.5)
            if sock.connect_ex((host, port)) == 0:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{child.name} did not listen on {host}:{port} in {timeout_s:g} s")
        time.sleep(0.05)


def consecutive_free_ports(count: int, low: int = 20000, high: int = 40000) -> int:
    """The first of `count` consecutive free loopback ports (for --port and the instances)."""
    import random

    rng = random.Random()
    for _ in range(200):
        first = rng.randrange(low, high - count)
        if not any(port_in_use(p) for p in range(first, first + count)):
            return first
    raise RuntimeError(f"no {count} consecutive free ports in {low}..{high}")
