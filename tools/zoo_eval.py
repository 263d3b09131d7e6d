#!/usr/bin/env python3
"""Evaluate Detectron2 model-zoo checkpoints through our backbone and write their depth report,
the zoo's published AP beside ours: the zoo's depth gains (R50 -> R101 -> X101), reproduced.

Each NAME is a zoo config name (COCO-Detection/faster_rcnn_R_101_FPN_3x.yaml). Its detector is
built by our builder, from the matching config of configs/ (frcnn_r101_3x.yaml; the pairs are
equal key for key but the builder's name) or else from the zoo's YAML with the builder's name
swapped; its trained checkpoint (detectron2.model_zoo.get_checkpoint_url) is loaded and evaluated
on the config's test set (COCO val2017) with tools/train_net.py --eval-only, into
OUTPUT/<folder>/<name> (its output in zoo_eval.log there). A failed evaluation is reported with
the error line of its log, and the others go on; the tool then exits 1. The report
(tools/depth_report.py, with zoo columns) goes to OUTPUT/report. KEY VALUE overrides go last,
for every model, as in train_net.py. Examples::

    tools/zoo_eval.py COCO-Detection/faster_rcnn_{R_50,R_101,X_101_32x8d}_FPN_3x.yaml --output out
    tools/zoo_eval.py COCO-InstanceSegmentation/mask_rcnn_R_{50,101}_C4_3x.yaml --output out2
    tools/zoo_eval.py --list          # the zoo's ResNet models, and our config of each

On COCO val2017 a zoo checkpoint through our backbone should match its published AP to about
0.1 (docs/paper.md). The checkpoints download into Detectron2's cache ($FVCORE_CACHE, default
~/.torch/iopath_cache) on first use.
"""

from __future__ import annotations

# First: importing backbones hides Detectron2's import-time notices; main() hides the rest.
from backbones.quiet import quiet_third_party_warnings

# isort: split

import argparse
import logging
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from backbones.engine.cli import add_dataset_argument
from backbones.engine.config import display_path
from backbones.study.experiments.zoo_eval import (
    DEFAULT_OUTPUT_DIR,
    ZOO_CONFIGS,
    ZooNameError,
    run_zoo_eval,
    zoo_resnet_models,
)

# The training script next to this one, as the commands show it (relative when below here).
TRAIN_NET = Path(__file__).resolve().with_name("train_net.py")
CONFIG_KEY = re.compile(r"[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+")  # SOLVER.MAX_ITER: opts start here


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """``args.names`` (the zoo names) and ``args.opts`` (``KEY VALUE`` pairs: from the first
    argument that looks like a config key), the flags where they stand."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("names", nargs="*", metavar="NAME", help="model-zoo config names")
    parser.add_argument(
        "--output", metavar="DIR", help=f"runs and report go here (e.g. {DEFAULT_OUTPUT_DIR})"
    )
    parser.add_argument("--num-gpus", type=int, default=1, help="per model (default: 1)")
    add_dataset_argument(parser, "DATASETS.TEST, as train_net.py")
    parser.add_argument(
        "--list", action="store_true", help="list the zoo's ResNet models and our configs"
    )
    args, rest = parser.parse_known_args(argv)
    unknown = [arg for arg in rest if arg.startswith("--")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    # "NAME NAME KEY VALUE": the names end where the first config key starts.
    tokens = args.names + rest
    split = next((i for i, a in enumerate(tokens) if CONFIG_KEY.fullmatch(a)), len(tokens))
    args.names, args.opts = tokens[:split], tokens[split:]
    if not args.list and not args.names:
        parser.error("give at least one NAME, e.g. COCO-Detection/faster_rcnn_R_50_FPN_3x.yaml")
    if not args.list and not args.output:
        parser.error(f"--output DIR is required, e.g. --output {DEFAULT_OUTPUT_DIR}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Evaluate the models and write the report; returns 1 when an evaluation failed, 2 for a
    bad argument, else 0."""
    quiet_third_party_warnings()  # each evaluation's train_net.py quiets its own processes
    args = parse_args(argv)
    if args.list:
        for name in zoo_resnet_models():
            ours = ZOO_CONFIGS.get(name)
            print(f"{name}  ({'configs/' + ours if ours else 'the zoo YAML, our builder'})")
        return 0
    # The report's progress over the runs (a line every 5 s with an ETA) on stderr.
    logging.basicConfig(format="%(message)s")
    logging.getLogger("backbones").setLevel(logging.INFO)
    train_net = display_path(TRAIN_NET)
    try:
        result = run_zoo_eval(
            args.names,
            args.output,
            num_gpus=args.num_gpus,
            datasets=args.dataset,
            opts=args.opts,
            train_net=train_net,
        )
    except (ZooNameError, FileNotFoundError, ValueError) as e:
        print(f"zoo_eval.py: error: {e}", file=sys.stderr)
        return 2
    return 1 if result.failed else 0


if __name__ == "__main__":
    sys.exit(main())
