"""Deadline admission against real worker pools: a burst in one event-loop turn, the
reservations that make it see its own work, and that they never outlive their request.

The pools are the server's own (app.build_pools: real Piper worker processes over shared
memory); the SpeechService and Synthesizer are the real ones, without cache.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from tts_server.app import build_pools, start_pools
from tts_server.config import load_settings
from tts_server.encoding.formats import get_format
from tts_server.errors import ServiceUnavailable
from tts_server.speech.request import build_request
from tts_server.speech.service import SpeechService
from tts_server.speech.synthesizer import LATENESS_BOUNDS, Admission, Lateness, Synthesizer
from tts_server.speech.voices import VoiceRegistry

SETTINGS = load_settings().replace(
    pool={"workers": 2, "solo_threads": 1, "espeak_workers": 0},
    voices={"precision": "fp32", "accept_noncommercial": False},
    synthesis={"noise_scale": 0.0, "noise_w_scale": 0.0},
)
PCM = get_format("pcm_native")


def paragraph(index: int) -> str:
    return " ".join(f"Request {index} says sentence {n} of a paragraph." for n in range(4))


@pytest.fixture(scope="module")
def registry() -> VoiceRegistry:
    return VoiceRegistry.from_settings(SETTINGS.voices)


@pytest.fixture
async def service(registry) -> AsyncIterator[SpeechService]:
    pools = build_pools(SETTINGS, registry)
    await start_pools(pools, registry)
    try:
        synthesizer = Synthesizer(pools, registry, {}, request_timeout_s=600, retry_after_s=1)
        yield SpeechService(synthesizer, None, {})
    finally:
        await asyncio.gather(*(pool.stop() for pool in pools.values()))


def request(registry: VoiceRegistry, text: str, stream: bool = False):
    return build_request(text, registry.resolve("joe"), 1.0, None, PCM, stream, SETTINGS)


def piper(service: SpeechService):
    return service.synthesizer.pools["piper"]


def assert_nothing_reserved(service: SpeechService) -> None:
    assert service.synthesizer.reserved_requests == 0
    snapshot = piper(service).snapshot()
    assert (snapshot["reserved_requests"], snapshot["reserved_units"]) == (0, 0)


async def drain(speech) -> int:
    return sum([len(chunk) async for chunk in speech.chunks])


async def test_a_burst_in_one_turn_is_admitted_only_as_far_as_its_work_fits_the_deadline(
        service, registry):
    pool = piper(service)
    requests = [request(registry, paragraph(i)) for i in range(40)]
    one = requests[0]
    alone_s = pool.estimated_wait_s(1, len(one.text), len(one.units))
    # The deadline holds a few of these paragraphs on two workers; the burst offers forty,
    # all admitted before any of them has queued a unit (each client's speak() runs to its
    # admission in the same event-loop turn).
    deadline_s = 5 * alone_s
    admission = Admission(priority=1, deadline_s=deadline_s)

    async def client(synthesis_request):
        """As an HTTP handler: speak, then read the audio to its end."""
        try:
            speech = await service.speak(synthesis_request, admission)
        except ServiceUnavailable as refusal:
            return refusal
        return speech, await drain(speech)

    outcomes = await asyncio.gather(*(client(r) for r in requests))
    refused = [o for o in outcomes if isinstance(o, ServiceUnavailable)]
    admitted = [o for o in outcomes if not isinstance(o, ServiceUnavailable)]
    assert all(o.code == "would_miss_deadline" and o.retry_after_s >= 1 for o in refused)
    assert admitted and refused
    assert all(size > 0 for _, size in admitted)
    # Every admitted one was judged with the earlier admitted ones ahead of it: their
    # characters over the two workers, plus its own, fit the deadline at the speed the
    # pool had then (no unit had finished yet: the starting guess).
    chars = [len(speech.request.text) for speech, _ in admitted]
    spc = SETTINGS.pool.initial_seconds_per_char["piper"]
    assert (sum(chars[:-1]) / 2 + chars[-1] / 2) * spc <= deadline_s
    assert len(admitted) < len(requests) / 4
    assert_nothing_reserved(service)
    assert pool.snapshot()["queued_units"] == 0


async def test_a_reservation_ends_when_its_units_are_queued(service, registry):
    pool = piper(service)
    idle_s = pool.estimated_wait_s(1, 10, 1)
    speech = await service.speak(request(registry, paragraph(1)), Admission(deadline_s=600))
    assert pool.estimated_wait_s(1, 10, 1) > idle_s  # counted before anything is queued
    chunks = speech.chunks.__aiter__()
    assert await chunks.__anext__()  # the flight has queued its units and one is done
    assert_nothing_reserved(service)
    await drain(speech)


async def test_a_request_dropped_before_its_flight_started_leaves_no_reservation(
        service, registry):
    pool = piper(service)
    idle_s = pool.estimated_wait_s(1, 10, 1)

    async def client_leaves_at_once() -> None:
        speech = await service.speak(request(registry, paragraph(2)), Admission(deadline_s=600))
        assert service.synthesizer.reserved_requests == 1
        speech._flight.task.cancel()  # gone before the flight's first step: stream() never runs

    await asyncio.create_task(client_leaves_at_once())
    await asyncio.sleep(0)  # the cancelled flight task finishes
    assert_nothing_reserved(service)
    assert pool.estimated_wait_s(1, 10, 1) == idle_s
    assert pool.snapshot()["queued_units"] == 0


async def test_failed_and_abandoned_requests_leave_no_reservation(service, registry):
    pool = piper(service)
    # Abandoned mid-way: the first chunk read, then the client goes.
    speech = await service.speak(request(registry, paragraph(3) * 3), Admission(deadline_s=600))
    chunks = speech.chunks.__aiter__()
    await chunks.__anext__()
    await chunks.aclose()
    # Failed: the pool refuses the units when the flight submits them (shutting down).
    failing = await service.speak(request(registry, paragraph(4)), Admission(deadline_s=600))
    pool._closing = True
    try:
        with pytest.raises(ServiceUnavailable):
            await drain(failing)
    finally:
        pool._closing = False
    # Refused at the door: nothing was reserved for it.
    with pytest.raises(ServiceUnavailable):
        await service.speak(request(registry, paragraph(5)), Admission(deadline_s=1e-9))
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.sleep(0)
    assert_nothing_reserved(service)


async def test_the_first_measured_unit_replaces_the_starting_guess(registry):
    settings = SETTINGS.replace(pool={"initial_seconds_per_char": {
        "piper": 10.0, "espeak": 10.0, "fastspeech2": 10.0}})
    pools = build_pools(settings, registry)
    await start_pools(pools, registry)
    try:
        pool = pools["piper"]
        assert pool.seconds_per_char == 10.0
        text = "A single sentence to measure."
        unit = build_request(text, registry.resolve("joe"), 1.0, None, PCM, False, settings)
        synthesizer = Synthesizer(pools, registry, {}, request_timeout_s=600, retry_after_s=1)
        speech = await SpeechService(synthesizer, None, {}).speak(unit, Admission(deadline_s=1e6))
        assert await drain(speech) > 0
        # The estimate learned how long the unit held its worker (at least its synthesis),
        # and that one measurement replaced the guess entirely (as a tenth of it would
        # have left it above 9 s per character).
        synthesis_per_char = speech.trace.synthesis_ms / 1000 / len(text)
        assert synthesis_per_char <= pool.seconds_per_char < 1.0
    finally:
        await asyncio.gather(*(pool.stop() for pool in pools.values()))


def test_lateness_is_a_bounded_ratio_of_the_sums():
    lateness = Lateness()
    assert lateness.factor == 1.0  # nothing measured: the estimate as it is
    lateness.observe(estimated_s=2.0, measured_s=4.0)
    assert lateness.factor == pytest.approx(2.0)
    for _ in range(200):
        lateness.observe(estimated_s=1.0, measured_s=100.0)
    assert lateness.factor == LATENESS_BOUNDS[1]
    for _ in range(400):
        lateness.observe(estimated_s=10.0, measured_s=1.0)
    assert lateness.factor == LATENESS_BOUNDS[0]


async def test_an_estimate_proved_optimistic_makes_the_next_admissions_stricter(registry):
    # A starting guess far too fast: the first request is admitted on it, and takes far
    # longer than estimated.
    settings = SETTINGS.replace(pool={"initial_seconds_per_char": {
        "piper": 1e-6, "espeak": 1e-6, "fastspeech2": 1e-6}})
    pools = build_pools(settings, registry)
    await start_pools(pools, registry)
    try:
        synthesizer = Synthesizer(pools, registry, {}, request_timeout_s=600, retry_after_s=1)
        service = SpeechService(synthesizer, None, {})
        first = await service.speak(request(registry, paragraph(1)), Admission(deadline_s=1e6))
        await drain(first)
        assert synthesizer.lateness["piper"].factor == LATENESS_BOUNDS[1]
        # The pool's own estimate (now at its measured speed) would fit this deadline;
        # times what the last estimate missed by, it does not.
        second = request(registry, paragraph(2))
        estimate_s = pools["piper"].estimated_wait_s(1, len(second.text), len(second.units))
        with pytest.raises(ServiceUnavailable) as refused:
            await service.speak(second, Admission(deadline_s=2 * estimate_s))
        assert refused.value.code == "would_miss_deadline"
        assert_nothing_reserved(service)
    finally:
        await asyncio.gather(*(pool.stop() for pool in pools.values()))


async def test_a_streamed_request_on_an_idle_pool_runs_its_first_unit_alone(service, registry):
    synthesizer, pool = service.synthesizer, piper(service)
    synthesizer.stream_lead_alone = True  # the server's default (pool.stream_lead_alone)
    text = paragraph(6)
    streamed = request(registry, text, stream=True)
    speech = await service.speak(streamed, Admission(deadline_s=600))
    chunks = speech.chunks.__aiter__()
    first = asyncio.create_task(chunks.__anext__())
    while pool.snapshot()["busy_workers"] == 0:  # until the flight has submitted
        await asyncio.sleep(0)
    snapshot = pool.snapshot()
    # One worker on the first unit, the other idle; the rest reserved, not queued.
    assert (snapshot["busy_workers"], snapshot["queued_units"]) == (1, 0)
    assert snapshot["reserved_units"] == len(streamed.units) - 1
    audio = await first + b"".join([chunk async for chunk in chunks])
    assert_nothing_reserved(service)
    # The same audio as the request not streamed, whose units all start at once.
    whole = await service.speak(request(registry, text), Admission(deadline_s=600))
    whole_chunks = whole.chunks.__aiter__()
    started = asyncio.create_task(whole_chunks.__anext__())
    while pool.snapshot()["busy_workers"] == 0:
        await asyncio.sleep(0)
    assert pool.snapshot()["busy_workers"] == 2
    assert await started + b"".join([chunk async for chunk in whole_chunks]) == audio


async def test_the_held_rest_of_a_streamed_request_is_dropped_with_it(service, registry):
    synthesizer, pool = service.synthesizer, piper(service)
    synthesizer.stream_lead_alone = True
    speech = await service.speak(request(registry, paragraph(7), stream=True),
                                 Admission(deadline_s=600))
    chunks = speech.chunks.__aiter__()
    first = asyncio.create_task(chunks.__anext__())
    while pool.snapshot()["busy_workers"] == 0:
        await asyncio.sleep(0)
    first.cancel()  # the client leaves while the first unit runs
    with contextlib.suppress(asyncio.CancelledError):
        await first
    await chunks.aclose()
    while pool.snapshot()["busy_workers"]:  # the first unit finishes (or is dropped)
        await asyncio.sleep(0.01)
    await asyncio.sleep(0)
    assert_nothing_reserved(service)
    assert pool.snapshot()["queued_units"] == 0


async def test_a_response_sent_whole_queues_its_units_longest_first(registry):
    pools = build_pools(SETTINGS, registry)
    await start_pools(pools, registry)
    seen: list[tuple[int, float]] = []  # (characters, queue ms) per unit, in text order
    try:
        synthesizer = Synthesizer(pools, registry, {}, request_timeout_s=600, retry_after_s=1,
                                  on_unit=lambda _e, queue_ms, _s, _n, _r, chars:
                                  seen.append((chars, queue_ms)))
        service = SpeechService(synthesizer, None, {})
        text = ("Short one. A much longer sentence with many more words in it than the first. "
                "Tiny. A medium sentence of some length here.")
        for stream in (False, True):
            seen.clear()
            speech = await service.speak(request(registry, text, stream=stream),
                                         Admission(deadline_s=600))
            await drain(speech)
            waited = [queue_ms for _, queue_ms in seen]
            if stream:  # in text order: the last unit waited longest
                assert waited.index(max(waited)) == len(waited) - 1
            else:  # longest first: the shortest unit ("Tiny.") waited longest
                shortest = min(range(len(seen)), key=lambda i: seen[i][0])
                assert waited.index(max(waited)) == shortest
        assert_nothing_reserved(service)
    finally:
        await asyncio.gather(*(pool.stop() for pool in pools.values()))
