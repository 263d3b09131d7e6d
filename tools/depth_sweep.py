#!/usr/bin/env python3
"""Train a ladder of configs one after another (e.g. R-18, R-34, R-50), then write their depth
report: AP, parameters and GFLOPs by depth beside He et al. (2015)'s Table 8.

Each config F trains with tools/train_net.py into OUTPUT_ROOT/<F's stem>, its output in
sweep.log there. A finished run (model_final.pth) is skipped, an interrupted one (a
last_checkpoint) resumed with --resume; a failed run is reported and the sweep goes on with the
others, then exits 1. The report (tools/depth_report.py) of all runs goes to --report-dir.
KEY VALUE config overrides go last, for every run, as in train_net.py. Examples::

    tools/depth_sweep.py --configs configs/mrcnn_r{18,34,50}_shapes.yaml     # CPU, shapes
    tools/depth_sweep.py --configs configs/mrcnn_r{18,34,50}_shapes.yaml --max-iter 20
    tools/depth_sweep.py --configs configs/frcnn_r50.yaml configs/frcnn_r101.yaml --num-gpus 8
    tools/depth_sweep.py --configs configs/frcnn_r*.yaml --print > jobs.txt  # one line a run

--max-iter N appends SOLVER.MAX_ITER N and scales nothing else (SOLVER.STEPS, WARMUP_ITERS,
CHECKPOINT_PERIOD, TEST.EVAL_PERIOD stay): a quick pass over the whole ladder. A run finished
at N is skipped by later sweeps: to train it longer, run train_net.py --resume on it.
"""

from __future__ import annotations

# First: importing backbones hides Detectron2's import-time notices; main() hides the rest.
from backbones.quiet import quiet_third_party_warnings

# isort: split

import argparse
import logging
import os
import re
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from backbones.engine.config import display_path
from backbones.study.experiments.sweep import DEFAULT_OUTPUT_ROOT, run_sweep

# The training script next to this one, as the commands show it (relative when below here).
TRAIN_NET = Path(__file__).resolve().with_name("train_net.py")
CONFIG_KEY = re.compile(r"[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+")  # SOLVER.MAX_ITER: opts start here


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--configs", nargs="+", required=True, metavar="F", help="YAML configs")
    parser.add_argument("--num-gpus", type=int, default=1, help="per run (default: 1)")
    parser.add_argument(
        "--output-root", default=DEFAULT_OUTPUT_ROOT, help="runs go to OUTPUT_ROOT/<config stem>"
    )
    parser.add_argument("--report-dir", help="default: OUTPUT_ROOT/report")
    parser.add_argument("--max-iter", type=int, help="append SOLVER.MAX_ITER N to every run")
    parser.add_argument(
        "--print", action="store_true", help="print the commands, one a line, and run nothing"
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)
    # "--configs a.yaml b.yaml SOLVER.X 1": --configs takes all; the overrides start at a key.
    split = next((i for i, a in enumerate(args.configs) if CONFIG_KEY.fullmatch(a)), None)
    if split is not None:
        args.configs, args.opts = args.configs[:split], args.configs[split:] + args.opts
    if not args.configs:
        parser.error("--configs: give at least one config file")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run (or print) the sweep; returns 1 when a run failed, 2 for a bad argument, else 0."""
    quiet_third_party_warnings()  # each run's train_net.py quiets its own processes
    args = parse_args(argv)
    # The report's progress over the runs (a line every 5 s with an ETA) on stderr.
    logging.basicConfig(format="%(message)s")
    logging.getLogger("backbones").setLevel(logging.INFO)
    train_net = display_path(TRAIN_NET)
    try:
        result = run_sweep(
            args.configs,
            output_root=args.output_root,
            num_gpus=args.num_gpus,
            opts=args.opts,
            max_iter=args.max_iter,
            report_dir=args.report_dir,
            print_only=args.print,
            train_net=train_net,
        )
    except (FileNotFoundError, ValueError) as e:
        print(f"depth_sweep.py: error: {e}", file=sys.stderr)
        return 2
    if args.print:
        dirs = [str(run.output_dir) for run in result.runs]
        report_dir = args.report_dir or os.path.join(args.output_root, "report")
        for run in result.runs:
            if run.command is None:
                print(f"# {run.name}: finished, nothing to run", file=sys.stderr)
        report = [sys.executable, str(TRAIN_NET.with_name("depth_report.py")), *dirs]
        print(f"# then: {shlex.join(report + ['--output', report_dir])}", file=sys.stderr)
    return 1 if result.failed else 0


if __name__ == "__main__":
    sys.exit(main())
