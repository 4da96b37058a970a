"""The job store in this process, for servers without Redis: same contract, no durability.

Jobs, their sentences and results live in dicts and disappear with the process. Each
operation runs without awaiting, so it is atomic on the event loop like a Lua script.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from tts_server.config import JobSettings
from tts_server.jobs.models import Job, JobSpec, Status
from tts_server.jobs.stores.base import (
    CancelAction,
    Cancellation,
    Claim,
    JobStore,
    Lease,
    QueueFull,
    Submitted,
)


@dataclass
class _Entry:
    job: Job
    units: list[str]
    pcm: dict[int, bytes] = field(default_factory=dict)
    words: dict[int, bytes] = field(default_factory=dict)
    lease: str = ""
    lease_until_ms: int = 0
    result: bytes = b""
    partial: bytearray = field(default_factory=bytearray)


class MemoryJobStore(JobStore):
    def __init__(self, settings: JobSettings, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.clock = clock
        self._entries: dict[str, _Entry] = {}
        # job id -> time (ms) it may run; the smallest runs first.
        self._queue: dict[str, int] = {}
        self._idempotent: dict[tuple[str, str], str] = {}
        self._webhooks: dict[str, int] = {}
        self._expiries: list[tuple[int, str]] = []

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    def _live(self, job_id: str) -> _Entry | None:
        self._expire()
        return self._entries.get(job_id)

    def _expire(self) -> None:
        now = self._now_ms()
        while self._expiries and self._expiries[0][0] <= now:
            _, job_id = heapq.heappop(self._expiries)
            entry = self._entries.pop(job_id, None)
            if entry is not None:
                self._idempotent.pop((entry.job.owner, entry.job.idempotency_key), None)
                self._webhooks.pop(job_id, None)

    def _holds(self, claim: Claim) -> _Entry | None:
        entry = self._entries.get(claim.job.id)
        if entry is None or entry.lease != claim.token or entry.job.status is not Status.RUNNING:
            return None
        return entry

    def _renew(self, entry: _Entry) -> Lease:
        entry.lease_until_ms = self._now_ms() + int(self.settings.lease_ttl_s * 1000)
        return Lease.CANCEL if entry.job.cancel_requested else Lease.OK

    def _terminate(self, entry: _Entry, status: Status, code: str = "", message: str = "") -> None:
        job, now = entry.job, self._now_ms()
        job.status, job.finished_ms = status, now
        job.expires_ms = now + self.settings.result_ttl_s * 1000
        if code:
            job.error_code, job.error_message = code, message
        entry.lease, entry.pcm, entry.partial = "", {}, bytearray()
        if status is not Status.DONE:
            entry.words = {}
        self._queue.pop(job.id, None)
        heapq.heappush(self._expiries, (job.expires_ms, job.id))
        if job.callback_url:
            self._webhooks[job.id] = now

    def _requeue(self, entry: _Entry, ready_ms: int) -> None:
        entry.job.status, entry.lease = Status.QUEUED, ""
        self._queue[entry.job.id] = ready_ms

    @staticmethod
    def _copy(entry: _Entry) -> Job:
        return replace(entry.job)

    # ---- clients --------------------------------------------------------------------------

    async def find_idempotent(self, owner: str, key_hash: str) -> Job | None:
        self._expire()
        job_id = self._idempotent.get((owner, key_hash))
        entry = self._entries.get(job_id) if job_id else None
        return self._copy(entry) if entry else None

    async def submit(self, job_id: str, spec: JobSpec) -> Submitted:
        if spec.idempotency_key:
            existing = await self.find_idempotent(spec.owner, spec.idempotency_key)
            if existing is not None:
                return Submitted(existing, created=False)
        if len(self._queue) >= self.settings.max_queued_total:
            raise QueueFull("total")
        owned = sum(self._entries[i].job.owner == spec.owner for i in self._queue)
        if owned >= self.settings.max_queued_per_owner:
            raise QueueFull("owner")
        entry = _Entry(Job.new(job_id, spec, self._now_ms()), list(spec.units))
        self._entries[job_id] = entry
        self._queue[job_id] = entry.job.created_ms
        if spec.idempotency_key:
            self._idempotent[(spec.owner, spec.idempotency_key)] = job_id
        return Submitted(self._copy(entry), created=True)

    async def get(self, job_id: str) -> Job | None:
        entry = self._live(job_id)
        return self._copy(entry) if entry else None

    async def list_jobs(self, owner: str, limit: int) -> list[Job]:
        self._expire()
        mine = [e.job for e in self._entries.values() if e.job.owner == owner]
        mine.sort(key=lambda job: job.created_ms, reverse=True)
        return [replace(job) for job in mine[:limit]]

    async def cancel(self, job_id: str) -> Cancellation | None:
        entry = self._live(job_id)
        if entry is None:
            return None
        action = CancelAction.FINISHED
        if entry.job.status is Status.QUEUED:
            self._terminate(entry, Status.CANCELLED)
            action = CancelAction.CANCELLED
        elif entry.job.status is Status.RUNNING:
            entry.job.cancel_requested = True
            action = CancelAction.REQUESTED
        return Cancellation(action, self._copy(entry))

    async def result_size(self, job_id: str) -> int:
        entry = self._live(job_id)
        return len(entry.result) if entry else 0

    async def result_range(self, job_id: str, start: int, end: int) -> bytes:
        entry = self._live(job_id)
        return entry.result[start:end + 1] if entry else b""

    # ---- runners --------------------------------------------------------------------------

    async def claim(self, token: str, instance: str) -> Claim | None:
        self._expire()
        now = self._now_ms()
        ready = [(at, job_id) for job_id, at in self._queue.items() if at <= now]
        if not ready:
            return None
        _, job_id = min(ready)
        del self._queue[job_id]
        entry = self._entries[job_id]
        job = entry.job
        job.status, job.attempts = Status.RUNNING, job.attempts + 1
        job.started_ms = job.started_ms or now
        entry.lease = token
        self._renew(entry)
        return Claim(self._copy(entry), list(entry.units), token)

    async def heartbeat(self, claim: Claim) -> Lease:
        entry = self._holds(claim)
        return self._renew(entry) if entry else Lease.LOST

    async def done_units(self, job_id: str) -> set[int]:
        entry = self._entries.get(job_id)
        return set(entry.pcm) if entry else set()

    async def store_unit(self, claim: Claim, index: int, pcm: bytes, words: bytes = b""
                         ) -> Lease:
        entry = self._holds(claim)
        if entry is None:
            return Lease.LOST
        entry.job.unit_writes += 1
        if index not in entry.pcm:
            entry.pcm[index] = pcm
            entry.words[index] = words
            entry.job.units_done += 1
            entry.job.audio_samples += len(pcm) // 2
        return self._renew(entry)

    async def unit_sizes(self, job_id: str, count: int) -> list[int]:
        entry = self._entries.get(job_id)
        pcm = entry.pcm if entry else {}
        return [len(pcm.get(index, b"")) for index in range(count)]

    async def unit_pcm(self, job_id: str, index: int) -> bytes:
        return self._entries[job_id].pcm[index]

    async def units(self, job_id: str) -> list[str]:
        entry = self._live(job_id)
        return list(entry.units) if entry else []

    async def unit_words(self, job_id: str) -> dict[int, bytes]:
        entry = self._live(job_id)
        return dict(entry.words) if entry else {}

    async def append_result(self, claim: Claim, data: bytes) -> Lease:
        entry = self._holds(claim)
        if entry is None:
            return Lease.LOST
        entry.partial += data
        return self._renew(entry)

    async def finish(self, claim: Claim, status: Status, error_code: str = "",
                     error_message: str = "") -> Lease:
        entry = self._holds(claim)
        if entry is None:
            return Lease.LOST
        if status is Status.DONE:
            entry.result = bytes(entry.partial)
            entry.job.result_bytes = len(entry.result)
        self._terminate(entry, status, error_code, error_message)
        return Lease.OK

    async def requeue(self, claim: Claim, delay_s: float, refund: bool, error_code: str,
                      error_message: str) -> Status | None:
        entry = self._holds(claim)
        if entry is None:
            return None
        entry.partial = bytearray()
        job = entry.job
        if job.cancel_requested:
            self._terminate(entry, Status.CANCELLED)
        elif refund:
            job.attempts -= 1
        elif job.attempts >= self.settings.max_attempts:
            self._terminate(entry, Status.FAILED, error_code, error_message)
        if job.status.finished:
            return job.status
        delay_ms = int(delay_s * 1000)
        self._requeue(entry, self._now_ms() + delay_ms if delay_ms else job.created_ms)
        return Status.QUEUED

    async def reclaim_expired(self) -> list[str]:
        now = self._now_ms()
        expired = [e for e in self._entries.values()
                   if e.job.status is Status.RUNNING and e.lease_until_ms <= now]
        for entry in expired:
            job = entry.job
            if job.cancel_requested:
                self._terminate(entry, Status.CANCELLED)
            elif job.attempts >= self.settings.max_attempts:
                self._terminate(entry, Status.FAILED, "abandoned",
                                f"the job was interrupted {job.attempts} times")
            else:
                self._requeue(entry, job.created_ms)
        return [entry.job.id for entry in expired]

    # ---- webhook outbox -------------------------------------------------------------------

    async def due_callbacks(self, lease_s: float, limit: int) -> list[Job]:
        self._expire()
        now = self._now_ms()
        due = sorted(job_id for job_id, at in self._webhooks.items()
                     if at <= now and job_id in self._entries)[:limit]
        for job_id in due:
            self._webhooks[job_id] = now + int(lease_s * 1000)
        return [self._copy(self._entries[job_id]) for job_id in due]

    async def record_callback(self, job_id: str, status: str, attempts: int,
                              retry_in_s: float | None) -> None:
        entry = self._entries.get(job_id)
        if entry is None:
            self._webhooks.pop(job_id, None)
            return
        entry.job.callback_status, entry.job.callback_attempts = status, attempts
        if retry_in_s is None:
            self._webhooks.pop(job_id, None)
        else:
            self._webhooks[job_id] = self._now_ms() + int(retry_in_s * 1000)
