#!/usr/bin/env python3
"""The degradation experiment of He et al. (2015, Figure 1 / Figure 4 left): plain and residual
nets of two depths, one optimiser and schedule for all four, on CIFAR-10 (--cifar DIR) or the
embedded synthetic set.

Each net trains into OUTPUT/<net> (plain-18, plain-34, resnet-18, resnet-34) with its
metrics.json and training_curve.png; then OUTPUT gets curves.csv (model, depth, residual, iter,
train_error, val_error, train_loss), degradation.png (training error dashed, validation error
bold; plain nets left, residual nets right) and degradation.md (final errors). The recipe is the
paper's CIFAR-10 one (SGD, rate 0.1 divided by 10 at 1/2 and 3/4 of training, batch 128, weight
decay 1e-4); make_resnet options for every net go last as KEY VALUE pairs. Examples::

    tools/degradation.py --output output/degradation --max-iter 6000
    tools/degradation.py --cifar datasets/cifar-10-batches-py --output output/degradation_cifar
    tools/degradation.py --output output/degradation --max-iter 6000 --resume   # skip finished
"""

from __future__ import annotations

# First: importing backbones hides Detectron2's import-time notices; main() hides the rest.
from backbones.quiet import quiet_third_party_warnings

# isort: split

import argparse
import sys
from collections.abc import Sequence

from detectron2.utils.logger import setup_logger

from backbones.study.experiments.degradation import (
    DEFAULT_DEPTHS,
    DEGRADATION_RECIPE,
    run_degradation,
)
from backbones.study.pretrain.classifier import parse_resnet_options
from backbones.study.pretrain.run import Recipe, add_pretrain_arguments, pretrain_settings
from backbones.study.pretrain.train import tool_exit_status

DEFAULT_MAX_ITER = 6000


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--depths", type=int, nargs="+", default=list(DEFAULT_DEPTHS), help="default: 18 34"
    )
    add_pretrain_arguments(
        parser, Recipe(**DEGRADATION_RECIPE, max_iter=DEFAULT_MAX_ITER, eval_period=200)
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    quiet_third_party_warnings()
    args = parse_args(argv)
    if len(set(args.depths)) < 2:
        print(f"error: --depths {args.depths}: give two depths or more", file=sys.stderr)
        return 2
    setup_logger(name="backbones")
    try:
        data, recipe = pretrain_settings(args)
        result = run_degradation(
            args.output,
            data=data,
            recipe=recipe,
            depths=args.depths,
            resnet_options=parse_resnet_options(args.opts),
            num_gpus=args.num_gpus,
            resume=args.resume,
            process_setup=quiet_third_party_warnings,  # the --num-gpus processes too
        )
    except Exception as e:  # a mistake in the options or data, or a divergence: one line
        return tool_exit_status(e)
    print(result.table.read_text())
    print(f"wrote {result.csv}, {result.figure}, {result.table}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
