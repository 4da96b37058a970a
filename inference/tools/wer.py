"""Word error rate of INT8 variants against FP32, judged by Whisper: the quality gate's CLI.

python -m inference.tools.wer qdq-dec-act-pc-u8 [--count 60] [--show]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from inference.corpus import eval_sentences
from inference.quantize import data_dir_default, default_voice
from inference.tools.variants import resolve
from inference.wer import evaluate_variants, format_reports, normalize


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m inference.tools.wer",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("variants", nargs="*", default=[], help="variants besides fp32")
    parser.add_argument("--count", type=int, default=60, help="evaluation sentences (>= 50)")
    parser.add_argument("--data-dir", help="quantized model cache directory")
    parser.add_argument("--show", action="store_true", help="print every mismatching transcript")
    args = parser.parse_args(argv)
    sentences = eval_sentences(args.count)
    reports = evaluate_variants(
        default_voice(),
        [resolve(name) for name in args.variants],
        sentences,
        args.data_dir or data_dir_default(),
    )
    print(format_reports(reports))
    if args.show:
        for report in reports.values():
            for ref, hyp in zip(sentences, report.transcripts, strict=True):
                if normalize(ref) != normalize(hyp):
                    print(f"[{report.variant}] {ref!r} -> {hyp!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
