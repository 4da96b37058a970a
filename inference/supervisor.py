"""One worker slot: its process, its channel, its slab, and how it is restarted.

The pool keeps a fixed list of slots and never touches a slot's socket or process itself
(uvicorn's Process/Multiprocess split). A slot spawns its worker, reads its messages and
hands them to the pool, reaps it without blocking the loop, and chooses its restart delay.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import socket
from collections.abc import Callable
from multiprocessing import shared_memory
from multiprocessing.context import SpawnContext
from multiprocessing.process import BaseProcess

from . import protocol
from .errors import PoolStartError
from .scheduler import WorkItem
from .worker import run_worker

LOG = logging.getLogger("tts.inference.pool")
MAX_RESTART_BACKOFF_S = 30.0


class WorkerState(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    DEAD = "dead"


class WorkerSlot:
    """One slot of the fixed worker list; its process is replaced in place when it dies."""

    def __init__(self, index: int, spec: protocol.WorkerSpec,
                 slab: shared_memory.SharedMemory) -> None:
        self.index = index
        self.spec = spec
        self.slab = slab
        self.state = WorkerState.DEAD
        self.process: BaseProcess | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.reader_task: asyncio.Task[None] | None = None
        self.work: WorkItem | None = None
        self.started: asyncio.Future[None] | None = None
        self.restarts = 0
        self.backoff_s = 0.0
        self.units_done = 0
        # The current process reported Ready (a death after that is not a failed start).
        self.was_ready = False
        # Its last start failed (Fatal): it cannot run anything until a restart succeeds.
        self.broken = False
        # CPU seconds of this slot's earlier processes, and the latest report of the current one.
        self.cpu_s_before = 0.0
        self.cpu_s_current = 0.0

    @property
    def cpu_seconds(self) -> float:
        """Monotonic across restarts, so a counter built on it never goes back."""
        return self.cpu_s_before + self.cpu_s_current

    @property
    def ready(self) -> bool:
        return self.state is WorkerState.READY

    @property
    def idle(self) -> bool:
        return self.ready and self.work is None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    # ---- lifecycle -----------------------------------------------------------------------

    def spawn(self, ctx: SpawnContext,
              on_message: Callable[[WorkerSlot, protocol.Message], None],
              on_exit: Callable[[WorkerSlot], None]) -> None:
        front_sock, worker_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        process = ctx.Process(target=run_worker, args=(self.spec, worker_sock),
                              name=f"tts-worker-{self.index}", daemon=True)
        process.start()
        worker_sock.close()  # the child holds its own copy; ours would hide its EOF
        self.process = process
        self.state = WorkerState.STARTING
        self.was_ready = False
        loop = asyncio.get_running_loop()
        self.started = loop.create_future()
        self.started.add_done_callback(_consume_exception)
        self.reader_task = loop.create_task(self._read_loop(front_sock, on_message, on_exit))

    async def _read_loop(self, sock: socket.socket,
                         on_message: Callable[[WorkerSlot, protocol.Message], None],
                         on_exit: Callable[[WorkerSlot], None]) -> None:
        reader, writer = await asyncio.open_unix_connection(sock=sock)
        self.writer = writer
        decoder = protocol.MessageReader()
        try:
            while data := await reader.read(protocol.READ_CHUNK_BYTES):
                for message in decoder.feed(data):
                    on_message(self, message)
        except (ConnectionError, protocol.ProtocolError) as exc:
            LOG.error("worker %d channel broken: %s", self.index, exc)
        finally:
            writer.close()
            on_exit(self)

    def send(self, message: protocol.Message) -> None:
        if self.writer is not None and not self.writer.is_closing():
            self.writer.write(message.encode())

    def became_ready(self, message: protocol.Ready) -> None:
        self.state = WorkerState.READY
        self.was_ready = True
        self.broken = False
        self.cpu_s_current = message.process_cpu_s
        LOG.info("worker %d ready (pid %d)", self.index, message.pid)
        if self.started is not None and not self.started.done():
            self.started.set_result(None)

    def failed_to_start(self, reason: str) -> None:
        LOG.error("worker %d cannot start: %s", self.index, reason)
        self.broken = True
        if self.started is not None and not self.started.done():
            self.started.set_exception(PoolStartError(reason))

    def mark_dead(self) -> WorkItem | None:
        """Bookkeeping once its channel closed; returns the work item it was running."""
        self.state = WorkerState.DEAD
        self.writer = None
        self.cpu_s_before += self.cpu_s_current
        self.cpu_s_current = 0.0
        if self.started is not None and not self.started.done():
            self.started.set_exception(PoolStartError(f"worker {self.index} exited at start"))
        work, self.work = self.work, None
        return work

    def next_backoff(self, base_s: float) -> float:
        """The base delay after a worker that served was killed; doubling (up to a cap)
        only while restarts die before they are ready: repeated kills of working workers
        must not grow into a long outage."""
        if self.was_ready or not self.backoff_s:
            self.backoff_s = base_s
        else:
            self.backoff_s = min(self.backoff_s * 2, MAX_RESTART_BACKOFF_S)
        return self.backoff_s

    async def reap(self, timeout_s: float) -> None:
        """Join without ever blocking the loop or waiting forever: join, SIGTERM, SIGKILL."""
        process = self.process
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

    def kill_if_stuck(self, now: float, limit_s: float) -> None:
        """A worker stuck on one item past its deadline is as dead as one that exited."""
        work = self.work
        overdue = work is not None and now - work.dispatched_at > limit_s
        if overdue and self.process is not None and self.process.is_alive():
            LOG.error("worker %d stuck past pool.unit_timeout_s: killing", self.index)
            self.process.kill()

    def unlink(self) -> None:
        self.slab.close()
        try:
            self.slab.unlink()
        except FileNotFoundError:
            pass

    def state_snapshot(self) -> dict[str, object]:
        return {
            "index": self.index,
            "pid": self.pid,
            "state": self.state.value,
            "busy": self.work is not None,
            "restarts": self.restarts,
            "units_done": self.units_done,
            "cpu_seconds": round(self.cpu_seconds, 3),
        }


def _consume_exception(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()

