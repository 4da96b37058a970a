"""The inference pool's façade: start, stop, submit, and what /readyz shows of it.

Everything here runs on the front's event loop and never blocks it. The pool holds a fixed
list of worker slots (supervisor.py: spawn, channel, reap, restart delay) and a scheduler
(scheduler.py: priority lanes, solo mode, the wait estimate); it turns worker replies into
results for the callers' futures and restarts a slot whose worker died.

A batch (`submit_batch`: several sentence units of one voice and setting, for workers
spawned with batching on) is one work item like a unit: one place in its priority lane, one
worker, retried whole when that worker dies, bounded by the same deadline, never started
when its future was cancelled, and its characters count in the wait estimate.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing import shared_memory

from . import protocol
from .errors import (
    PoolBusy,
    PoolClosed,
    PoolError,
    PoolStartError,
    PoolUnavailable,
    UnitRejected,
    WorkerCrashed,
)
from .scheduler import Reservation, Scheduler, WorkItem
from .supervisor import WorkerSlot
from .timing import WordTiming

__all__ = ["InferencePool", "PoolBusy", "PoolClosed", "PoolError", "PoolOptions",
           "PoolStartError", "PoolUnavailable", "Reservation", "UnitRejected", "UnitResult",
           "WorkerCrashed"]

LOG = logging.getLogger("tts.inference.pool")


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
    # Multi-threaded sessions exist in the workers (WorkerSpec.threads.solo_threads > 1).
    solo_enabled: bool = True
    # Starting point of the wait estimate until the first unit has been measured.
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
    # The timing of each word, when the unit asked for them (inference/timing.py).
    words: tuple[WordTiming, ...] = ()


def _timings(words: Sequence[Sequence[int]]) -> tuple[WordTiming, ...]:
    return tuple(WordTiming(*word) for word in words)


def sweep_stale_slabs(shm_dir: str = "/dev/shm") -> list[str]:
    """Unlink the slabs of fronts that no longer run. A front killed together with its
    resource tracker (SIGKILL to the whole process group) leaves its slabs behind; its pid
    is in their names (protocol.slab_name), so the next start can tell they are orphans."""
    removed = []
    try:
        names = os.listdir(shm_dir)
    except OSError:
        return removed
    for name in names:
        pid = protocol.slab_front_pid(name)
        if pid is None or pid == os.getpid() or _alive(pid):
            continue
        try:
            os.unlink(os.path.join(shm_dir, name))
            removed.append(name)
        except OSError:
            pass
    if removed:
        LOG.warning("removed %d shared-memory slabs of fronts that died: %s", len(removed),
                    ", ".join(sorted(removed)[:6]))
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: not ours to judge
    return True


class InferencePool:
    def __init__(self, options: PoolOptions, make_spec: Callable[[int, str], protocol.WorkerSpec]):
        self.options = options
        self._make_spec = make_spec
        self._slots: list[WorkerSlot] = []
        self._scheduler = Scheduler(options.solo_enabled, options.initial_seconds_per_char)
        self._work_ids = itertools.count(1)
        self._request_keys = itertools.count(1)
        self._closing = False
        self._watchdog: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._ctx = multiprocessing.get_context("spawn")
        self.units_completed = 0
        self.batches_completed = 0
        self.batched_units_completed = 0

    @property
    def seconds_per_char(self) -> float:
        return self._scheduler.seconds_per_char

    # ---- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Create the slabs, spawn every worker and wait until all are ready (or one fails)."""
        front_pid = os.getpid()
        sweep_stale_slabs()
        for index in range(self.options.workers):
            name = protocol.slab_name(front_pid, self.options.name, index)
            spec = self._make_spec(index, name)
            slab = shared_memory.SharedMemory(name=name, create=True, size=spec.slab_bytes)
            self._slots.append(WorkerSlot(index, spec, slab))
        try:
            for slot in self._slots:
                self._spawn(slot)
            waits = [s.started for s in self._slots if s.started is not None]
            await asyncio.wait_for(asyncio.gather(*waits), self.options.ready_timeout_s)
        except BaseException as exc:
            await self.stop()
            if isinstance(exc, TimeoutError):
                raise PoolStartError("workers not ready within pool.ready_timeout_s") from exc
            raise
        self._watchdog = asyncio.get_running_loop().create_task(self._watch_deadlines())
        LOG.info("%s pool ready: %d workers", self.options.name, len(self._slots))

    async def stop(self) -> None:
        """Fail what still waits, stop every worker (message, join, SIGTERM, SIGKILL), unlink."""
        self._closing = True
        if self._watchdog is not None:
            self._watchdog.cancel()
        self._fail_queued(PoolClosed("server is shutting down"))
        for slot in self._slots:
            slot.send(protocol.Stop())
        await asyncio.gather(*(s.reap(self.options.stop_timeout_s) for s in self._slots))
        for slot in self._slots:
            if slot.work is not None:
                self._fail(slot.work, PoolClosed("server is shutting down"))
                slot.work = None
            if slot.reader_task is not None:
                slot.reader_task.cancel()
            slot.unlink()
        for task in list(self._background):
            task.cancel()

    # ---- submitting work -------------------------------------------------------------------

    def new_request_key(self) -> int:
        return next(self._request_keys)

    def submit(
        self, request_key: int, units: Sequence[protocol.SynthesizeUnit], priority: int = 1,
        *, admitted: bool = False, front: bool = False,
    ) -> list[asyncio.Future[UnitResult]]:
        """Queue every unit of one request, or none (PoolBusy, PoolClosed, PoolUnavailable).
        admitted: the caller already passed check_admission for these units (the batching
        front, which holds them a few ms first; the rest of a request whose first unit ran
        alone), so the queue bound is not applied twice. front: at the head of their lane,
        in order (work admitted before what waits there)."""
        if admitted:
            self._check_open()
        else:
            self.check_admission(len(units))
        ordered = list(reversed(units)) if front else list(units)
        futures = [
            self._scheduler.enqueue(dataclasses.replace(m, work_id=next(self._work_ids)),
                                    (request_key,), priority, front).future
            for m in ordered
        ]
        self._dispatch()
        return futures[::-1] if front else futures

    @property
    def idle_workers(self) -> int:
        """Workers that would start a unit submitted now (0 while anything is queued)."""
        return self._scheduler.idle_workers(self._slots)

    def submit_batch(
        self, request_keys: Sequence[int], batch: protocol.SynthesizeBatch, priority: int = 1
    ) -> asyncio.Future[list[UnitResult]]:
        """Queue one batch as one work item; its future gets one UnitResult per text. The
        units were admitted (check_admission) when the caller accepted them, so the queue
        bound is not applied again; PoolClosed or PoolUnavailable still refuse it."""
        self._check_open()
        message = dataclasses.replace(batch, work_id=next(self._work_ids))
        item = self._scheduler.enqueue(message, tuple(dict.fromkeys(request_keys)), priority)
        self._dispatch()
        return item.future

    def check_admission(self, units: int) -> None:
        """Raise what submit() would for `units` more units (PoolClosed, PoolUnavailable,
        PoolBusy) without queueing anything."""
        self._check_open()
        if len(self._scheduler.queue) + units > self.options.max_queued_units:
            raise PoolBusy("the synthesis queue is full")

    def _check_open(self) -> None:
        if self._closing:
            raise PoolClosed("server is shutting down")
        if not self.available:
            raise PoolUnavailable("no worker of this engine can start")
        if self._slots and not any(s.ready for s in self._slots):
            # Every worker is restarting: the fallback engine answers now, not in seconds.
            raise PoolUnavailable("no worker of this engine is ready")

    # ---- state for /readyz -----------------------------------------------------------------

    @property
    def available(self) -> bool:
        """Some worker is up or may still come up (not every slot failed its last start)."""
        return not self._slots or not all(s.broken for s in self._slots)

    def estimated_wait_s(self, priority: int, chars: int, units: int) -> float:
        return self._scheduler.estimated_wait_s(self._slots, priority, chars, units)

    def reserve(self, priority: int, chars: int, units: int) -> Reservation:
        """Count an admitted request's work in the wait estimate until it is queued:
        release it just before submit(), or when the request is dropped."""
        return self._scheduler.reserve(priority, chars, units)

    def busy_with(self, max_priority: int) -> bool:
        return self._scheduler.busy_with(self._slots, max_priority)

    @property
    def ready(self) -> bool:
        return bool(self._slots) and all(s.ready for s in self._slots)

    def snapshot(self) -> dict[str, object]:
        queue = self._scheduler.queue
        return {
            "workers_total": len(self._slots),
            "workers_ready": sum(s.ready for s in self._slots),
            "queued_units": len(queue),
            "queued_by_priority": queue.depth_by_priority(),
            "seconds_per_char": round(self.seconds_per_char, 6),
            "reserved_requests": self._scheduler.reservations,
            "reserved_units": self._scheduler.reserved_units,
            "busy_workers": sum(s.work is not None for s in self._slots),
            "restarts": sum(s.restarts for s in self._slots),
            "units_completed": self.units_completed,
            "batches_completed": self.batches_completed,
            "batched_units_completed": self.batched_units_completed,
            "workers": self.worker_states(),
        }

    def worker_states(self) -> list[dict[str, object]]:
        return [slot.state_snapshot() for slot in self._slots]

    # ---- dispatch --------------------------------------------------------------------------

    def _dispatch(self) -> None:
        while (assignment := self._scheduler.next_assignment(self._slots)) is not None:
            slot, item, solo = assignment
            self._start(slot, item, solo)  # type: ignore[arg-type]

    def _start(self, slot: WorkerSlot, item: WorkItem, solo: bool) -> None:
        item.dispatched_at = time.monotonic()
        item.attempts += 1
        slot.work = item
        message = item.message
        if isinstance(message, protocol.SynthesizeUnit):  # a batch runs on its own session
            item.solo = solo
            message = dataclasses.replace(message, solo=solo)
        slot.send(message)

    # ---- replies ---------------------------------------------------------------------------

    def _on_message(self, slot: WorkerSlot, message: protocol.Message) -> None:
        if isinstance(message, protocol.UnitDone):
            self._complete(slot, message)
        elif isinstance(message, protocol.BatchDone):
            self._complete_batch(slot, message)
        elif isinstance(message, protocol.UnitFailed):
            self._reject(slot, message)
        elif isinstance(message, protocol.Ready):
            slot.became_ready(message)
        elif isinstance(message, protocol.Fatal):
            slot.failed_to_start(message.message)
            if not self.available:
                self._fail_queued(PoolUnavailable(f"no worker can start: {message.message}"))
        self._dispatch()

    def _fail(self, item: WorkItem, error: Exception) -> None:
        if not item.future.done():
            item.future.set_exception(error)

    def _take(self, slot: WorkerSlot, work_id: int) -> WorkItem | None:
        """The worker's current work item if the reply is about it; the worker is then idle."""
        item = slot.work
        if item is None or item.work_id != work_id:
            LOG.warning("worker %d: reply for unknown work item %s", slot.index, work_id)
            return None
        slot.work = None
        return item

    def _count_done(self, slot: WorkerSlot, item: WorkItem, process_cpu_s: float) -> None:
        slot.units_done += item.size
        slot.cpu_s_current = process_cpu_s
        self.units_completed += item.size

    @staticmethod
    def _service_s(item: WorkItem) -> float:
        """How long the item held its worker as the front saw it: dispatch to reply read.
        What drains the queue, so what the estimate learns: besides the synthesis it holds
        the pipe and this event loop's delay in reading the reply (under a flood of
        requests, the worker waits that long for its next item)."""
        return time.monotonic() - item.dispatched_at

    def _complete(self, slot: WorkerSlot, done: protocol.UnitDone) -> None:
        item = self._take(slot, done.work_id)
        if item is None:
            return
        self._count_done(slot, item, done.process_cpu_s)
        if not item.solo:  # a solo run used every core: not per-worker speed
            self._scheduler.learn_speed(self._service_s(item), item.chars)
        nbytes = done.samples * protocol.SAMPLE_WIDTH_BYTES
        pcm = bytes(slot.slab.buf[:nbytes])  # copy out before the slab is reused
        if not item.future.done():
            queue_ms = (item.dispatched_at - item.enqueued_at) * 1000
            result = UnitResult(pcm, done.sample_rate, queue_ms, done.synthesis_ms,
                                slot.index, item.attempts, item.solo,
                                words=_timings(done.words))
            item.future.set_result(result)

    def _complete_batch(self, slot: WorkerSlot, done: protocol.BatchDone) -> None:
        item = self._take(slot, done.work_id)
        if item is None:
            return
        self._count_done(slot, item, done.process_cpu_s)
        self.batches_completed += 1
        self.batched_units_completed += item.size
        self._scheduler.learn_speed(self._service_s(item), item.chars)
        if len(done.samples) != item.size:
            message = f"worker answered a batch of {item.size} with {len(done.samples)} items"
            self._fail(item, PoolError(message))
        elif not item.future.done():
            item.future.set_result(self._split_batch(slot, item, done))

    def _split_batch(
        self, slot: WorkerSlot, item: WorkItem, done: protocol.BatchDone
    ) -> list[UnitResult]:
        """Each text's samples out of the slab (one after another); time shared by samples."""
        queue_ms = (item.dispatched_at - item.enqueued_at) * 1000
        total = sum(done.samples)
        results, offset = [], 0
        words = done.words if len(done.words) == len(done.samples) else ((),) * len(done.samples)
        for samples, timed in zip(done.samples, words, strict=True):
            end = offset + samples * protocol.SAMPLE_WIDTH_BYTES
            share = samples / total if total else 1 / len(done.samples)
            results.append(UnitResult(bytes(slot.slab.buf[offset:end]), done.sample_rate,
                                      queue_ms, done.synthesis_ms * share, slot.index,
                                      item.attempts, batch_size=len(done.samples),
                                      words=_timings(timed)))
            offset = end
        return results

    def _fail_queued(self, error: PoolError) -> None:
        while (item := self._scheduler.queue.pop()) is not None:
            self._fail(item, error)

    def _reject(self, slot: WorkerSlot, failed: protocol.UnitFailed) -> None:
        item = self._take(slot, failed.work_id)
        if item is not None:
            self._fail(item, UnitRejected(failed.code, failed.message))

    # ---- supervision -----------------------------------------------------------------------

    def _spawn(self, slot: WorkerSlot) -> None:
        slot.spawn(self._ctx, self._on_message, self._on_channel_closed)

    def _on_channel_closed(self, slot: WorkerSlot) -> None:
        if not self._closing:
            self._track(self._restart(slot))

    async def _restart(self, slot: WorkerSlot) -> None:
        work = slot.mark_dead()
        if work is not None:
            self._retry_or_fail(work, slot.index)
        await slot.reap(timeout_s=1.0)
        exitcode = slot.process.exitcode if slot.process else None
        LOG.warning("worker %d exited (code %s); restarting", slot.index, exitcode)
        if self._closing:
            return
        await asyncio.sleep(slot.next_backoff(self.options.restart_backoff_s))
        if not self._closing:
            slot.restarts += 1
            self._spawn(slot)

    def _retry_or_fail(self, item: WorkItem, worker_index: int) -> None:
        if item.finished:
            return
        if item.attempts <= self.options.max_unit_retries:
            LOG.warning("retrying unit %d lost with worker %d", item.work_id, worker_index)
            self._scheduler.queue.push(item, front=True)
            self._dispatch()
        else:
            self._fail(item, WorkerCrashed("the worker synthesizing this request died"))

    async def _watch_deadlines(self) -> None:
        period = min(1.0, self.options.unit_timeout_s / 4)
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            for slot in self._slots:
                slot.kill_if_stuck(now, self.options.unit_timeout_s)

    def _track(self, coro: object) -> None:
        task = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        self._background.add(task)
        task.add_done_callback(self._background.discard)
