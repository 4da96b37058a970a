"""One measured request (`Sample`) and the collector a load level appends to."""

from __future__ import annotations

from dataclasses import dataclass, field

# Error kinds besides "http_<status>". A sample whose `error` is None succeeded.
TIMEOUT = "timeout"
CONNECTION = "connection"
PAYLOAD = "payload"
CLIENT_ERROR = "client_error"


def http_error(status: int) -> str:
    """The error kind of a non-2xx response."""
    return f"http_{status}"


@dataclass(frozen=True, slots=True)
class Sample:
    """Times are seconds on the monotonic clock, counted from the level's start."""

    scheduled_s: float  # when the request was due; closed loop: when it was sent
    sent_s: float  # when the client actually started it
    first_byte_s: float | None  # response headers parsed; None when none arrived
    done_s: float  # body read completely, or the request failed
    status: int | None  # HTTP status; None without a response
    error: str | None  # None, "http_<status>", or one of the kinds above
    audio_s: float | None = None  # seconds of audio in a successful body
    cache: str | None = None  # the X-Cache header as sent, if any

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def latency_s(self) -> float:
        """From the scheduled start, so client-side queueing counts (no coordinated omission)."""
        return self.done_s - self.scheduled_s

    @property
    def ttfb_s(self) -> float | None:
        if self.first_byte_s is None:
            return None
        return self.first_byte_s - self.scheduled_s


@dataclass(slots=True)
class Recorder:
    """Samples of one level, in completion order, plus requests still in flight."""

    samples: list[Sample] = field(default_factory=list)
    in_flight: int = 0

    def started(self) -> None:
        self.in_flight += 1

    def add(self, sample: Sample) -> None:
        self.in_flight -= 1
        self.samples.append(sample)
