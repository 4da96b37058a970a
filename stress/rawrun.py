"""The raw ONNX Runtime reference of the throughput benchmarks: `processes` spawned engines,
each with `threads` intra-op threads, pulling units from one shared list; no HTTP, no IPC.

`load_engine(threads)` builds and warms one engine in the child process (a module-level
function, or a functools.partial of one: spawn pickles it); it needs `sample_rate` and
`synthesize_unit(text, options)`, as every engine in inference/ has.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable, Sequence
from typing import Any


def _pull_units(load_engine: Callable[[int], Any], texts: Sequence[str], threads: int,
                next_index, barrier, results) -> None:
    from inference.options import SynthesisOptions

    engine = load_engine(threads)
    barrier.wait()
    started, samples = time.monotonic(), 0
    while True:
        with next_index.get_lock():
            index = next_index.value
            next_index.value += 1
        if index >= len(texts):
            break
        samples += len(engine.synthesize_unit(texts[index], SynthesisOptions()))
    results.put((samples / engine.sample_rate, started, time.monotonic()))


def raw_throughput(load_engine: Callable[[int], Any], texts: Sequence[str], processes: int,
                   threads: int, timeout_s: float = 900) -> float:
    """Audio-seconds per wall-second of `processes` engines pulling from one list of texts."""
    ctx = multiprocessing.get_context("spawn")
    next_index, barrier, results = ctx.Value("i", 0), ctx.Barrier(processes), ctx.Queue()
    procs = [ctx.Process(target=_pull_units, args=(load_engine, list(texts), threads,
                                                   next_index, barrier, results))
             for _ in range(processes)]
    for proc in procs:
        proc.start()
    reports = [results.get(timeout=timeout_s) for _ in procs]
    for proc in procs:
        proc.join(30)
    wall = max(r[2] for r in reports) - min(r[1] for r in reports)
    return sum(r[0] for r in reports) / wall
