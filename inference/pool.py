"""Front side of the inference pool: spawn, feed and supervise a fixed list of worker processes.

Everything here runs on the front's event loop and never blocks it: worker sockets are
asyncio streams, process joins run in the default executor. Units wait in one FIFO and go
to an idle worker (one unit per worker at a time, so the least-loaded worker is always an
idle one and a dead worker loses at most one unit).

A batch (`submit_batch`: several sentence units of one voice and setting, for workers
spawned with batching on) is one work item like a unit: one place in its priority lane, one
worker, retried whole when that worker dies, bounded by the same deadline, never started
when its future was cancelled, and its characters count in the wait estimate.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import enum
import itertools
import logging
import multiprocessing
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing import shared_memory
from multiprocessing.process import BaseProcess
from typing import Any

from . import protocol
from .worker import run_worker

LOG = logging.getLogger("tts.inference.pool")
MAX_RESTART_BACKOFF_S = 30.0
# A worker that dies sooner than this after its start is crash-looping: back off harder.
CRASH_LOOP_WINDOW_S = 10.0
SPEED_EWMA_ALPHA = 0.1


class PoolError(RuntimeError):
    code = "pool_error"


class PoolClosed(PoolError):
    code = "shutting_down"


class PoolBusy(PoolError):
    code = "overloaded"


class PoolStartError(PoolError):
    code = "pool_start_failed"


class WorkerCrashed(PoolError):
    code = "worker_crashed"


class PoolUnavailable(PoolError):
    """No worker can run: every one failed to (re)start, for example a corrupted model."""

    code = "engine_unavailable"


class UnitRejected(PoolError):
    """The worker refused or failed the unit; `code` is one of protocol.FAIL_*."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class PoolOptions:
    workers: int
    # Names the pool in logs and shared-memory names ("piper", "espeak").
    name: str = "piper"
    unit_timeout_s: float = 60.0
    max_unit_retries: int = 1
    max_queued_units: int = 4096
    ready_timeout_s: float = 180.0
    restart_backoff_s: float = 0.5
    stop_timeout_s: float = 5.0
    # Multi-threaded sessions exist in the workers (WorkerSpec.solo_threads > 1).
    solo_enabled: bool = True
    log_level: str = "INFO"
    log_format: str = "auto"
    # Starting point of the wait estimate until real units have been measured.
    initial_seconds_per_char: float = 0.006


@dataclass(frozen=True)
class UnitResult:
    pcm: bytes
    sample_rate: int
    queue_ms: float
    synthesis_ms: float
    worker_index: int
    attempts: int
    # Ran on the worker's multi-threaded solo session.
    solo: bool = False
    # Items of the batch this unit was synthesized in (1: alone); synthesis_ms is then its
    # share of the batch's time, by samples.
    batch_size: int = 1


Work = protocol.SynthesizeUnit | protocol.SynthesizeBatch


@dataclass(eq=False)
class _Unit:
    """One queued work item: a sentence unit, or a batch of them under one future."""

    message: Work
    request_keys: tuple[int, ...]
    # A UnitResult, or for a batch a list of them (text order).
    future: asyncio.Future[Any]
    # 0 runs first (vip), then 1 (standard), then 2 (background jobs).
    priority: int = 1
    enqueued_at: float = field(default_factory=time.monotonic)
    dispatched_at: float = 0.0
    attempts: int = 0
    finished: bool = False
    solo: bool = False

    @property
    def work_id(self) -> int:
        message = self.message
        return message.unit_id if isinstance(message, protocol.SynthesizeUnit) else message.batch_id

    @property
    def texts(self) -> tuple[str, ...]:
        message = self.message
        return (message.text,) if isinstance(message, protocol.SynthesizeUnit) else message.texts

    @property
    def size(self) -> int:
        return len(self.texts)

    @property
    def chars(self) -> int:
        return sum(len(text) for text in self.texts)


class UnitQueue:
    """One FIFO of work items per priority, lowest number first; counts queued sentence
    units (a batch counts its items) and characters for estimates."""

    def __init__(self) -> None:
        self._lanes: dict[int, collections.deque[_Unit]] = collections.defaultdict(
            collections.deque
        )
        self._chars: collections.Counter[int] = collections.Counter()
        self._units: collections.Counter[int] = collections.Counter()

    def __len__(self) -> int:
        return sum(self._units.values())

    def push(self, unit: _Unit, front: bool = False) -> None:
        lane = self._lanes[unit.priority]
        lane.appendleft(unit) if front else lane.append(unit)
        self._chars[unit.priority] += unit.chars
        self._units[unit.priority] += unit.size

    def pop(self) -> _Unit | None:
        for priority in sorted(self._lanes):
            lane = self._lanes[priority]
            if lane:
                unit = lane.popleft()
                self._chars[unit.priority] -= unit.chars
                self._units[unit.priority] -= unit.size
                return unit
        return None

    def chars_ahead(self, priority: int) -> int:
        """Characters that would run before a new unit of this priority."""
        return sum(c for p, c in self._chars.items() if p <= priority)

    def depth_by_priority(self) -> dict[int, int]:
        return {p: self._units[p] for p in sorted(self._lanes)}


class WorkerState(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    DEAD = "dead"


@dataclass(eq=False)
class WorkerHandle:
    """One slot of the fixed worker list; its process is replaced in place when it dies."""

    index: int
    spec: protocol.WorkerSpec
    slab: shared_memory.SharedMemory
    state: WorkerState = WorkerState.DEAD
    process: BaseProcess | None = None
    writer: asyncio.StreamWriter | None = None
    reader_task: asyncio.Task[None] | None = None
    unit: _Unit | None = None
    started_at: float = 0.0
    started: asyncio.Future[None] | None = None
    restarts: int = 0
    backoff_s: float = 0.0
    units_done: int = 0
    # Its last start failed (Fatal): it cannot run anything until a restart succeeds.
    broken: bool = False
    # CPU seconds of this slot's earlier processes, and the latest report of the current one.
    cpu_s_before: float = 0.0
    cpu_s_current: float = 0.0

    @property
    def cpu_seconds(self) -> float:
        """Monotonic across restarts, so a counter built on it never goes back."""
        return self.cpu_s_before + self.cpu_s_current

    @property
    def idle(self) -> bool:
        return self.state is WorkerState.READY and self.unit is None


class InferencePool:
    def __init__(self, options: PoolOptions, make_spec: Callable[[int, str], protocol.WorkerSpec]):
        self.options = options
        self._make_spec = make_spec
        self._handles: list[WorkerHandle] = []
        self._pending = UnitQueue()
        # Seconds of single-threaded synthesis per character, kept up to date (EWMA).
        self.seconds_per_char = options.initial_seconds_per_char
        self._active_requests: collections.Counter[int] = collections.Counter()
        self._unit_ids = itertools.count(1)
        self._request_keys = itertools.count(1)
        self._closing = False
        self._watchdog: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._ctx = multiprocessing.get_context("spawn")
        self.units_completed = 0
        self.batches_completed = 0
        self.batched_units_completed = 0

    # ---- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Create the slabs, spawn every worker and wait until all are ready (or one fails)."""
        front_pid = os.getpid()
        for index in range(self.options.workers):
            name = protocol.slab_name(front_pid, self.options.name, index)
            spec = self._make_spec(index, name)
            slab = shared_memory.SharedMemory(name=name, create=True, size=spec.slab_bytes)
            self._handles.append(WorkerHandle(index, spec, slab))
        try:
            for handle in self._handles:
                self._spawn(handle)
            waits = [h.started for h in self._handles if h.started is not None]
            await asyncio.wait_for(asyncio.gather(*waits), self.options.ready_timeout_s)
        except BaseException as exc:
            await self.stop()
            if isinstance(exc, TimeoutError):
                raise PoolStartError("workers not ready within pool.ready_timeout_s") from exc
            raise
        self._watchdog = asyncio.get_running_loop().create_task(self._watch_deadlines())
        LOG.info("%s pool ready: %d workers", self.options.name, len(self._handles))

    async def stop(self) -> None:
        """Fail what still waits, stop every worker (message, join, SIGTERM, SIGKILL), unlink."""
        self._closing = True
        if self._watchdog is not None:
            self._watchdog.cancel()
        self._fail_queued(PoolClosed("server is shutting down"))
        for handle in self._handles:
            self._send(handle, protocol.Stop())
        await asyncio.gather(*(self._reap(h, self.options.stop_timeout_s) for h in self._handles))
        for handle in self._handles:
            if handle.unit is not None:
                self._fail(handle.unit, PoolClosed("server is shutting down"))
                handle.unit = None
            if handle.reader_task is not None:
                handle.reader_task.cancel()
            _unlink(handle.slab)
        for task in list(self._background):
            task.cancel()

    # ---- submitting work -------------------------------------------------------------------

    def new_request_key(self) -> int:
        return next(self._request_keys)

    def submit(
        self, request_key: int, units: Sequence[protocol.SynthesizeUnit], priority: int = 1,
        *, admitted: bool = False,
    ) -> list[asyncio.Future[UnitResult]]:
        """Queue every unit of one request, or none (PoolBusy, PoolClosed, PoolUnavailable).
        admitted: the caller already passed check_admission for these units (the batching
        front, which holds them a few ms first), so the queue bound is not applied twice."""
        if admitted:
            self._check_open()
        else:
            self.check_admission(len(units))
        futures = [
            self._enqueue(dataclasses.replace(m, unit_id=next(self._unit_ids)), (request_key,),
                          priority)
            for m in units
        ]
        self._dispatch()
        return futures

    def submit_batch(
        self, request_keys: Sequence[int], batch: protocol.SynthesizeBatch, priority: int = 1
    ) -> asyncio.Future[list[UnitResult]]:
        """Queue one batch as one work item; its future gets one UnitResult per text. The
        units were admitted (check_admission) when the caller accepted them, so the queue
        bound is not applied again; PoolClosed or PoolUnavailable still refuse it."""
        self._check_open()
        message = dataclasses.replace(batch, batch_id=next(self._unit_ids))
        future = self._enqueue(message, tuple(dict.fromkeys(request_keys)), priority)
        self._dispatch()
        return future

    def check_admission(self, units: int) -> None:
        """Raise what submit() would for `units` more units (PoolClosed, PoolUnavailable,
        PoolBusy) without queueing anything."""
        self._check_open()
        if len(self._pending) + units > self.options.max_queued_units:
            raise PoolBusy("the synthesis queue is full")

    def _check_open(self) -> None:
        if self._closing:
            raise PoolClosed("server is shutting down")
        if not self.available:
            raise PoolUnavailable("no worker of this engine can start")

    def _enqueue(self, message: Work, request_keys: tuple[int, ...], priority: int
                 ) -> asyncio.Future[Any]:
        unit = _Unit(message, request_keys, asyncio.get_running_loop().create_future(), priority)
        unit.future.add_done_callback(lambda f, u=unit: self._on_future_done(u))
        for key in request_keys:
            self._active_requests[key] += 1
        self._pending.push(unit)
        return unit.future

    # ---- state for /readyz -----------------------------------------------------------------

    @property
    def available(self) -> bool:
        """Some worker is up or may still come up (not every slot failed its last start)."""
        return not self._handles or not all(h.broken for h in self._handles)

    def estimated_wait_s(self, priority: int, chars: int, units: int) -> float:
        """Time until a request of `chars` characters at `priority` would be done: the
        work queued ahead of it and half the work running, spread over the ready workers,
        then its own units over as many workers as it has units."""
        ready = max(1, sum(h.state is WorkerState.READY for h in self._handles))
        running = sum(h.unit.chars for h in self._handles if h.unit is not None)
        ahead = self._pending.chars_ahead(priority) + running / 2
        own = chars / max(1, min(ready, units))
        return (ahead / ready + own) * self.seconds_per_char

    def busy_with(self, max_priority: int) -> bool:
        """Units of priority <= max_priority are queued or running (interactive load)."""
        running = any(h.unit is not None and h.unit.priority <= max_priority
                      for h in self._handles)
        queued = any(depth for priority, depth in self._pending.depth_by_priority().items()
                     if priority <= max_priority)
        return running or queued

    @property
    def ready(self) -> bool:
        return bool(self._handles) and all(h.state is WorkerState.READY for h in self._handles)

    def snapshot(self) -> dict[str, object]:
        return {
            "workers_total": len(self._handles),
            "workers_ready": sum(h.state is WorkerState.READY for h in self._handles),
            "queued_units": len(self._pending),
            "queued_by_priority": self._pending.depth_by_priority(),
            "seconds_per_char": round(self.seconds_per_char, 6),
            "busy_workers": sum(h.unit is not None for h in self._handles),
            "restarts": sum(h.restarts for h in self._handles),
            "units_completed": self.units_completed,
            "batches_completed": self.batches_completed,
            "batched_units_completed": self.batched_units_completed,
            "workers": self.worker_states(),
        }

    def worker_states(self) -> list[dict[str, object]]:
        return [
            {
                "index": h.index,
                "pid": h.process.pid if h.process is not None else None,
                "state": h.state.value,
                "busy": h.unit is not None,
                "restarts": h.restarts,
                "units_done": h.units_done,
                "cpu_seconds": round(h.cpu_seconds, 3),
            }
            for h in self._handles
        ]

    # ---- dispatch --------------------------------------------------------------------------

    def _solo_mode(self) -> bool:
        """A single request has the whole pool: run its units one by one on wide sessions."""
        return self.options.solo_enabled and len(self._active_requests) == 1

    def _dispatch(self) -> None:
        while self._pending:
            solo = self._solo_mode()
            if solo and any(h.unit is not None for h in self._handles):
                return  # the solo unit already uses every core
            handle = next((h for h in self._handles if h.idle), None)
            if handle is None:
                return
            unit = self._pending.pop()
            if unit is None:
                return
            if unit.finished:
                continue  # cancelled while it waited: never started
            self._start_unit(handle, unit, solo)

    def _start_unit(self, handle: WorkerHandle, unit: _Unit, solo: bool) -> None:
        unit.dispatched_at = time.monotonic()
        unit.attempts += 1
        handle.unit = unit
        message = unit.message
        if isinstance(message, protocol.SynthesizeUnit):  # a batch runs on its own session
            unit.solo = solo
            message = dataclasses.replace(message, solo=solo)
        self._send(handle, message)

    def _send(self, handle: WorkerHandle, message: protocol.Message) -> None:
        if handle.writer is not None and not handle.writer.is_closing():
            handle.writer.write(message.encode())

    # ---- unit completion -------------------------------------------------------------------

    def _on_future_done(self, unit: _Unit) -> None:
        if not unit.finished:
            unit.finished = True
            for key in unit.request_keys:
                self._active_requests[key] -= 1
                if self._active_requests[key] <= 0:
                    del self._active_requests[key]

    def _fail(self, unit: _Unit, error: Exception) -> None:
        if not unit.future.done():
            unit.future.set_exception(error)

    def _take(self, handle: WorkerHandle, work_id: int) -> _Unit | None:
        """The worker's current work item if the reply is about it; the worker is then idle."""
        unit = handle.unit
        if unit is None or unit.work_id != work_id:
            LOG.warning("worker %d: reply for unknown unit %s", handle.index, work_id)
            return None
        handle.unit = None
        return unit

    def _count_done(self, handle: WorkerHandle, unit: _Unit, process_cpu_s: float) -> None:
        handle.units_done += unit.size
        handle.cpu_s_current = process_cpu_s
        self.units_completed += unit.size

    def _complete(self, handle: WorkerHandle, done: protocol.UnitDone) -> None:
        unit = self._take(handle, done.unit_id)
        if unit is None:
            return
        self._count_done(handle, unit, done.process_cpu_s)
        if not unit.solo and unit.chars:  # a solo run used every core: not per-worker speed
            self._learn_speed(done.synthesis_ms / 1000 / unit.chars)
        nbytes = done.samples * protocol.SAMPLE_WIDTH_BYTES
        pcm = bytes(handle.slab.buf[:nbytes])  # copy out before the slab is reused
        if not unit.future.done():
            queue_ms = (unit.dispatched_at - unit.enqueued_at) * 1000
            result = UnitResult(pcm, done.sample_rate, queue_ms, done.synthesis_ms,
                                handle.index, unit.attempts, unit.solo)
            unit.future.set_result(result)

    def _complete_batch(self, handle: WorkerHandle, done: protocol.BatchDone) -> None:
        unit = self._take(handle, done.batch_id)
        if unit is None:
            return
        self._count_done(handle, unit, done.process_cpu_s)
        self.batches_completed += 1
        self.batched_units_completed += unit.size
        if unit.chars:
            self._learn_speed(done.synthesis_ms / 1000 / unit.chars)
        if len(done.samples) != unit.size:
            message = f"worker answered a batch of {unit.size} with {len(done.samples)} items"
            self._fail(unit, PoolError(message))
        elif not unit.future.done():
            unit.future.set_result(self._split_batch(handle, unit, done))

    def _split_batch(
        self, handle: WorkerHandle, unit: _Unit, done: protocol.BatchDone
    ) -> list[UnitResult]:
        """Each text's samples out of the slab (one after another); time shared by samples."""
        queue_ms = (unit.dispatched_at - unit.enqueued_at) * 1000
        total = sum(done.samples)
        results, offset = [], 0
        for samples in done.samples:
            end = offset + samples * protocol.SAMPLE_WIDTH_BYTES
            share = samples / total if total else 1 / len(done.samples)
            results.append(UnitResult(bytes(handle.slab.buf[offset:end]), done.sample_rate,
                                      queue_ms, done.synthesis_ms * share, handle.index,
                                      unit.attempts, batch_size=len(done.samples)))
            offset = end
        return results

    def _learn_speed(self, seconds_per_char: float) -> None:
        self.seconds_per_char += SPEED_EWMA_ALPHA * (seconds_per_char - self.seconds_per_char)

    def _fail_queued(self, error: PoolError) -> None:
        while (unit := self._pending.pop()) is not None:
            self._fail(unit, error)

    def _reject(self, handle: WorkerHandle, failed: protocol.UnitFailed) -> None:
        unit = self._take(handle, failed.unit_id)
        if unit is not None:
            self._fail(unit, UnitRejected(failed.code, failed.message))

    def _on_message(self, handle: WorkerHandle, message: protocol.Message) -> None:
        if isinstance(message, protocol.UnitDone):
            self._complete(handle, message)
        elif isinstance(message, protocol.BatchDone):
            self._complete_batch(handle, message)
        elif isinstance(message, protocol.UnitFailed):
            self._reject(handle, message)
        elif isinstance(message, protocol.Ready):
            handle.state = WorkerState.READY
            handle.broken = False
            handle.cpu_s_current = message.process_cpu_s
            LOG.info("worker %d ready (pid %d)", handle.index, message.pid)
            if handle.started is not None and not handle.started.done():
                handle.started.set_result(None)
        elif isinstance(message, protocol.Fatal):
            LOG.error("worker %d cannot start: %s", handle.index, message.message)
            handle.broken = True
            if handle.started is not None and not handle.started.done():
                handle.started.set_exception(PoolStartError(message.message))
            if not self.available:
                self._fail_queued(PoolUnavailable(f"no worker can start: {message.message}"))
        self._dispatch()

    # ---- supervision -----------------------------------------------------------------------

    def _spawn(self, handle: WorkerHandle) -> None:
        front_sock, worker_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        process = self._ctx.Process(
            target=run_worker,
            args=(handle.spec, worker_sock, self.options.log_level, self.options.log_format),
            name=f"tts-worker-{handle.index}",
            daemon=True,
        )
        process.start()
        worker_sock.close()  # the child holds its own copy; ours would hide its EOF
        handle.process = process
        handle.state = WorkerState.STARTING
        handle.started_at = time.monotonic()
        loop = asyncio.get_running_loop()
        handle.started = loop.create_future()
        handle.started.add_done_callback(_consume_exception)
        handle.reader_task = loop.create_task(self._read_loop(handle, front_sock))

    async def _read_loop(self, handle: WorkerHandle, sock: socket.socket) -> None:
        reader, writer = await asyncio.open_unix_connection(sock=sock)
        handle.writer = writer
        decoder = protocol.MessageReader()
        try:
            while data := await reader.read(protocol.READ_CHUNK_BYTES):
                for message in decoder.feed(data):
                    self._on_message(handle, message)
        except (ConnectionError, protocol.ProtocolError) as exc:
            LOG.error("worker %d channel broken: %s", handle.index, exc)
        finally:
            writer.close()
            if not self._closing:
                self._track(self._on_worker_exit(handle))

    async def _on_worker_exit(self, handle: WorkerHandle) -> None:
        handle.state = WorkerState.DEAD
        handle.writer = None
        handle.cpu_s_before += handle.cpu_s_current
        handle.cpu_s_current = 0.0
        if handle.started is not None and not handle.started.done():
            handle.started.set_exception(PoolStartError(f"worker {handle.index} exited at start"))
        unit, handle.unit = handle.unit, None
        if unit is not None:
            self._retry_or_fail(unit, handle.index)
        await self._reap(handle, timeout_s=1.0)
        exitcode = handle.process.exitcode if handle.process else None
        LOG.warning("worker %d exited (code %s); restarting", handle.index, exitcode)
        if self._closing:
            return
        handle.backoff_s = self._next_backoff(handle)
        await asyncio.sleep(handle.backoff_s)
        if not self._closing:
            handle.restarts += 1
            self._spawn(handle)

    def _next_backoff(self, handle: WorkerHandle) -> float:
        crash_looping = time.monotonic() - handle.started_at < CRASH_LOOP_WINDOW_S
        if crash_looping and handle.backoff_s:
            return min(handle.backoff_s * 2, MAX_RESTART_BACKOFF_S)
        return self.options.restart_backoff_s

    def _retry_or_fail(self, unit: _Unit, worker_index: int) -> None:
        if unit.finished:
            return
        if unit.attempts <= self.options.max_unit_retries:
            LOG.warning("retrying unit %d lost with worker %d", unit.work_id, worker_index)
            self._pending.push(unit, front=True)
            self._dispatch()
        else:
            self._fail(unit, WorkerCrashed("the worker synthesizing this request died"))

    async def _reap(self, handle: WorkerHandle, timeout_s: float) -> None:
        """Join without ever blocking the loop or waiting forever: join, SIGTERM, SIGKILL."""
        process = handle.process
        if process is None:
            return
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, process.join, timeout_s)
        if process.exitcode is None:
            process.terminate()
            await loop.run_in_executor(None, process.join, 1.0)
        if process.exitcode is None:
            process.kill()
            await loop.run_in_executor(None, process.join, 1.0)

    async def _watch_deadlines(self) -> None:
        """A worker stuck on one unit past its deadline is as dead as one that exited."""
        period = min(1.0, self.options.unit_timeout_s / 4)
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            for handle in self._handles:
                unit = handle.unit
                limit = self.options.unit_timeout_s
                overdue = unit is not None and now - unit.dispatched_at > limit
                if overdue and handle.process is not None and handle.process.is_alive():
                    LOG.error("worker %d stuck past pool.unit_timeout_s: killing", handle.index)
                    handle.process.kill()

    def _track(self, coro: object) -> None:
        task = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def _consume_exception(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()


def _unlink(slab: shared_memory.SharedMemory) -> None:
    slab.close()
    try:
        slab.unlink()
    except FileNotFoundError:
        pass

