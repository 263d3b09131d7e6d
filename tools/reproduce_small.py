#!/usr/bin/env python3
"""The paper's two claims at small scale, on a CPU: the degradation experiment (thin plain and
residual R-18/34/50, three seeds each, on the synthetic classification set), then Mask R-CNN on
a small shapes training set fine-tuned from each seed's pretrained residual net and trained from
scratch; box and mask AP per depth as mean ± std, a figure, and both arms' depth reports.

    python tools/reproduce_small.py                  # the measured run (docs/pretraining.md)
    python tools/reproduce_small.py --depths 18 34 --seeds 2 --no-scratch

Run it again after an interruption: finished steps are skipped, interrupted ones resumed.
"""

from __future__ import annotations

# First: importing backbones hides Detectron2's import-time notices; main() hides the rest.
from backbones.quiet import quiet_third_party_warnings

# isort: split

import argparse
import logging
import sys

from backbones.study.experiments import reproduce
from backbones.study.experiments.degradation import DEFAULT_SEEDS, DEFAULT_WIDTH, default_jobs


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, reproduce.Settings]:
    """The flags, and the settings they give (the usage errors exit with status 2)."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output-root", default="output/reproduce_small")
    parser.add_argument("--depths", type=int, nargs="+", default=list(reproduce.DEFAULT_DEPTHS))
    parser.add_argument("--seeds", type=int, default=DEFAULT_SEEDS, help="runs per net")
    parser.add_argument(
        "--width", type=int, default=DEFAULT_WIDTH, help="of every ResNet (the paper's: 64)"
    )
    parser.add_argument(
        "--pretrain-iters", type=int, default=reproduce.PRETRAIN_ITERS, help="per net"
    )
    parser.add_argument(
        "--train-images",
        type=int,
        default=reproduce.TRAIN_IMAGES,
        help="the detectors' training images, the first of shapes_train (0: all 1000)",
    )
    parser.add_argument(
        "--detector-iters",
        type=int,
        default=reproduce.DETECTOR_ITERS,
        help="SOLVER.MAX_ITER of the detectors (0: the config's)",
    )
    parser.add_argument(
        "--jobs", type=int, help="runs at once (default: one per CPU core without CUDA, else 1)"
    )
    parser.add_argument(
        "--no-scratch", action="store_true", help="skip the detectors trained from scratch"
    )
    parser.add_argument(
        "opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides of the detectors"
    )
    args = parser.parse_args(argv)
    for flag in ("seeds", "width", "pretrain_iters", "jobs"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            parser.error(f"--{flag.replace('_', '-')} {value}: give a positive number")
    if len(set(args.depths)) < 2:
        parser.error(f"--depths {args.depths}: give two depths or more")
    missing = [d for d in args.depths if not reproduce.detector_config(d).is_file()]
    if missing:
        parser.error(
            f"--depths: no detector config for {missing} "
            f"({reproduce.DETECTOR_CONFIG.format(depth=missing[0])})"
        )
    settings = reproduce.Settings(
        depths=args.depths,
        seeds=args.seeds,
        width=args.width,
        pretrain_iters=args.pretrain_iters,
        train_images=args.train_images or None,
        detector_iters=args.detector_iters or None,
        scratch=not args.no_scratch,
        jobs=args.jobs or default_jobs(),
        detector_opts=args.opts,
    )
    return args, settings


def main() -> None:
    quiet_third_party_warnings()  # each step's tool quiets its own processes
    # The depth reports' progress over the runs (a line every 5 s with an ETA) on stderr.
    logging.basicConfig(format="%(message)s")
    logging.getLogger("backbones").setLevel(logging.INFO)
    args, settings = parse_args()
    result = reproduce.reproduce_small(args.output_root, settings)
    for step in result.failed:
        print(
            f"error: {step.name} failed; its log: {step.output_dir / 'reproduce.log'}",
            file=sys.stderr,
        )
    raise SystemExit(1 if result.failed else 0)


if __name__ == "__main__":
    main()
