"""The live one-line status on stderr: elapsed, recent QPS and p95, errors, requests in flight."""

from __future__ import annotations

import asyncio
import time
from typing import TextIO

from .samples import Recorder, Sample
from .stats import percentile

CLEAR_LINE = "\r\x1b[K"
NON_TTY_EVERY = 5  # without a terminal (CI logs), print a full line only every 5th tick


class ProgressLine:
    """Redraws one status line per tick; QPS and p95 cover the samples since the last tick."""

    def __init__(
        self,
        recorder: Recorder,
        label: str,
        duration_s: float,
        stream: TextIO,
        interval_s: float = 1.0,
    ) -> None:
        self._recorder = recorder
        self._label = label
        self._duration_s = duration_s
        self._stream = stream
        self._interval_s = interval_s
        self._tty = stream.isatty()
        self._seen = 0
        self._errors = 0
        self._origin = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self, origin: float) -> None:
        self._origin = origin
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._tty:
            self._stream.write(CLEAR_LINE)
            self._stream.flush()

    async def _run(self) -> None:
        tick = 0
        last = time.monotonic()
        while True:
            await asyncio.sleep(self._interval_s)
            now = time.monotonic()
            tick += 1
            line = self._line(self._recent(), now - last, now - self._origin)
            last = now
            if self._tty:
                self._stream.write(CLEAR_LINE + line)
            elif tick % NON_TTY_EVERY == 0:
                self._stream.write(line + "\n")
            self._stream.flush()

    def _recent(self) -> list[Sample]:
        recent = self._recorder.samples[self._seen :]
        self._seen += len(recent)
        self._errors += sum(1 for sample in recent if not sample.ok)
        return recent

    def _line(self, recent: list[Sample], tick_s: float, elapsed_s: float) -> str:
        latencies = sorted(sample.latency_s for sample in recent if sample.ok)
        p95 = f"{percentile(latencies, 95) * 1000:.0f} ms" if latencies else "-"
        qps = len(latencies) / tick_s if tick_s > 0 else 0.0
        error_pct = 100.0 * self._errors / self._seen if self._seen else 0.0
        return (
            f"[{self._label}] {elapsed_s:5.1f}/{self._duration_s:g} s  requests {self._seen}  "
            f"QPS {qps:.1f}  p95 {p95}  errors {error_pct:.1f}%  "
            f"in flight {self._recorder.in_flight}"
        )
