"""An exclusive lock on a file in a folder, for builds that several processes may start
at once (the INT8 variants, the Mandarin model): the second waits, then finds the result."""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def locked(folder: Path, name: str = ".lock") -> Iterator[None]:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / name, "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
