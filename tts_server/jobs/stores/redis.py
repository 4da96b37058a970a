"""The job store in Redis: any instance can accept, run or serve any job.

Keys under jobs.namespace (NS):
  NS:job:ID            hash   the job (models.Job fields) plus "units" (JSON) and "lease"
  NS:pcm:ID            hash   sentence index -> PCM of every finished sentence
  NS:words:ID          hash   sentence index -> its word timings (kept with a done job)
  NS:audio:ID          string the finished audio (written as NS:audio:ID:TOKEN, then renamed)
  NS:queue             zset   queued job -> time it may run (ms); the oldest runs first
  NS:leases            zset   running job -> lease expiry (ms)
  NS:webhooks          zset   finished job -> time its webhook is due (ms)
  NS:owner-queued:OWN  set    an owner's queued jobs (the per-owner bound)
  NS:owner-jobs:OWN    zset   an owner's jobs by creation time (the listing)
  NS:idem:OWN:KEY      string Idempotency-Key (SHA-256) -> job id

Every transition is one Lua script, so two instances never both win a job, and the clock
is Redis's own (TIME), so instance clocks need not agree. Lease-holding writes check the
lease's token: a runner that lost its job cannot write into it. Scripts build key names
from job ids, so this needs a single Redis (not Cluster).
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from tts_server.config import JobSettings
from tts_server.jobs.models import Job, JobSpec, Status, decode_units, encode_units
from tts_server.jobs.stores.base import (
    CancelAction,
    Cancellation,
    Claim,
    JobStore,
    Lease,
    QueueFull,
    StoreUnavailable,
    Submitted,
)

T = TypeVar("T")
JOB_FIELDS = [name for name in Job.__dataclass_fields__]
# A result being written by a runner that then dies is dropped after this long.
PARTIAL_RESULT_TTL_S = 3600

PRELUDE = """
local NS = ARGV[1]
local Q, L, W = NS .. ':queue', NS .. ':leases', NS .. ':webhooks'
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function jkey(id) return NS .. ':job:' .. id end
local function pkey(id) return NS .. ':pcm:' .. id end
local function akey(id) return NS .. ':audio:' .. id end
local function wkey(id) return NS .. ':words:' .. id end
local function oqkey(owner) return NS .. ':owner-queued:' .. owner end
local function field(id, name) return redis.call('HGET', jkey(id), name) end
local function holds(id, token)
  return field(id, 'lease') == token and field(id, 'status') == 'running'
end
local function renew(id, lease_ms) redis.call('ZADD', L, now_ms() + lease_ms, id) end
local function terminate(id, status, code, message, ttl, now)
  local J = jkey(id)
  redis.call('HSET', J, 'status', status, 'finished_ms', now, 'expires_ms', now + ttl * 1000,
             'lease', '')
  if code ~= '' then redis.call('HSET', J, 'error_code', code, 'error_message', message) end
  redis.call('ZREM', L, id)
  redis.call('ZREM', Q, id)
  local owner = field(id, 'owner')
  if owner then redis.call('SREM', oqkey(owner), id) end
  redis.call('DEL', pkey(id))
  if status == 'done' then redis.call('EXPIRE', wkey(id), ttl) else redis.call('DEL', wkey(id)) end
  redis.call('EXPIRE', J, ttl)
  redis.call('EXPIRE', akey(id), ttl)
  local idem = field(id, 'idempotency_key')
  if owner and idem and idem ~= '' then
    redis.call('EXPIRE', NS .. ':idem:' .. owner .. ':' .. idem, ttl)
  end
  local callback = field(id, 'callback_url')
  if callback and callback ~= '' then redis.call('ZADD', W, now, id) end
end
local function requeue(id, ready_at)
  redis.call('HSET', jkey(id), 'status', 'queued', 'lease', '')
  redis.call('ZREM', L, id)
  redis.call('ZADD', Q, ready_at, id)
  redis.call('SADD', oqkey(field(id, 'owner')), id)
end
"""

SUBMIT = PRELUDE + """
local id, idem, owner = ARGV[2], ARGV[3], ARGV[6]
if idem ~= '' then
  local existing = redis.call('GET', NS .. ':idem:' .. owner .. ':' .. idem)
  if existing and redis.call('EXISTS', jkey(existing)) == 1 then return {'existing', existing} end
end
if redis.call('ZCARD', Q) >= tonumber(ARGV[5]) then return {'full', 'total'} end
if redis.call('SCARD', oqkey(owner)) >= tonumber(ARGV[4]) then return {'full', 'owner'} end
local now = now_ms()
redis.call('HSET', jkey(id), unpack(ARGV, 8))
redis.call('HSET', jkey(id), 'created_ms', now, 'units', ARGV[7])
redis.call('ZADD', Q, now, id)
redis.call('SADD', oqkey(owner), id)
local listing = NS .. ':owner-jobs:' .. owner
redis.call('ZADD', listing, now, id)
-- Jobs expire roughly in creation order: dropping the oldest gone ones keeps the listing small.
for _, old in ipairs(redis.call('ZRANGE', listing, 0, 9)) do
  if redis.call('EXISTS', jkey(old)) == 0 then redis.call('ZREM', listing, old) end
end
if idem ~= '' then redis.call('SET', NS .. ':idem:' .. owner .. ':' .. idem, id) end
return {'created', id}
"""

CLAIM = PRELUDE + """
local now = now_ms()
for _ = 1, 20 do
  local ids = redis.call('ZRANGEBYSCORE', Q, '-inf', now, 'LIMIT', 0, 1)
  if #ids == 0 then return false end
  local id = ids[1]
  redis.call('ZREM', Q, id)
  local owner = field(id, 'owner')
  if owner then redis.call('SREM', oqkey(owner), id) end
  if field(id, 'status') == 'queued' then
    local J = jkey(id)
    redis.call('HSET', J, 'status', 'running', 'lease', ARGV[2], 'instance', ARGV[4])
    if (tonumber(field(id, 'started_ms')) or 0) == 0 then
      redis.call('HSET', J, 'started_ms', now)
    end
    redis.call('HINCRBY', J, 'attempts', 1)
    redis.call('ZADD', L, now + tonumber(ARGV[3]), id)
    return id
  end
end
return false
"""

HEARTBEAT = PRELUDE + """
local id = ARGV[2]
if not holds(id, ARGV[3]) then return 'lost' end
renew(id, tonumber(ARGV[4]))
if field(id, 'cancel_requested') == '1' then return 'cancel' end
return 'ok'
"""

STORE_UNIT = PRELUDE + """
local id = ARGV[2]
if not holds(id, ARGV[3]) then return 'lost' end
local J = jkey(id)
redis.call('HINCRBY', J, 'unit_writes', 1)
if redis.call('HSETNX', pkey(id), ARGV[5], ARGV[6]) == 1 then
  redis.call('HINCRBY', J, 'audio_samples', tonumber(ARGV[7]))
  redis.call('HSET', wkey(id), ARGV[5], ARGV[8])
end
redis.call('HSET', J, 'units_done', redis.call('HLEN', pkey(id)))
renew(id, tonumber(ARGV[4]))
if field(id, 'cancel_requested') == '1' then return 'cancel' end
return 'ok'
"""

APPEND_RESULT = PRELUDE + """
local id = ARGV[2]
if not holds(id, ARGV[3]) then return 'lost' end
local key = akey(id) .. ':' .. ARGV[3]
redis.call('APPEND', key, ARGV[4])
redis.call('EXPIRE', key, tonumber(ARGV[5]))
renew(id, tonumber(ARGV[6]))
return 'ok'
"""

FINISH = PRELUDE + """
local id, token, status = ARGV[2], ARGV[3], ARGV[4]
if not holds(id, token) then return 'lost' end
local partial = akey(id) .. ':' .. token
if status == 'done' then
  if redis.call('EXISTS', partial) == 1 then
    redis.call('RENAME', partial, akey(id))
  else
    redis.call('SET', akey(id), '')
  end
  redis.call('HSET', jkey(id), 'result_bytes', redis.call('STRLEN', akey(id)))
else
  redis.call('DEL', partial)
end
terminate(id, status, ARGV[5], ARGV[6], tonumber(ARGV[7]), now_ms())
return 'ok'
"""

REQUEUE = PRELUDE + """
local id = ARGV[2]
if not holds(id, ARGV[3]) then return 'lost' end
local now, ttl = now_ms(), tonumber(ARGV[9])
redis.call('DEL', akey(id) .. ':' .. ARGV[3])
if field(id, 'cancel_requested') == '1' then
  terminate(id, 'cancelled', '', '', ttl, now)
  return 'cancelled'
end
if ARGV[5] == '1' then
  redis.call('HINCRBY', jkey(id), 'attempts', -1)
elseif tonumber(field(id, 'attempts')) >= tonumber(ARGV[6]) then
  terminate(id, 'failed', ARGV[7], ARGV[8], ttl, now)
  return 'failed'
end
local delay = tonumber(ARGV[4])
if delay > 0 then requeue(id, now + delay) else requeue(id, tonumber(field(id, 'created_ms'))) end
return 'queued'
"""

CANCEL = PRELUDE + """
local id = ARGV[2]
local status = field(id, 'status')
if not status then return 'missing' end
if status == 'queued' then
  terminate(id, 'cancelled', '', '', tonumber(ARGV[3]), now_ms())
  return 'cancelled'
elseif status == 'running' then
  redis.call('HSET', jkey(id), 'cancel_requested', '1')
  return 'requested'
end
return 'finished'
"""

RECLAIM = PRELUDE + """
local now, max_attempts, ttl = now_ms(), tonumber(ARGV[2]), tonumber(ARGV[3])
local ids = redis.call('ZRANGEBYSCORE', L, '-inf', now, 'LIMIT', 0, 100)
for _, id in ipairs(ids) do
  redis.call('ZREM', L, id)
  if field(id, 'status') == 'running' then
    if field(id, 'cancel_requested') == '1' then
      terminate(id, 'cancelled', '', '', ttl, now)
    elseif tonumber(field(id, 'attempts')) >= max_attempts then
      terminate(id, 'failed', 'abandoned',
                'the job was interrupted ' .. max_attempts .. ' times', ttl, now)
    else
      requeue(id, tonumber(field(id, 'created_ms')))
    end
  end
end
return ids
"""

DUE_CALLBACKS = PRELUDE + """
local now = now_ms()
local ids = redis.call('ZRANGEBYSCORE', W, '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))
local due = {}
for _, id in ipairs(ids) do
  if redis.call('EXISTS', jkey(id)) == 1 then
    redis.call('ZADD', W, now + tonumber(ARGV[2]), id)
    table.insert(due, id)
  else
    redis.call('ZREM', W, id)  -- expired before its webhook could be sent
  end
end
return due
"""

RECORD_CALLBACK = PRELUDE + """
local id = ARGV[2]
if redis.call('EXISTS', jkey(id)) == 0 then
  redis.call('ZREM', W, id)
  return 0
end
redis.call('HSET', jkey(id), 'callback_status', ARGV[3], 'callback_attempts', ARGV[4])
local retry = tonumber(ARGV[5])
if retry >= 0 then redis.call('ZADD', W, now_ms() + retry, id) else redis.call('ZREM', W, id) end
return 1
"""

SCRIPTS = {
    "submit": SUBMIT, "claim": CLAIM, "heartbeat": HEARTBEAT, "store_unit": STORE_UNIT,
    "append_result": APPEND_RESULT, "finish": FINISH, "requeue": REQUEUE, "cancel": CANCEL,
    "reclaim": RECLAIM, "due_callbacks": DUE_CALLBACKS, "record_callback": RECORD_CALLBACK,
}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisJobStore(JobStore):
    def __init__(self, client: aioredis.Redis, settings: JobSettings) -> None:
        self.client = client
        self.settings = settings
        self.ns = settings.namespace
        self._scripts = {name: client.register_script(src) for name, src in SCRIPTS.items()}

    @classmethod
    def from_url(cls, url: str, settings: JobSettings, tls_ca_file: str = "") -> RedisJobStore:
        options: dict[str, Any] = {"socket_timeout": 10.0, "socket_connect_timeout": 5.0}
        if tls_ca_file:
            options["ssl_ca_certs"] = tls_ca_file
        return cls(aioredis.Redis.from_url(url, **options), settings)

    async def close(self) -> None:
        await self.client.aclose()

    # ---- plumbing -------------------------------------------------------------------------

    async def _call(self, awaitable: Awaitable[T]) -> T:
        try:
            return await awaitable
        except (RedisError, OSError, TimeoutError) as exc:
            raise StoreUnavailable(f"redis: {exc}") from exc

    async def _run(self, script: str, *args: Any) -> Any:
        return await self._call(self._scripts[script](keys=[], args=[self.ns, *args]))

    def _key(self, kind: str, job_id: str) -> str:
        return f"{self.ns}:{kind}:{job_id}"

    @property
    def _lease_ms(self) -> int:
        return int(self.settings.lease_ttl_s * 1000)

    @staticmethod
    def _job(values: list[Any]) -> Job | None:
        data = {name: _text(v) for name, v in zip(JOB_FIELDS, values, strict=True)
                if v is not None}
        return Job.from_fields(data) if data.get("status") else None

    # ---- clients --------------------------------------------------------------------------

    async def find_idempotent(self, owner: str, key_hash: str) -> Job | None:
        job_id = await self._call(self.client.get(f"{self.ns}:idem:{owner}:{key_hash}"))
        return await self.get(_text(job_id)) if job_id else None

    async def submit(self, job_id: str, spec: JobSpec) -> Submitted:
        job = Job.new(job_id, spec, 0)
        flat = [item for pair in job.to_fields().items() for item in pair]
        outcome, value = await self._run(
            "submit", job_id, spec.idempotency_key, self.settings.max_queued_per_owner,
            self.settings.max_queued_total, spec.owner, encode_units(spec.units), *flat)
        outcome, value = _text(outcome), _text(value)
        if outcome == "full":
            raise QueueFull(value)
        stored = await self.get(value)
        if stored is None:
            raise StoreUnavailable(f"job {value} vanished right after its submission")
        return Submitted(stored, created=outcome == "created")

    async def get(self, job_id: str) -> Job | None:
        return self._job(await self._call(self.client.hmget(self._key("job", job_id),
                                                            JOB_FIELDS)))

    async def list_jobs(self, owner: str, limit: int) -> list[Job]:
        index = f"{self.ns}:owner-jobs:{owner}"
        ids = [_text(i) for i in await self._call(self.client.zrevrange(index, 0, limit - 1))]
        async with self.client.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hmget(self._key("job", job_id), JOB_FIELDS)
            rows = await self._call(pipe.execute())
        jobs: list[Job] = []
        gone: list[str] = []
        for job_id, row in zip(ids, rows, strict=True):
            job = self._job(row)
            if job is None:
                gone.append(job_id)  # expired: drop it from the listing
            else:
                jobs.append(job)
        if gone:
            await self._call(self.client.zrem(index, *gone))
        return jobs

    async def cancel(self, job_id: str) -> Cancellation | None:
        action = _text(await self._run("cancel", job_id, self.settings.result_ttl_s))
        job = None if action == "missing" else await self.get(job_id)
        return Cancellation(CancelAction(action), job) if job is not None else None

    async def result_size(self, job_id: str) -> int:
        return int(await self._call(self.client.strlen(self._key("audio", job_id))))

    async def result_range(self, job_id: str, start: int, end: int) -> bytes:
        return bytes(await self._call(self.client.getrange(self._key("audio", job_id),
                                                           start, end)))

    # ---- runners --------------------------------------------------------------------------

    async def claim(self, token: str, instance: str) -> Claim | None:
        job_id = await self._run("claim", token, self._lease_ms, instance)
        if job_id is None:
            return None
        job_id = _text(job_id)
        key = self._key("job", job_id)
        values = await self._call(self.client.hmget(key, [*JOB_FIELDS, "units"]))
        job = self._job(values[:-1])
        if job is None or values[-1] is None:
            return None
        return Claim(job, decode_units(values[-1]), token)

    async def heartbeat(self, claim: Claim) -> Lease:
        return Lease(_text(await self._run("heartbeat", claim.job.id, claim.token,
                                           self._lease_ms)))

    async def done_units(self, job_id: str) -> set[int]:
        return {int(k) for k in await self._call(self.client.hkeys(self._key("pcm", job_id)))}

    async def store_unit(self, claim: Claim, index: int, pcm: bytes, words: bytes = b""
                         ) -> Lease:
        answer = await self._run("store_unit", claim.job.id, claim.token, self._lease_ms,
                                 index, pcm, len(pcm) // 2, words)
        return Lease(_text(answer))

    async def units(self, job_id: str) -> list[str]:
        raw = await self._call(self.client.hget(self._key("job", job_id), "units"))
        return decode_units(raw) if raw is not None else []

    async def unit_words(self, job_id: str) -> dict[int, bytes]:
        found = await self._call(self.client.hgetall(self._key("words", job_id)))
        return {int(index): bytes(value) for index, value in found.items()}

    async def unit_sizes(self, job_id: str, count: int) -> list[int]:
        key = self._key("pcm", job_id)
        async with self.client.pipeline(transaction=False) as pipe:
            for index in range(count):
                pipe.hstrlen(key, str(index))
            return [int(n) for n in await self._call(pipe.execute())]

    async def unit_pcm(self, job_id: str, index: int) -> bytes:
        data = await self._call(self.client.hget(self._key("pcm", job_id), str(index)))
        if data is None:
            raise StoreUnavailable(f"job {job_id}: sentence {index} is missing")
        return bytes(data)

    async def append_result(self, claim: Claim, data: bytes) -> Lease:
        answer = await self._run("append_result", claim.job.id, claim.token, data,
                                 PARTIAL_RESULT_TTL_S, self._lease_ms)
        return Lease(_text(answer))

    async def finish(self, claim: Claim, status: Status, error_code: str = "",
                     error_message: str = "") -> Lease:
        answer = await self._run("finish", claim.job.id, claim.token, status.value, error_code,
                                 error_message, self.settings.result_ttl_s)
        return Lease(_text(answer))

    async def requeue(self, claim: Claim, delay_s: float, refund: bool, error_code: str,
                      error_message: str) -> Status | None:
        answer = _text(await self._run(
            "requeue", claim.job.id, claim.token, int(delay_s * 1000), "1" if refund else "0",
            self.settings.max_attempts, error_code, error_message, self.settings.result_ttl_s))
        return None if answer == "lost" else Status(answer)

    async def reclaim_expired(self) -> list[str]:
        ids = await self._run("reclaim", self.settings.max_attempts, self.settings.result_ttl_s)
        return [_text(i) for i in ids]

    # ---- webhook outbox -------------------------------------------------------------------

    async def due_callbacks(self, lease_s: float, limit: int) -> list[Job]:
        ids = await self._run("due_callbacks", int(lease_s * 1000), limit)
        jobs = [await self.get(_text(i)) for i in ids]
        return [job for job in jobs if job is not None]

    async def record_callback(self, job_id: str, status: str, attempts: int,
                              retry_in_s: float | None) -> None:
        retry_ms = -1 if retry_in_s is None else int(retry_in_s * 1000)
        await self._run("record_callback", job_id, status, attempts, retry_ms)
