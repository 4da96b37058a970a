"""The INT8 research grid: every recipe measured for docs/int8_and_batching.md, and its CLI.

    python -m inference.tools.variants --list                 # the named variants
    python -m inference.tools.variants qdq-dec-pc             # build one for the shipped voice
    python -m inference.tools.variants all --data-dir /tmp/m  # build every variant

The server ships only `quantize.RECIPES`; these are here to be re-measured
(`python -m stress.bench_models`, `python -m inference.tools.wer`).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from inference.protocol import VoiceFiles
from inference.quantize import (
    ALL_OPS,
    CONV,
    CONVS,
    DEC,
    DEDICATED_QDQ,
    FP32,
    RECIPES,
    U8,
    QuantizeError,
    Variant,
    data_dir_default,
    default_voice,
    ensure_variant,
    variant_paths,
)

RESEARCH: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant(
            "pre",
            "none",
            "FP32 after quant_pre_process (control: does pre-processing alone help?)",
            preprocess=True,
        ),
        Variant(
            "dyn-all", "dynamic", "quantize_dynamic, every supported op (convs -> ConvInteger)"
        ),
        Variant("dyn-matmul", "dynamic", "quantize_dynamic, MatMul only", op_types=("MatMul",)),
        Variant(
            "dyn-dec",
            "dynamic",
            "quantize_dynamic, decoder Conv/ConvTranspose only",
            op_types=CONVS,
            scope=DEC,
        ),
        Variant(
            "qdq-conv-pc",
            "static",
            "static QDQ S8S8, every Conv, per-channel",
            op_types=CONV,
            per_channel=True,
        ),
        Variant(
            "qdq-dec-pc",
            "static",
            "static QDQ S8S8, decoder Conv+ConvTranspose, per-channel",
            op_types=CONVS,
            per_channel=True,
            scope=DEC,
        ),
        Variant(
            "qdq-dec-pc-ded",
            "static",
            "as qdq-dec-pc, a dedicated QDQ pair per consumer",
            op_types=CONVS,
            per_channel=True,
            scope=DEC,
            extra_options=DEDICATED_QDQ,
        ),
        Variant(
            "qdq-dec-u8",
            "static",
            "static QDQ U8S8, decoder convs, per-tensor",
            op_types=CONVS,
            scope=DEC,
            activation_type=U8,
        ),
        Variant(
            "qdq-dec-pc-u8",
            "static",
            "static QDQ U8S8, decoder convs, per-channel",
            op_types=CONVS,
            per_channel=True,
            scope=DEC,
            activation_type=U8,
        ),
        Variant(
            "qdq-dec-pc-u8-ded",
            "static",
            "as qdq-dec-pc-u8, dedicated QDQ pairs",
            op_types=CONVS,
            per_channel=True,
            scope=DEC,
            activation_type=U8,
            extra_options=DEDICATED_QDQ,
        ),
        Variant(
            "qdq-dec-act-flow-pc-u8",
            "static",
            "qdq-dec-act-pc-u8 plus the flow's convs (per-channel, U8S8)",
            op_types=(*CONVS, "LeakyRelu", "Add"),
            per_channel=True,
            scope=DEC,
            activation_type=U8,
            extra_options=DEDICATED_QDQ,
            also=(("/flow/", CONVS),),
        ),
        Variant(
            "qdq-decflow-pc-u8",
            "static",
            "static QDQ U8S8, decoder + flow convs, per-channel",
            op_types=CONVS,
            per_channel=True,
            scope=("/dec/", "/flow/"),
            activation_type=U8,
        ),
        Variant(
            "qdq-conv-pc-u8",
            "static",
            "static QDQ U8S8, every Conv/ConvTranspose, per-channel",
            op_types=CONVS,
            per_channel=True,
            activation_type=U8,
        ),
        Variant(
            "qdq-all-pc-u8",
            "static",
            "static QDQ U8S8, Conv+ConvTranspose+MatMul, per-channel",
            op_types=ALL_OPS,
            per_channel=True,
            activation_type=U8,
        ),
        Variant(
            "qdq-dec-pc-u8-pre",
            "static",
            "as qdq-dec-pc-u8, after quant_pre_process",
            op_types=CONVS,
            per_channel=True,
            scope=DEC,
            activation_type=U8,
            preprocess=True,
        ),
    )
}
# Every recipe, shipped first.
GRID: dict[str, Variant] = {**RECIPES, **RESEARCH}


def resolve(name: str) -> str | Variant:
    """What ensure_variant takes for a name of the grid: "fp32" stays a name."""
    return name if name == FP32 else get(name)


def get(name: str) -> Variant:
    try:
        return GRID[name]
    except KeyError:
        raise QuantizeError(f"unknown variant {name!r}; known: {', '.join(GRID)}") from None


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m inference.tools.variants",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("variants", nargs="*", help="variant names, or 'all'")
    parser.add_argument("--list", action="store_true", help="list the variants and exit")
    parser.add_argument("--model", help="source .onnx (default: the shipped en_US-joe-medium)")
    parser.add_argument("--config", help="source .onnx.json (default: MODEL + '.json')")
    parser.add_argument("--data-dir", help=f"cache directory (default: {data_dir_default()})")
    parser.add_argument("--force", action="store_true", help="rebuild even when cached")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.list or not args.variants:
        for spec in GRID.values():
            print(f"{spec.name:18s} {spec.description}")
        return 0
    if args.model:
        files = VoiceFiles(Path(args.model).stem, args.model, args.config or args.model + ".json")
    else:
        files = default_voice()
    names = list(GRID) if args.variants == ["all"] else args.variants
    data_dir = Path(args.data_dir) if args.data_dir else data_dir_default()
    for name in names:
        try:
            get(name)
        except QuantizeError as exc:
            print(exc, file=sys.stderr)
            return 2
    for name in names:
        if args.force:
            for path in variant_paths(files, name, data_dir):
                path.unlink(missing_ok=True)
        out = ensure_variant(files, get(name), data_dir)
        size = Path(out.model_path).stat().st_size / 1e6
        print(f"{name:18s} {size:7.1f} MB  {out.model_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
