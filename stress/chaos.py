"""Faults under load: does every request end in audio or an explicit error?

    python -m stress.chaos [--clients 8] [--stream-share 0.25] [--phase-s 20] [--json FILE]

Starts its own server (loopback, a free port, unit timeout 5 s, degradation off, limits
raised), runs `--clients` closed-loop clients sending unique texts (a share of them
streamed), and applies one fault per phase: SIGKILL of a busy piper worker, SIGKILL of the
private redis-server, SIGSTOP of a busy worker past the unit timeout (then SIGCONT), and
last SIGTERM to the server. Per fault it prints requests sent, OK, each explicit error
code, silent failures (a dropped connection, or audio whose WAV data size is not the bytes
received) and the recovery time read from /readyz. The target is 0 silent failures.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import random
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import psutil

from stress.serverproc import ServerProcess

WORDS = ("river", "market", "yellow", "quiet", "window", "seven", "morning", "garden",
         "letter", "bright", "station", "winter", "paper", "orange", "careful", "signal",
         "forest", "number", "silver", "table", "engine", "village", "summer", "story")
ENV = {
    "TTS_POOL__WORKERS": "2", "TTS_POOL__UNIT_TIMEOUT_S": "5.0",
    "TTS_POOL__RESTART_BACKOFF_S": "0.2", "TTS_DEGRADATION__ENABLED": "false",
    "TTS_CACHE__REDIS_CHECK_INTERVAL_S": "0.25", "TTS_SERVER__LOG_FORMAT": '"json"',
    "TTS_LIMITS__TIERS": '{anonymous = {requests_per_s = 1000.0, burst = 2000, '
                         'chars_per_min = 100000000}}',
}
REFUSED = "refused (listener closed)"


@dataclass
class Tally:
    """What one phase's requests ended as."""

    sent: int = 0
    ok: int = 0
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    silent: collections.Counter[str] = field(default_factory=collections.Counter)
    recovery_s: float | None = None
    note: str = ""

    def row(self, fault: str) -> dict[str, Any]:
        return {"fault": fault, "sent": self.sent, "ok": self.ok, "errors": dict(self.errors),
                "silent": dict(self.silent), "silent_total": sum(self.silent.values()),
                "recovery_s": self.recovery_s, "note": self.note}


def unique_text(rng: random.Random, serial: int) -> str:
    words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 12)))
    return f"Request {serial} says {words}."


def wav_complete(body: bytes, streamed: bool) -> bool:
    """A whole WAV states its data size; a streamed one says 0xFFFFFFFF and must end on a
    whole sample (a cut chunked stream raises in the client instead)."""
    if len(body) < 44 or body[:4] != b"RIFF":
        return False
    size = int.from_bytes(body[40:44], "little")
    if streamed:
        return size == 0xFFFFFFFF and (len(body) - 44) % 2 == 0 and len(body) > 44
    return size == len(body) - 44


async def one_request(session: aiohttp.ClientSession, url: str, text: str, streamed: bool,
                      tally: Tally) -> bool:
    """Send one request and record its outcome; True when the client should back off."""
    tally.sent += 1
    try:
        async with session.post(f"{url}/api/tts", json={"text": text, "stream": streamed}) as r:
            body = await r.read()
            if r.status == 200:
                if wav_complete(body, streamed):
                    tally.ok += 1
                else:
                    tally.silent["truncated audio"] += 1
                return False
            tally.errors[f"{r.status} {error_code(body)}"] += 1
            return True
    except aiohttp.ClientConnectorError:
        tally.errors[REFUSED] += 1
        return True
    except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError,
            aiohttp.ClientOSError, TimeoutError) as exc:
        tally.silent[f"dropped ({type(exc).__name__})"] += 1
        return True


def error_code(body: bytes) -> str:
    try:
        return str(json.loads(body)["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return "non-JSON error body"


async def client(url: str, serial: int, stream_share: float, stop: asyncio.Event,
                 tally: Callable[[], Tally]) -> None:
    rng = random.Random(serial)
    count = 0
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        while not stop.is_set():
            count += 1
            text = unique_text(rng, serial * 1_000_000 + count)
            if await one_request(session, url, text, rng.random() < stream_share, tally()):
                await asyncio.sleep(0.2)


# ---- the server's state -------------------------------------------------------------------


async def readyz(url: str) -> dict[str, Any] | None:
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            async with session.get(f"{url}/readyz") as response:
                return await response.json()
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None


def ready_piper(state: dict[str, Any] | None, gone_pid: int | None) -> bool:
    if state is None:
        return False
    pool = state["pools"]["piper"]
    pids = {w["pid"] for w in pool["workers"] if w["state"] == "ready"}
    return pool["workers_ready"] == pool["workers_total"] and gone_pid not in pids


async def wait_until(check: Callable[[], Awaitable[bool]], started: float,
                     timeout_s: float = 90.0) -> float | None:
    while time.monotonic() - started < timeout_s:
        if await check():
            return round(time.monotonic() - started, 2)
        await asyncio.sleep(0.25)
    return None


async def busy_worker(url: str) -> int:
    """A piper worker synthesizing right now (any ready one if none is busy yet)."""
    for _ in range(40):
        state = await readyz(url)
        workers = state["pools"]["piper"]["workers"] if state else []
        busy = [w["pid"] for w in workers if w["state"] == "ready" and w["busy"]]
        if busy:
            return int(busy[0])
        await asyncio.sleep(0.05)
    return int(next(w["pid"] for w in workers if w["state"] == "ready"))


# ---- faults -------------------------------------------------------------------------------


async def kill_worker(server: ServerProcess, tally: Tally) -> None:
    pid = await busy_worker(server.url)
    started = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    tally.recovery_s = await wait_until(
        lambda: _ready_without(server.url, pid), started)


async def _ready_without(url: str, pid: int) -> bool:
    return ready_piper(await readyz(url), pid)


async def kill_redis(server: ServerProcess, tally: Tally) -> None:
    redis = next(p for p in psutil.Process(server.pid).children() if "redis" in p.name())
    before = (await readyz(server.url) or {}).get("redis", {}).get("restarts", 0)
    started = time.monotonic()
    redis.kill()

    async def restarted() -> bool:
        state = await readyz(server.url)
        return bool(state and state["redis"]["restarts"] > before and not state["degraded"])

    tally.recovery_s = await wait_until(restarted, started)


async def stop_worker(server: ServerProcess, tally: Tally, stopped_s: float = 8.0) -> None:
    pid = await busy_worker(server.url)
    started = time.monotonic()
    os.kill(pid, signal.SIGSTOP)
    await asyncio.sleep(stopped_s)  # past the 5 s unit timeout: the watchdog kills it
    try:
        os.kill(pid, signal.SIGCONT)
    except ProcessLookupError:
        tally.note = "killed by the unit-timeout watchdog before SIGCONT"
    tally.recovery_s = await wait_until(lambda: _ready_without(server.url, pid), started)


async def terminate(server: ServerProcess, tally: Tally) -> None:
    started = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    while server.process.poll() is None and time.monotonic() - started < 90:
        await asyncio.sleep(0.1)
    tally.recovery_s = round(time.monotonic() - started, 2)  # here: time to exit
    tally.note = f"exit code {server.process.returncode}"


FAULTS: dict[str, Callable[[ServerProcess, Tally], Awaitable[None]]] = {
    "SIGKILL piper worker": kill_worker,
    "SIGKILL private redis": kill_redis,
    "SIGSTOP worker 8 s (unit timeout 5 s)": stop_worker,
    "SIGTERM server": terminate,
}


# ---- the run --------------------------------------------------------------------------------


async def run_phase(server: ServerProcess, fault: str, args: argparse.Namespace) -> Tally:
    tally = Tally()
    stop = asyncio.Event()
    clients = [asyncio.create_task(client(server.url, i + 1, args.stream_share, stop,
                                          lambda: tally)) for i in range(args.clients)]
    await asyncio.sleep(args.lead_s)
    await FAULTS[fault](server, tally)
    settle = 1.0 if fault == "SIGTERM server" else args.phase_s
    await asyncio.sleep(settle)
    stop.set()
    await asyncio.gather(*clients)
    return tally


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    server = ServerProcess(env={**os.environ, **ENV}, log_path=args.log)
    try:
        server.wait_ready(timeout_s=300)
        rows = []
        for fault in FAULTS:
            tally = await run_phase(server, fault, args)
            rows.append(tally.row(fault))
            print_row(rows[-1])
        return rows
    finally:
        server.stop()


def print_row(row: dict[str, Any]) -> None:
    errors = ", ".join(f"{k}: {v}" for k, v in sorted(row["errors"].items())) or "-"
    silent = ", ".join(f"{k}: {v}" for k, v in sorted(row["silent"].items())) or "0"
    recovery = "never" if row["recovery_s"] is None else f"{row['recovery_s']} s"
    print(f"| {row['fault']} | {row['sent']} | {row['ok']} | {errors} | {silent} | "
          f"{recovery} | {row['note']} |", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--stream-share", type=float, default=0.25)
    parser.add_argument("--lead-s", type=float, default=4.0, help="load before each fault")
    parser.add_argument("--phase-s", type=float, default=6.0, help="load after recovery")
    parser.add_argument("--log", default=None, help="keep the server's log in this file")
    parser.add_argument("--json", default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    print("| fault | sent | OK | explicit errors | silent failures | recovery | note |")
    print("|---|---|---|---|---|---|---|")
    rows = asyncio.run(run(args))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(rows, out, indent=2)
    return 1 if any(row["silent_total"] for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
