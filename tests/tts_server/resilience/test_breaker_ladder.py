"""Circuit breaker and degradation ladder as state machines, with an injected clock."""

from tts_server.config import DegradationSettings
from tts_server.resilience.breaker import BreakerPolicy, BreakerState, CircuitBreaker
from tts_server.resilience.degradation import DegradationLadder
from tts_server.resilience.state import RunState


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_breaker_closed_open_half_open_closed():
    clock = Clock()
    breaker = CircuitBreaker(BreakerPolicy(failure_threshold=3, window_s=10, open_s=5), clock)
    for _ in range(2):
        breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED and breaker.allow()
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN and not breaker.allow()
    clock.now += 5
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.allow()  # the one probe
    assert not breaker.allow()  # nobody else while it is out
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED and breaker.allow()


def test_failed_probe_reopens_and_old_failures_age_out():
    clock = Clock()
    breaker = CircuitBreaker(BreakerPolicy(failure_threshold=2, window_s=10, open_s=5), clock)
    breaker.record_failure()
    clock.now += 11  # outside the window: forgotten
    breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    clock.now += 5
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN and breaker.opened_count == 2
    clock.now += 2
    assert not breaker.allow()


def test_a_lost_probe_expires():
    clock = Clock()
    breaker = CircuitBreaker(BreakerPolicy(failure_threshold=1, window_s=10, open_s=5), clock)
    breaker.record_failure()
    clock.now += 5
    assert breaker.allow()
    clock.now += 5  # the probe's request never reported back (say, it was a cache hit)
    assert breaker.allow()


def ladder(clock: Clock) -> tuple[DegradationLadder, RunState]:
    settings = DegradationSettings(
        sample_interval_s=1, window_s=3, up_cpu_percent=90, down_window_s=5, down_cpu_percent=70
    )
    state = RunState()
    return DegradationLadder(settings, state, lambda: 0.0, clock), state


def feed(ladder_: DegradationLadder, clock: Clock, cpu: float, seconds: int) -> list[int]:
    levels = []
    for _ in range(seconds):
        clock.now += 1
        levels.append(ladder_.observe(cpu))
    return levels


def test_ladder_climbs_one_level_per_window_of_high_cpu_and_stops_at_three():
    clock = Clock()
    ladder_, state = ladder(clock)
    levels = feed(ladder_, clock, 95, 12)
    assert levels == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]  # a full window per step
    assert not state.preview_enabled


def test_ladder_steps_down_with_hysteresis():
    clock = Clock()
    ladder_, state = ladder(clock)
    feed(ladder_, clock, 95, 7)
    assert state.degradation_level == 2
    assert feed(ladder_, clock, 80, 8)[-1] == 2  # between the thresholds: stays
    levels = feed(ladder_, clock, 10, 12)
    assert levels[-1] == 0 and 1 in levels  # down one level at a time
    assert state.preview_enabled


def test_short_spikes_do_not_move_the_ladder():
    clock = Clock()
    ladder_, state = ladder(clock)
    for _ in range(5):
        feed(ladder_, clock, 100, 1)
        feed(ladder_, clock, 20, 2)
    assert state.degradation_level == 0


def test_cpu_counts_only_while_interactive_work_waits_or_runs():
    clock = Clock()
    busy = {"interactive": False}
    settings = DegradationSettings(sample_interval_s=1, window_s=3, down_window_s=5)
    state = RunState()
    ladder_ = DegradationLadder(settings, state, lambda: 100.0, clock,
                                interactive_load=lambda: busy["interactive"])
    for _ in range(10):  # background jobs alone keep the CPU at 100 %
        clock.now += 1
        ladder_.observe(ladder_.reading())
    assert state.degradation_level == 0
    busy["interactive"] = True
    for _ in range(4):
        clock.now += 1
        ladder_.observe(ladder_.reading())
    assert state.degradation_level == 1
