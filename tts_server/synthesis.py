"""Runs a SynthesisRequest on the pool and yields its audio unit by unit, in order."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from inference import protocol
from inference.pool import (
    InferencePool,
    PoolBusy,
    PoolClosed,
    UnitRejected,
    UnitResult,
    WorkerCrashed,
)

from .errors import ServiceUnavailable, TTSError, Unprocessable
from .schema import SynthesisRequest


@dataclass
class SynthesisTrace:
    """Timings of one request, for Server-Timing and the access log."""

    started: float = field(default_factory=time.monotonic)
    first_audio_ms: float | None = None
    queue_ms: float = 0.0
    synthesis_ms: float = 0.0
    audio_bytes: int = 0

    def add(self, result: UnitResult) -> None:
        if self.first_audio_ms is None:
            self.first_audio_ms = (time.monotonic() - self.started) * 1000
            self.queue_ms = result.queue_ms
        self.synthesis_ms += result.synthesis_ms
        self.audio_bytes += len(result.pcm)


class Synthesizer:
    def __init__(self, pool: InferencePool, request_timeout_s: float, retry_after_s: int):
        self.pool = pool
        self.request_timeout_s = request_timeout_s
        self.retry_after_s = retry_after_s

    def _submit(self, request: SynthesisRequest) -> list[asyncio.Future[UnitResult]]:
        units = [
            protocol.SynthesizeUnit(
                unit_id=0,
                voice=request.voice.name,
                text=text,
                speed=request.speed,
                speaker_id=request.speaker_id,
            )
            for text in request.units
        ]
        try:
            return self.pool.submit(self.pool.new_request_key(), units)
        except PoolBusy as exc:
            raise ServiceUnavailable(str(exc), code=exc.code, retry_after_s=self.retry_after_s)
        except PoolClosed as exc:
            raise ServiceUnavailable(str(exc), code=exc.code, retry_after_s=self.retry_after_s)

    async def stream(
        self, request: SynthesisRequest, trace: SynthesisTrace
    ) -> AsyncIterator[UnitResult]:
        """Yield each unit's audio in order; leftover units are cancelled on any exit."""
        futures = self._submit(request)
        deadline = time.monotonic() + self.request_timeout_s
        try:
            for future in futures:
                result = await self._wait(future, deadline)
                trace.add(result)
                yield result
        finally:
            for future in futures:
                future.cancel()

    async def _wait(self, future: asyncio.Future[UnitResult], deadline: float) -> UnitResult:
        try:
            return await asyncio.wait_for(future, max(deadline - time.monotonic(), 0))
        except TimeoutError:
            raise ServiceUnavailable(
                "synthesis did not finish within server.request_timeout_s",
                code="deadline_exceeded",
                retry_after_s=self.retry_after_s,
            ) from None
        except (WorkerCrashed, PoolClosed) as exc:
            raise ServiceUnavailable(
                str(exc), code=exc.code, retry_after_s=self.retry_after_s
            ) from None
        except UnitRejected as exc:
            if exc.code in (protocol.FAIL_BAD_INPUT, protocol.FAIL_AUDIO_TOO_LONG):
                raise Unprocessable(str(exc), code=exc.code) from None
            raise TTSError("the engine failed to synthesize this text", code=exc.code) from None
