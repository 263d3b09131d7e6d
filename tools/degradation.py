#!/usr/bin/env python3
"""The degradation experiment of He et al. (2015, Figure 4 / Figure 6): plain and residual nets
of several depths, one optimiser and schedule for all, several seeds each, on the embedded
synthetic set (default: ten shape classes at 32 px), CIFAR-10 (--cifar DIR) or an ImageFolder
tree (--data DIR).

Each run trains into OUTPUT/<net>/seed<k> (plain-18, ..., resnet-50) with its metrics.json and
training_curve.png; then OUTPUT gets curves.csv (model, depth, residual, seed, iter,
train_error, val_error, train_loss), degradation.png (mean over the seeds, a band of ± 1 std;
training error dashed, validation error bold; plain nets left, residual nets right) and
degradation.md (final errors, mean ± std). The nets: the ImageNet family at width 16
(--width 64: the paper's) or the paper's CIFAR-10 nets (--family cifar: 20/32/44/56 by
default). Residual nets start at the identity (zero_init_residual; --no-zero-init: not), plain
nets cannot. Builder options for every net go last as KEY VALUE pairs. Examples::

    tools/degradation.py --output output/degradation                 # the defaults, ~30 min
    tools/degradation.py --output output/degradation --resume        # skip finished runs
    tools/degradation.py --family cifar --cifar datasets/cifar-10-batches-py \\
        --output output/degradation_cifar --max-iter 64000 --batch-size 128
"""

from __future__ import annotations

# First: importing backbones hides Detectron2's import-time notices; main() hides the rest.
from backbones.quiet import quiet_third_party_warnings

# isort: split

import argparse
import sys
from collections.abc import Sequence

from detectron2.utils.logger import setup_logger

from backbones.study.data.classification import DataSpec
from backbones.study.experiments.degradation import (
    DEFAULT_DEPTHS,
    DEFAULT_SEEDS,
    DEFAULT_WIDTH,
    DEGRADATION_RECIPE,
    default_jobs,
    run_degradation,
)
from backbones.study.pretrain.cifar import family_option_names
from backbones.study.pretrain.classifier import parse_resnet_options
from backbones.study.pretrain.run import (
    FAMILIES,
    Recipe,
    add_pretrain_arguments,
    pretrain_settings,
)
from backbones.study.pretrain.train import tool_exit_status

DEFAULT_MAX_ITER = 3000
# The synthetic set of the defaults: ten classes (the 100-class set stays at chance for a
# CPU-hour), the network's input at 32 px.
DEFAULT_DATA = DataSpec(num_classes=10, input_size=32)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--family", choices=FAMILIES, default="imagenet")
    parser.add_argument(
        "--depths",
        type=int,
        nargs="+",
        help=" or ".join(f"{' '.join(map(str, d))} ({f})" for f, d in DEFAULT_DEPTHS.items()).join(
            ("default: ", "")
        ),
    )
    parser.add_argument(
        "--seeds",
        type=int,
        default=DEFAULT_SEEDS,
        help=f"runs per net, seeds --seed, --seed + 1, ... (default: {DEFAULT_SEEDS})",
    )
    parser.add_argument(
        "--width",
        type=int,
        help=f"the ImageNet nets' width (default: {DEFAULT_WIDTH}; the paper's: 64)",
    )
    parser.add_argument(
        "--no-zero-init",
        action="store_true",
        help="do not start the residual nets' blocks at the identity",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        help="runs at once, one thread each (default: one per CPU core without CUDA, else 1)",
    )
    add_pretrain_arguments(
        parser,
        Recipe(**DEGRADATION_RECIPE, max_iter=DEFAULT_MAX_ITER, eval_period=200),
        DEFAULT_DATA,
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    quiet_third_party_warnings()
    args = parse_args(argv)
    depths = args.depths or list(DEFAULT_DEPTHS[args.family])
    if len(set(depths)) < 2:
        print(f"error: --depths {depths}: give two depths or more", file=sys.stderr)
        return 2
    if args.width is not None and args.family == "cifar":
        print(
            "error: --width is for the ImageNet nets; the CIFAR nets are 16/32/64", file=sys.stderr
        )
        return 2
    for flag, value in (("--seeds", args.seeds), ("--jobs", args.jobs), ("--width", args.width)):
        if value is not None and value < 1:
            print(f"error: {flag} {value}: give a positive number", file=sys.stderr)
            return 2
    jobs = args.jobs or default_jobs(args.num_gpus)
    if jobs > 1 and args.num_gpus > 1:
        print(
            f"error: --jobs {jobs} with --num-gpus {args.num_gpus}: one or the other",
            file=sys.stderr,
        )
        return 2
    setup_logger(name="backbones")
    try:
        data, recipe = pretrain_settings(args)
        result = run_degradation(
            args.output,
            data=data,
            recipe=recipe,
            depths=depths,
            seeds=args.seeds,
            family=args.family,
            width=args.width or DEFAULT_WIDTH,
            zero_init=not args.no_zero_init,
            resnet_options=parse_resnet_options(args.opts, family_option_names(args.family)),
            num_gpus=args.num_gpus,
            jobs=jobs,
            resume=args.resume,
            process_setup=quiet_third_party_warnings,  # the job and --num-gpus processes too
        )
    except Exception as e:  # a mistake in the options or data, or a divergence: one line
        return tool_exit_status(e)
    print(result.table.read_text())
    print(f"wrote {result.csv}, {result.figure}, {result.table}")
    for label, message in result.failed:
        print(f"error: {label} failed: {message}", file=sys.stderr)
    if result.failed:
        print("--resume runs the failed ones again and skips the finished", file=sys.stderr)
    return 1 if result.failed else 0


if __name__ == "__main__":
    sys.exit(main())
