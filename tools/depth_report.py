#!/usr/bin/env python3
"""Depth report of Detectron2 runs: AP, parameters and GFLOPs by ResNet depth, each run's gain
over the shallowest, beside He et al. (2015)'s Table 8 and the model zoos' figures.

Reads each RUN_DIR as Detectron2's trainer leaves it (config.yaml, metrics.json: the last
evaluation's bbox/AP, segm/AP, ...; model_final.pth) and writes into --output:

  depth_report.csv      one row per run: run, depth, params, gflops, the APs (bbox/AP,
                        bbox/AP50, ...), per AP the gain over the shallowest evaluated run of
                        the same detector, design and schedule in points (bbox/AP_gain) and
                        percent (bbox/AP_gain_rel), status; where a run evaluated a model-zoo
                        checkpoint (tools/zoo_eval.py), zoo, bbox/AP_zoo (the published AP)
                        and bbox/AP_zoo_diff (ours minus it)
  depth_report.md       the runs beside the paper's VGG-16 -> ResNet-101 row and the model
                        zoos' models of the same detector and design, sources named
  depth_report_ap_vs_depth.png, depth_report_ap_vs_gflops.png

A run with an evaluation and no training (train_net.py --eval-only) is "evaluated" and compared.
Runs that did not finish, have no evaluation or no readable config.yaml are listed as such
(status column, a list in the Markdown) and left out of the gains and plots. Example::

    tools/depth_report.py output/depth_sweep/mrcnn_r*_shapes --output output/depth_sweep/report
"""

from __future__ import annotations

# First: importing backbones hides Detectron2's import-time notices; main() hides the rest.
from backbones.quiet import quiet_third_party_warnings

# isort: split

import argparse
import logging
import sys
from collections.abc import Sequence

from backbones.study.report import REFERENCES_FILE, write_depth_report


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="Detectron2 OUTPUT_DIRs")
    parser.add_argument("--output", required=True, metavar="DIR", help="folder for the report")
    parser.add_argument(
        "--references",
        default=str(REFERENCES_FILE),
        metavar="FILE",
        help="published figures (YAML, the layout of the default: %(default)s)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Write the report; prints one line per run and the files written. Returns 0."""
    quiet_third_party_warnings()
    args = parse_args(argv)
    # Progress over the runs (each one's FLOPs are counted), every 5 s with an ETA, on stderr.
    logging.basicConfig(format="%(message)s")
    logging.getLogger("backbones").setLevel(logging.INFO)
    report = write_depth_report(args.run_dirs, args.output, references_file=args.references)
    for run in report.runs:
        ap = run.ap.get("bbox/AP")
        box = f", box AP {ap:.1f}" if ap is not None else ""
        zoo = run.zoo_values().get("bbox/AP_zoo")
        if ap is not None and zoo is not None:
            box += f" (zoo {zoo:.1f}, {ap - zoo:+.1f})"
        print(f"{run.name}: R-{run.depth or '?'}, {run.reason or run.status}{box}")
    for path in report.files.values():
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
