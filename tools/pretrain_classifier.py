#!/usr/bin/env python3
"""Pretrain a ResNet as an image classifier (He et al., 2015, Sec. 3.4) and write its weights for
detectors: OUTPUT/model_final.pth loads into make_resnet(weights=...) and MODEL.WEIGHTS with its
architecture and input settings.

Data: the embedded synthetic set by default (100 classes of textured shapes, 64 px, generated on
first use), an ImageFolder tree with --data DIR (DIR/train/<class>/*, DIR/val/<class>/*:
ImageNet's layout), or CIFAR-10's python batches with --cifar DIR. Any make_resnet option goes
last as KEY VALUE pairs. It trains on Detectron2's trainer, as tools/train_net.py does: OUTPUT
gets model_final.pth, metrics.json (Detectron2's, with a line per evaluation), training_curve.png,
config.yaml and the checkpoints (model_XXXXXXX.pth, last_checkpoint). Examples::

    tools/pretrain_classifier.py --depth 18 --output output/pretrain/r18
    tools/pretrain_classifier.py --depth 50 --output output/pretrain/x50 num_groups 32
    tools/pretrain_classifier.py --depth 50 --data /data/imagenet --num-gpus 8 --output out/r50
    tools/pretrain_classifier.py --depth 18 --output output/pretrain/r18 --resume   # continue
"""

from __future__ import annotations

# First: importing backbones hides Detectron2's import-time notices; main() hides the rest.
from backbones.quiet import quiet_third_party_warnings

# isort: split

import argparse
import sys
from collections.abc import Sequence

from detectron2.utils.logger import setup_logger

from backbones.specs import DEPTHS
from backbones.study.pretrain.cifar import CIFAR_DEPTHS, CIFAR_OPTIONS, family_option_names
from backbones.study.pretrain.classifier import parse_resnet_options
from backbones.study.pretrain.run import (
    FAMILIES,
    PretrainRun,
    Recipe,
    add_pretrain_arguments,
    pretrain_settings,
)
from backbones.study.pretrain.train import pretrain, tool_exit_status
from backbones.study.report.pretrain_plots import TrainingCurveWriter


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--depth",
        type=int,
        required=True,
        choices=sorted(set(DEPTHS) | set(CIFAR_DEPTHS)),
        help=f"ImageNet family: {', '.join(map(str, sorted(DEPTHS)))}; CIFAR family: "
        f"{', '.join(map(str, CIFAR_DEPTHS))}",
    )
    parser.add_argument(
        "--family",
        choices=FAMILIES,
        default="imagenet",
        help="imagenet: make_resnet's nets (KEY VALUE: its keywords); cifar: the paper's CIFAR-10 "
        f"nets, 3x3 stem at stride 1, 16/32/64 channels (KEY VALUE: {', '.join(CIFAR_OPTIONS)})",
    )
    parser.add_argument(
        "--stop-at",
        type=int,
        metavar="ITER",
        help="stop after ITER iterations with a checkpoint, for --resume later (jobs with limits)",
    )
    add_pretrain_arguments(parser, Recipe())
    parser.add_argument(
        "opts",
        nargs=argparse.REMAINDER,
        metavar="KEY VALUE",
        help="make_resnet options, e.g. num_groups 32 stem_type deep avg_down True norm GN",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    quiet_third_party_warnings()
    args = parse_args(argv)
    setup_logger(name="backbones")
    try:
        data, recipe = pretrain_settings(args)
        name = f"{'CIFAR ' if args.family == 'cifar' else ''}ResNet-{args.depth}"
        run = PretrainRun(
            args.output,
            args.depth,
            data=data,
            recipe=recipe,
            resnet_options=parse_resnet_options(args.opts, family_option_names(args.family)),
            family=args.family,
            resume=args.resume,
            stop_at=args.stop_at,
            after_eval=TrainingCurveWriter(title=f"{name}, {data.describe()}"),
        )
        # The processes started for --num-gpus begin with Python's filters: quiet them too.
        result = pretrain(run, num_gpus=args.num_gpus, process_setup=quiet_third_party_warnings)
    except Exception as e:  # a mistake in the options or data, or a divergence: one line
        return tool_exit_status(e)
    if result.already_finished:
        print(f"{args.output} had finished: nothing to do")
    last = result.records[-1] if result.records else None
    if last is not None:
        print(
            f"iteration {last['iter']}: val top-1 error {last['val_error']:.2f}%, "
            f"top-5 {last['val_top5_error']:.2f}%"
        )
    if result.finished:
        print(f"weights: {result.weights}")
    else:
        print(f"stopped at iteration {result.iteration} of {result.max_iter}: --resume continues")
    return 0


if __name__ == "__main__":
    sys.exit(main())
