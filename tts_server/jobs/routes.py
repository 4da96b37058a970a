"""HTTP routes of the job API under /api/tts/jobs (auth and request rate: the gateway's).

  POST   /api/tts/jobs             submit (202); Idempotency-Key replays the same job
  GET    /api/tts/jobs             the caller's jobs, newest first
  GET    /api/tts/jobs/{id}        status and progress
  GET    /api/tts/jobs/{id}/audio  the audio once done (409 before); Range requests
  GET    /api/tts/jobs/{id}/captions?format=vtt|srt  its captions once done (409 before)
  DELETE /api/tts/jobs/{id}        cancel

A job is visible only to the identity that created it (token name, or the anonymous
client's address); anyone else gets 404, as if it did not exist.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from tts_server import keys
from tts_server.config import JobSettings
from tts_server.encoding.formats import get_format
from tts_server.errors import (
    BadRequest,
    NotFound,
    ServiceUnavailable,
    TooManyRequests,
    TTSError,
    Unprocessable,
)
from tts_server.http.bodies import decode_json, read_body
from tts_server.http.connections import ROUTE_OPTIONS
from tts_server.jobs.captions import job_captions as build_captions
from tts_server.jobs.models import Job, JobSpec, Status
from tts_server.jobs.ranges import ByteRange, RangeNotSatisfiable, parse_range
from tts_server.jobs.stores.base import (
    CancelAction,
    JobStore,
    QueueFull,
    StoreUnavailable,
    Submitted,
)
from tts_server.jobs.submission import idempotency_key_hash, parse_submission
from tts_server.speech.timings import CAPTION_FORMATS, CAPTION_TYPES

BASE_PATH = "/api/tts/jobs"
READ_BYTES = 1 << 20
MAX_LIST = 100
STATUSES = tuple(status.value for status in Status)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Conflict(TTSError):
    status = 409
    code = "conflict"


class Gone(TTSError):
    status = 410
    code = "gone"


@dataclass
class JobsRuntime:
    """Set up before the app starts; the store and wake-ups are filled in at startup."""

    settings: JobSettings
    store: JobStore | None = None
    wake_runner: Callable[[], None] = lambda: None


JOBS = web.AppKey("jobs", JobsRuntime)


def _runtime(request: web.Request) -> tuple[JobsRuntime, JobStore]:
    runtime = request.app[JOBS]
    if runtime.store is None:
        raise ServiceUnavailable("the job store is not running", code="jobs_unavailable",
                                 retry_after_s=_retry_after(request))
    return runtime, runtime.store


def _retry_after(request: web.Request) -> int:
    return request.app[keys.SETTINGS].server.retry_after_s


def _owner(request: web.Request) -> str:
    """The caller, once it may use jobs at all (403 for tiers without the feature)."""
    identity = request[keys.IDENTITY]
    request.app[keys.GATEWAY].require_feature(identity, "jobs")
    return str(identity.key)


def store_errors(handler: Handler) -> Handler:
    """An unreachable store answers 503 with Retry-After, like any other busy backend."""

    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except StoreUnavailable:
            raise ServiceUnavailable("the job store is unavailable", code="jobs_unavailable",
                                     retry_after_s=_retry_after(request)) from None

    return wrapped


async def _owned(store: JobStore, job_id: str, owner: str) -> Job:
    job = await store.get(job_id)
    if job is None or job.owner != owner:
        raise NotFound(f"no job {job_id}", code="job_not_found")
    return job


def _accepted(job: Job, replayed: bool) -> web.Response:
    headers = {"Location": f"{BASE_PATH}/{job.id}"}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return web.json_response(job.public(BASE_PATH), status=202, headers=headers)


def _replay(job: Job | None, spec: JobSpec) -> Job | None:
    if job is not None and job.fingerprint != spec.fingerprint:
        raise Unprocessable("this Idempotency-Key was used for a different request",
                            code="idempotency_key_reused")
    return job


async def _queue(request: web.Request, store: JobStore, spec: JobSpec) -> Submitted:
    try:
        return await store.submit(uuid.uuid4().hex, spec)
    except QueueFull as full:
        retry = _retry_after(request)
        if full.scope == "owner":
            raise TooManyRequests("too many queued jobs for this caller",
                                  code="too_many_queued_jobs", retry_after_s=retry) from None
        raise ServiceUnavailable("the job queue is full", code="job_queue_full",
                                 retry_after_s=retry) from None


@store_errors
async def submit_job(request: web.Request) -> web.Response:
    runtime, store = _runtime(request)
    owner = _owner(request)
    key_hash = idempotency_key_hash(request.headers.get("Idempotency-Key"))
    body = decode_json(await read_body(request, runtime.settings.max_body_bytes))
    app = request.app
    spec = parse_submission(body, owner, key_hash, app[keys.REGISTRY], app[keys.SETTINGS],
                            runtime.settings)
    if key_hash:
        earlier = _replay(await store.find_idempotent(owner, key_hash), spec)
        if earlier is not None:
            return _accepted(earlier, replayed=True)  # not charged twice
    # The whole text counts against the tier's characters per minute, once, at submission.
    await app[keys.GATEWAY].charge_chars(request[keys.IDENTITY], spec.chars)
    submitted = await _queue(request, store, spec)
    _replay(submitted.job, spec)
    runtime.wake_runner()
    return _accepted(submitted.job, replayed=not submitted.created)


@store_errors
async def job_status(request: web.Request) -> web.Response:
    _, store = _runtime(request)
    job = await _owned(store, request.match_info["job_id"], _owner(request))
    return web.json_response(job.public(BASE_PATH))


@store_errors
async def list_jobs(request: web.Request) -> web.Response:
    _, store = _runtime(request)
    owner = _owner(request)
    raw = request.query.get("limit", "50")
    # isdigit() alone accepts "²" and other digits int() refuses.
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_LIST:
        raise BadRequest(f"limit must be 1 to {MAX_LIST}", code="invalid_limit", param="limit")
    wanted = request.query.get("status")
    if wanted is not None and wanted not in STATUSES:
        raise BadRequest(f"status must be one of {', '.join(STATUSES)}", code="invalid_status",
                         param="status")
    jobs = await store.list_jobs(owner, int(raw))
    if wanted is not None:
        jobs = [job for job in jobs if job.status.value == wanted]
    return web.json_response({"jobs": [job.public(BASE_PATH) for job in jobs]})


@store_errors
async def cancel_job(request: web.Request) -> web.Response:
    runtime, store = _runtime(request)
    job = await _owned(store, request.match_info["job_id"], _owner(request))
    if job.status.finished:
        raise Conflict(f"job {job.id} is already {job.status.value}", code="job_finished")
    outcome = await store.cancel(job.id)
    if outcome is None:
        raise NotFound(f"no job {job.id}", code="job_not_found")
    if outcome.action is CancelAction.FINISHED:  # it finished since the read above
        raise Conflict(f"job {job.id} is already {outcome.job.status.value}",
                       code="job_finished")
    # 200: cancelled now; 202: a running job stops after its current sentence (the body,
    # read just after, may already show it stopped).
    status = 200 if outcome.action is CancelAction.CANCELLED else 202
    return web.json_response(outcome.job.public(BASE_PATH), status=status)


@store_errors
async def job_audio(request: web.Request) -> web.StreamResponse:
    _, store = _runtime(request)
    job = await _owned(store, request.match_info["job_id"], _owner(request))
    if job.status.value != "done":
        raise Conflict(f"job {job.id} is {job.status.value}; its audio exists once it is done",
                       code="job_not_done")
    size = await store.result_size(job.id)
    if size == 0:
        # Evicted by a Redis short of memory (the job record outlived its audio).
        raise Gone(f"the audio of job {job.id} is no longer stored", code="audio_missing")
    etag = f'"{job.id}-{size}"'
    headers = _audio_headers(job, etag)
    if_range = request.headers.get("If-Range")
    try:
        wanted = parse_range(request.headers.get("Range"), size)
    except RangeNotSatisfiable as exc:
        body = {"error": {"code": "range_not_satisfiable", "message": str(exc)}}
        return web.json_response(body, status=416, headers={
            "Content-Range": f"bytes */{size}", "Accept-Ranges": "bytes", "ETag": etag})
    if wanted is not None and if_range is not None and if_range != etag:
        wanted = None  # the client's copy is another version: send all of it
    span = wanted or ByteRange(0, size - 1)
    if wanted is not None:
        headers["Content-Range"] = wanted.content_range(size)
    return await _send(request, store, job.id, span, 206 if wanted else 200, headers)


@store_errors
async def job_captions(request: web.Request) -> web.Response:
    """The job's captions (SRT or WebVTT) from its sentences' word timings."""
    _, store = _runtime(request)
    caption_format = request.query.get("format", "vtt")
    if caption_format not in CAPTION_FORMATS:
        raise BadRequest(f"format must be one of {', '.join(CAPTION_FORMATS)}",
                         code="invalid_captions", param="format")
    job = await _owned(store, request.match_info["job_id"], _owner(request))
    if job.status.value != "done":
        raise Conflict(f"job {job.id} is {job.status.value}; its captions exist once it is "
                       "done", code="job_not_done")
    units = await store.units(job.id)
    text = build_captions(units, await store.unit_words(job.id), job.sample_rate,
                          caption_format, request.app[keys.SETTINGS].text)
    headers = {
        "Content-Type": f"{CAPTION_TYPES[caption_format]}; charset=utf-8",
        "Content-Disposition": f'attachment; filename="{job.id}.{caption_format}"',
    }
    return web.Response(body=text.encode(), headers=headers)


def _audio_headers(job: Job, etag: str) -> dict[str, str]:
    fmt = get_format(job.audio_format)
    return {
        "Content-Type": fmt.content_type,
        "Accept-Ranges": "bytes",
        "ETag": etag,
        "Content-Disposition": f'attachment; filename="{job.id}.{fmt.extension}"',
        "X-Sample-Rate": str(job.sample_rate),
        "X-Audio-Duration": f"{job.audio_seconds:.3f}",
    }


async def _send(request: web.Request, store: JobStore, job_id: str, span: ByteRange,
                status: int, headers: dict[str, str]) -> web.StreamResponse:
    """Stream the span from the store a piece at a time: big files never sit in memory."""
    response = web.StreamResponse(status=status, headers=headers)
    response.content_length = max(span.length, 0)
    await response.prepare(request)
    if request.method != "HEAD":
        for start in range(span.start, span.end + 1, READ_BYTES):
            end = min(start + READ_BYTES - 1, span.end)
            await response.write(await store.result_range(job_id, start, end))
    await response.write_eof()
    return response


def add_routes(app: web.Application) -> None:
    app.router.add_post(BASE_PATH, submit_job, **ROUTE_OPTIONS)
    app.router.add_get(BASE_PATH, list_jobs, **ROUTE_OPTIONS)
    app.router.add_get(BASE_PATH + "/{job_id}", job_status, **ROUTE_OPTIONS)
    app.router.add_delete(BASE_PATH + "/{job_id}", cancel_job, **ROUTE_OPTIONS)
    app.router.add_get(BASE_PATH + "/{job_id}/audio", job_audio, **ROUTE_OPTIONS)
    app.router.add_get(BASE_PATH + "/{job_id}/captions", job_captions, **ROUTE_OPTIONS)
