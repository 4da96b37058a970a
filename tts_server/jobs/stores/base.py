"""The job store interface: one contract, kept by Redis (shared, durable) and memory.

State moves only through these operations, each atomic in its store:

  submit                -> queued
  claim                 queued -> running (attempts + 1, a lease with a random token)
  heartbeat, store_unit  running: renew the lease; report a cancel request or a lost lease
  finish                running -> done | failed | cancelled (only with the lease's token)
  requeue               running -> queued again (or failed once attempts are used up)
  cancel                queued -> cancelled at once; running -> cancel_requested
  reclaim_expired       running with a lapsed lease -> queued (or failed / cancelled)

A finished job, its audio and its idempotency key expire after jobs.result_ttl_s. A
finished job with a callback_url also enters the webhook outbox (due_callbacks).
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from dataclasses import dataclass

from tts_server.jobs.models import Job, JobSpec, Status


class Lease(enum.Enum):
    OK = "ok"
    # The job is still ours, and its owner asked to cancel it.
    CANCEL = "cancel"
    # Another instance reclaimed the job, or it is gone: stop without writing anything.
    LOST = "lost"


class CancelAction(enum.Enum):
    """What a cancel did, decided inside the store's one atomic step: the job read after it
    may already show the runner's answer (a running job's runner can stop it in between)."""

    CANCELLED = "cancelled"  # it was queued: cancelled now
    REQUESTED = "requested"  # it was running: it stops after its current sentence
    FINISHED = "finished"  # it was done, failed or cancelled already: nothing changed


@dataclass(frozen=True)
class Cancellation:
    action: CancelAction
    job: Job  # as it is after the cancel


class StoreUnavailable(Exception):
    """The store (Redis) did not answer."""


class QueueFull(Exception):
    def __init__(self, scope: str) -> None:
        super().__init__(scope)
        # "owner": this owner's queued jobs; "total": every owner's.
        self.scope = scope


@dataclass(frozen=True)
class Claim:
    """A running job held by this instance: writes carry its token."""

    job: Job
    units: list[str]
    token: str


@dataclass(frozen=True)
class Submitted:
    job: Job
    # False: an earlier submission with the same Idempotency-Key.
    created: bool


class JobStore(ABC):
    # ---- clients --------------------------------------------------------------------------

    @abstractmethod
    async def find_idempotent(self, owner: str, key_hash: str) -> Job | None: ...

    @abstractmethod
    async def submit(self, job_id: str, spec: JobSpec) -> Submitted:
        """Queue a job, or return the one already under its idempotency key; QueueFull."""

    @abstractmethod
    async def get(self, job_id: str) -> Job | None: ...

    @abstractmethod
    async def list_jobs(self, owner: str, limit: int) -> list[Job]:
        """The owner's jobs, newest first."""

    @abstractmethod
    async def cancel(self, job_id: str) -> Cancellation | None: ...

    @abstractmethod
    async def result_size(self, job_id: str) -> int: ...

    @abstractmethod
    async def result_range(self, job_id: str, start: int, end: int) -> bytes:
        """Bytes start..end of the finished audio, both inclusive."""

    # ---- runners --------------------------------------------------------------------------

    @abstractmethod
    async def claim(self, token: str, instance: str) -> Claim | None: ...

    @abstractmethod
    async def heartbeat(self, claim: Claim) -> Lease: ...

    @abstractmethod
    async def done_units(self, job_id: str) -> set[int]: ...

    @abstractmethod
    async def store_unit(self, claim: Claim, index: int, pcm: bytes, words: bytes = b""
                         ) -> Lease:
        """Keep one sentence's PCM and its word timings (`words`, opaque bytes: see
        jobs/captions.py); a second store of the same sentence is ignored. The timings
        outlive the PCM: they are kept with the finished job for its captions."""

    @abstractmethod
    async def units(self, job_id: str) -> list[str]:
        """The job's sentences as submitted ([] for an unknown job)."""

    @abstractmethod
    async def unit_words(self, job_id: str) -> dict[int, bytes]:
        """Every stored sentence's word timings, by sentence index."""

    @abstractmethod
    async def unit_sizes(self, job_id: str, count: int) -> list[int]: ...

    @abstractmethod
    async def unit_pcm(self, job_id: str, index: int) -> bytes: ...

    @abstractmethod
    async def append_result(self, claim: Claim, data: bytes) -> Lease: ...

    @abstractmethod
    async def finish(self, claim: Claim, status: Status, error_code: str = "",
                     error_message: str = "") -> Lease:
        """done (the appended result becomes the job's audio), failed or cancelled."""

    @abstractmethod
    async def requeue(self, claim: Claim, delay_s: float, refund: bool, error_code: str,
                      error_message: str) -> Status | None:
        """Back to the queue after delay_s (0: in its original place); refund gives the
        attempt back. Failed instead when attempts are used up; None if the lease is lost."""

    @abstractmethod
    async def reclaim_expired(self) -> list[str]:
        """Jobs whose runner stopped renewing its lease: requeued, failed or cancelled."""

    # ---- webhook outbox -------------------------------------------------------------------

    @abstractmethod
    async def due_callbacks(self, lease_s: float, limit: int) -> list[Job]:
        """Finished jobs whose webhook is due; each is hidden from others for lease_s."""

    @abstractmethod
    async def record_callback(self, job_id: str, status: str, attempts: int,
                              retry_in_s: float | None) -> None:
        """The outcome of a delivery attempt; retry_in_s None takes the job off the outbox."""

    async def close(self) -> None:
        return None
