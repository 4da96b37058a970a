"""What the pool raises into its callers' futures: each error carries a stable code."""

from __future__ import annotations


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
