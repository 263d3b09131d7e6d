#!/usr/bin/env python3
"""Evaluate a COCO results file (boxes and/or masks) against COCO ground truth, as pycocotools.

Prints the 12 COCO numbers and per-category AP, computed by faster-coco-eval; writes
``coco_eval_metrics.json`` and ``coco_eval_per_category.csv`` (values in [0, 1], -1 where
undefined) into ``--output``, by default the folder of ``--dt``; ``--plot`` adds
``pr_curve_<iou type>.png``. Examples::

    tools/coco_eval.py --gt instances_val2017.json --dt coco_instances_results.json
    tools/coco_eval.py --gt val.json --dt results.json --iou-type bbox segm --plot --output out

Exit status 2, with a one-line message naming the file and entry, for a bad input file. A large
file's checking and COCOeval show their progress on stderr (a line every 5 s, with an ETA).
"""

from __future__ import annotations

# First: importing backbones hides Detectron2's import-time notices; main() hides the rest.
from backbones.quiet import quiet_third_party_warnings

# isort: split

import argparse
import logging
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from backbones.evaluation import (
    IOU_TYPES,
    COCOFormatError,
    COCOResultsWarning,
    evaluate_results,
    format_report,
    plot_pr_curves,
    write_report,
)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gt", required=True, help="ground truth, COCO instances JSON")
    parser.add_argument("--dt", required=True, help="results, a COCO results JSON list")
    parser.add_argument(
        "--iou-type", nargs="+", choices=IOU_TYPES, default=["bbox"], help="default: bbox"
    )
    parser.add_argument(
        "--output", default=None, help="folder for the JSON, CSV and PNGs; default: that of --dt"
    )
    parser.add_argument("--plot", action="store_true", help="write precision-recall curves")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the evaluation; returns the exit status (2 for a bad input file)."""
    quiet_third_party_warnings()
    args = parse_args(argv)
    # Progress of large files (checking, COCOeval; a line every 5 s with an ETA) on stderr.
    logging.basicConfig(format="%(message)s")
    logging.getLogger("backbones").setLevel(logging.INFO)
    output = Path(args.output) if args.output is not None else Path(args.dt).resolve().parent
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", COCOResultsWarning)
            report = evaluate_results(args.gt, args.dt, args.iou_type)
    except COCOFormatError as e:
        print(f"coco_eval.py: error: {e}", file=sys.stderr)
        return 2
    for w in caught:
        if issubclass(w.category, COCOResultsWarning):
            print(f"coco_eval.py: warning: {w.message}", file=sys.stderr)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    print(format_report(report))
    written = list(write_report(report, output))
    if args.plot:
        written += plot_pr_curves(report, output)
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
