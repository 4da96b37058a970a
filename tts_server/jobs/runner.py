"""The runner: takes queued jobs and synthesizes them in the background lane (priority 2).

Up to jobs.max_concurrent jobs run at once per instance. A running job hands the pool a
batch of sentences at a time (idle workers take them in parallel; interactive lanes 0
and 1 always go first) and stores each sentence's PCM as it arrives, so a resumed job
skips what is done. A heartbeat renews the job's lease; if the lease is lost, the job is
abandoned at once.

At shutdown the runner gives every job it holds back to the queue. "Holds" starts when the
store grants a claim, not when a job task starts: a claim that was in flight when the stop
began (Redis may grant it after the claim loop was cancelled) and a job task cancelled
before its first step (its own hand-back never runs) are both still in the registry of
held claims, which stop() hands back once the job tasks have ended. The requeue only
applies while the claim's lease token still holds the job, so a job that finished in the
meantime is not requeued.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import secrets
import socket
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

from tts_server.config import JobSettings
from tts_server.encoding.formats import get_format
from tts_server.errors import ServiceUnavailable, Unprocessable
from tts_server.jobs.captions import encode_unit_words
from tts_server.jobs.models import Status
from tts_server.jobs.result import MissingAudio, write_result
from tts_server.jobs.stores.base import Claim, JobStore, Lease, StoreUnavailable
from tts_server.resilience.state import RunState
from tts_server.speech.request import SynthesisRequest
from tts_server.speech.synthesizer import SynthesisTrace, Synthesizer
from tts_server.speech.voices import VoiceRegistry

LOG = logging.getLogger("tts.jobs")
JOB_PRIORITY = 2
# Faults of load, not of the job: the attempt is given back when it is requeued.
LOAD_CODES = frozenset({"deadline_exceeded", "overloaded", "would_miss_deadline"})
STOP_TIMEOUT_S = 10.0


@dataclass
class RunningJob:
    claim: Claim
    # Seen by the heartbeat; the job stops before its next batch.
    cancel_requested: bool = False


def _observed(task: asyncio.Task[Any]) -> None:
    """Retrieve a claim task's error: its caller may have been cancelled and never will."""
    if not task.cancelled():
        task.exception()


def instance_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class JobRunner:
    def __init__(
        self, store: JobStore, settings: JobSettings, synthesizer: Synthesizer,
        registry: VoiceRegistry, executor: Executor, run_state: RunState, batch_units: int,
        on_finished: Callable[[], None],
    ) -> None:
        self.store = store
        self.settings = settings
        self.synthesizer = synthesizer
        self.registry = registry
        self.executor = executor
        self.run_state = run_state
        self.batch_units = batch_units
        self.on_finished = on_finished
        self.instance = instance_name()
        self.wake = asyncio.Event()
        self._slots = asyncio.Semaphore(settings.max_concurrent)
        self._jobs: set[asyncio.Task[None]] = set()
        self._loops: list[asyncio.Task[None]] = []
        self._stopping = False
        # Every claim the store granted us whose job is not settled yet (finished, handed
        # back, or left to lapse), by lease token (a job handed back may be claimed again
        # under a new one): what stop() must hand back if no job task does.
        self._held: dict[str, Claim] = {}
        # The claim in flight, shielded: cancelling the claim loop does not lose its answer.
        self._claiming: asyncio.Task[Claim | None] | None = None

    # ---- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._loops = [loop.create_task(self._claim_loop()), loop.create_task(self._reclaim_loop())]

    async def stop(self) -> None:
        """Stop claiming; cancel running jobs, which hand themselves back to the queue;
        then hand back every claim still held (granted during the stop, or whose task
        never ran or did not end in time)."""
        self._stopping = True
        self.wake.set()
        pending = [*self._loops, *self._jobs]
        for task in pending:
            task.cancel()
        if self._claiming is not None:
            pending.append(self._claiming)  # not cancelled: its answer may be a granted job
        if pending:
            await asyncio.wait(pending, timeout=STOP_TIMEOUT_S)
        held, self._held = list(self._held.values()), {}
        for claim, returned in zip(held, await asyncio.gather(
                *(self._give_back(claim) for claim in held)), strict=True):
            LOG.warning("job %s: %s", claim.job.id, "handed back at shutdown" if returned
                        else "not handed back at shutdown; its lease will lapse")

    @property
    def running(self) -> int:
        return len(self._jobs)

    # ---- claiming -------------------------------------------------------------------------

    def _paused(self) -> bool:
        return (self._stopping or self.run_state.draining
                or self.run_state.pauses_jobs(self.settings.pause_at_degradation_level))

    async def _claim_loop(self) -> None:
        while True:
            await self._slots.acquire()
            try:
                claim = await self._next_claim()
            except BaseException:
                self._slots.release()
                raise
            if self._stopping:  # a cancellation lost in a race: stop() hands the claim back
                self._slots.release()
                return
            task = asyncio.get_running_loop().create_task(self._hold(claim))
            self._jobs.add(task)
            task.add_done_callback(self._job_ended)

    def _job_ended(self, task: asyncio.Task[None]) -> None:
        self._jobs.discard(task)
        self._slots.release()
        if not task.cancelled() and task.exception() is not None:
            LOG.error("job task failed", exc_info=task.exception())

    async def _next_claim(self) -> Claim:
        while not self._stopping:
            if not self._paused():
                claim = await self._try_claim()
                if claim is not None:
                    return claim
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), self.settings.poll_interval_s)
        raise asyncio.CancelledError

    async def _try_claim(self) -> Claim | None:
        self._claiming = asyncio.get_running_loop().create_task(self._claim())
        self._claiming.add_done_callback(_observed)
        try:
            return await asyncio.shield(self._claiming)
        except StoreUnavailable as exc:
            LOG.warning("jobs: cannot claim: %s", exc)
            await asyncio.sleep(self.settings.poll_interval_s * 4)
            return None

    async def _claim(self) -> Claim | None:
        """One claim; a granted one is held from the moment the store answers."""
        if self._stopping:
            return None
        claim = await self.store.claim(secrets.token_hex(16), self.instance)
        if claim is not None:
            self._held[claim.token] = claim
        return claim

    async def _reclaim_loop(self) -> None:
        """Jobs of instances that died (their lease lapsed) go back to the queue."""
        while not self._stopping:
            try:
                reclaimed = await self.store.reclaim_expired()
            except StoreUnavailable as exc:
                LOG.warning("jobs: cannot reclaim: %s", exc)
                reclaimed = []
            if reclaimed:
                LOG.warning("jobs: reclaimed %d jobs whose runner stopped", len(reclaimed))
                self.wake.set()
                self.on_finished()  # some may have failed or been cancelled: webhooks
            await asyncio.sleep(self.settings.lease_ttl_s / 3)

    # ---- one job --------------------------------------------------------------------------

    async def _hold(self, claim: Claim) -> None:
        running = RunningJob(claim)
        job_task = asyncio.current_task()
        assert job_task is not None
        beat = asyncio.get_running_loop().create_task(self._heartbeat(running, job_task))
        try:
            await self._execute(running)
        finally:
            beat.cancel()

    async def _heartbeat(self, running: RunningJob, job_task: asyncio.Task[Any]) -> None:
        while True:
            await asyncio.sleep(self.settings.lease_ttl_s / 3)
            try:
                lease = await self.store.heartbeat(running.claim)
            except StoreUnavailable as exc:
                LOG.warning("job %s: heartbeat failed: %s", running.claim.job.id, exc)
                continue
            if lease is Lease.LOST:
                LOG.warning("job %s: lease lost; another runner has it", running.claim.job.id)
                job_task.cancel()
                return
            running.cancel_requested = lease is Lease.CANCEL

    async def _execute(self, running: RunningJob) -> None:
        claim = running.claim
        LOG.info("job %s: attempt %d, %d of %d sentences already done", claim.job.id,
                 claim.job.attempts, claim.job.units_done, claim.job.units_total)
        try:
            await self._complete(running)
        except asyncio.CancelledError:
            if await self._give_back(claim):
                self._held.pop(claim.token, None)
            raise  # if the hand-back failed, stop() tries it again
        except Unprocessable as exc:
            await self._safely(self.store.finish(claim, Status.FAILED, exc.code, exc.message))
        except ServiceUnavailable as exc:
            await self._requeue(claim, exc.code, exc.message, refund=exc.code in LOAD_CODES)
        except MissingAudio as exc:
            await self._requeue(claim, "missing_audio", str(exc), refund=False)
        except StoreUnavailable as exc:
            LOG.warning("job %s: store unavailable, the lease will lapse: %s", claim.job.id, exc)
        except Exception as exc:
            LOG.exception("job %s: unexpected error", claim.job.id)
            await self._requeue(claim, "internal_error", f"{type(exc).__name__}: {exc}",
                                refund=False)
        self._held.pop(claim.token, None)
        self.on_finished()

    async def _complete(self, running: RunningJob) -> None:
        claim = running.claim
        lease = await self._synthesize(running)
        if lease is Lease.CANCEL:
            await self.store.finish(claim, Status.CANCELLED)
            LOG.info("job %s: cancelled", claim.job.id)
        elif lease is Lease.OK and await write_result(self.store, claim, self.executor) is Lease.OK:
            if await self.store.finish(claim, Status.DONE) is Lease.OK:
                LOG.info("job %s: done", claim.job.id)

    async def _requeue(self, claim: Claim, code: str, message: str, refund: bool) -> None:
        try:
            status = await self.store.requeue(claim, self.settings.retry_delay_s, refund, code,
                                              message)
        except StoreUnavailable as exc:
            LOG.warning("jobs: store unavailable: %s", exc)
            return
        outcome = status.value if status is not None else "lost (another runner has it)"
        LOG.warning("job %s: %s (%s); now %s", claim.job.id, message, code, outcome)

    async def _give_back(self, claim: Claim) -> bool:
        """Shutdown (or a lost lease): back to the queue in its place, the attempt refunded.

        Only while the claim's token still holds the job (the store checks): a job that
        finished, or that another runner holds, is left as it is. False: no answer."""
        try:
            await asyncio.wait_for(self.store.requeue(claim, 0, True, "", ""), 5.0)
        except Exception as exc:
            LOG.warning("job %s: cannot hand it back: %s", claim.job.id, exc)
            return False
        return True

    @staticmethod
    async def _safely(operation: Any) -> None:
        try:
            await operation
        except StoreUnavailable as exc:
            LOG.warning("jobs: store unavailable: %s", exc)

    # ---- synthesis ------------------------------------------------------------------------

    def _request(self, claim: Claim) -> SynthesisRequest:
        job = claim.job
        voice = self.registry.voices.get(job.voice)
        if voice is None:
            raise Unprocessable(f"voice {job.voice} is no longer available", code="unknown_voice")
        return SynthesisRequest(text="", units=tuple(claim.units), voice=voice, speed=job.speed,
                                speaker_id=job.speaker_id,
                                audio_format=get_format(job.audio_format),
                                stream=False, timestamps=True)  # for the job's captions

    async def _synthesize(self, running: RunningJob) -> Lease:
        claim = running.claim
        request = self._request(claim)
        done = await self.store.done_units(claim.job.id)
        todo = [index for index in range(len(claim.units)) if index not in done]
        for start in range(0, len(todo), self.batch_units):
            await self._wait_while_paused(running)
            if self._stopping:
                # stop() cancelled this task, but Python 3.11's asyncio.wait_for can drop
                # a cancellation that lands as its awaited unit completes: hand back now.
                raise asyncio.CancelledError
            if running.cancel_requested:
                return Lease.CANCEL
            lease = await self._batch(claim, request, todo[start:start + self.batch_units])
            if lease is not Lease.OK:
                return lease
        return Lease.OK

    async def _wait_while_paused(self, running: RunningJob) -> None:
        pause_at = self.settings.pause_at_degradation_level
        while self.run_state.pauses_jobs(pause_at) and not running.cancel_requested:
            await asyncio.sleep(self.settings.poll_interval_s)

    async def _batch(self, claim: Claim, request: SynthesisRequest, indices: list[int]) -> Lease:
        """Hand the pool these sentences at once; store each as it arrives, in order."""
        units = tuple(claim.units[index] for index in indices)
        batch = dataclasses.replace(request, units=units, text=" ".join(units))
        # Never synthesizer.route(): the whole job keeps the voice's rate; a unit the
        # primary engine fails is redone by the fallback and resampled inside stream().
        stream = self.synthesizer.stream(batch, SynthesisTrace(), JOB_PRIORITY)
        async with contextlib.aclosing(stream) as pcm_chunks:  # type: ignore[type-var]
            position = 0
            async for unit in pcm_chunks:
                words = encode_unit_words(len(unit.pcm) // 2, unit.words)
                lease = await self.store.store_unit(claim, indices[position], unit.pcm, words)
                position += 1
                if lease is not Lease.OK:
                    return lease
        return Lease.OK
