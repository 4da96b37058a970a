"""A finished job's audio file, built from its stored sentences one at a time.

WAV gets an exact header (the sentence sizes are known) and raw PCM; the other formats go
through the same streaming encoders as streamed /api/tts responses, on the encoder pool.
Memory stays at about one sentence plus one write buffer whatever the job's length.
"""

from __future__ import annotations

from concurrent.futures import Executor

from tts_server.encoding.encoders import encode_in_executor
from tts_server.encoding.formats import get_format
from tts_server.jobs.stores.base import Claim, JobStore, Lease

WRITE_BYTES = 1 << 20


class MissingAudio(Exception):
    """A sentence counted as done has no audio (evicted from Redis, say): synthesize again."""


class ResultWriter:
    """Appends to the claim's result in pieces of about WRITE_BYTES."""

    def __init__(self, store: JobStore, claim: Claim) -> None:
        self.store = store
        self.claim = claim
        self._buffer = bytearray()

    async def add(self, data: bytes) -> Lease:
        self._buffer += data
        return await self.flush() if len(self._buffer) >= WRITE_BYTES else Lease.OK

    async def flush(self) -> Lease:
        if not self._buffer:
            return Lease.OK
        data, self._buffer = bytes(self._buffer), bytearray()
        return await self.store.append_result(self.claim, data)


async def write_result(store: JobStore, claim: Claim, executor: Executor) -> Lease:
    """Encode every stored sentence into the job's audio; LOST if the lease went away."""
    job = claim.job
    count = len(claim.units)
    sizes = await store.unit_sizes(job.id, count)
    if any(size == 0 for size in sizes):
        raise MissingAudio(f"job {job.id}: {sizes.count(0)} sentences are missing")
    fmt = get_format(job.audio_format)
    encoder = None if fmt.inline else fmt.open(job.sample_rate)
    writer = ResultWriter(store, claim)
    header = fmt.inline_header(job.sample_rate, sum(sizes)) if fmt.inline else b""
    if await writer.add(header) is Lease.LOST:
        return Lease.LOST
    for index in range(count):
        pcm = await store.unit_pcm(job.id, index)
        data = pcm if encoder is None else await encode_in_executor(executor, encoder, pcm)
        if await writer.add(data) is Lease.LOST:
            return Lease.LOST
    if encoder is not None:
        if await writer.add(await encode_in_executor(executor, encoder, None)) is Lease.LOST:
            return Lease.LOST
    return await writer.flush()
