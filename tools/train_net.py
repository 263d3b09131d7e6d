#!/usr/bin/env python3
"""Train or evaluate an R-CNN with our ResNet-FPN backbones: Detectron2's ``train_net.py`` CLI.

Runs on GPUs or on CPU (``MODEL.DEVICE cpu``, the default without CUDA; ``--num-gpus N`` then
starts N CPU processes). Examples::

    tools/train_net.py --config-file configs/frcnn_r50.yaml --num-gpus 8
    tools/train_net.py --config-file cfg.yaml --resume                     # continue a training
    tools/train_net.py --config-file cfg.yaml --eval-only MODEL.WEIGHTS out/model_final.pth
    tools/train_net.py --config-file cfg.yaml --dataset my_train train.json images/ \
        --dataset my_val val.json images/ DATASETS.TRAIN '("my_train",)' DATASETS.TEST '("my_val",)'
"""

from __future__ import annotations

import argparse
from typing import Any

from detectron2.config import CfgNode
from detectron2.engine import default_argument_parser
from detectron2.evaluation import verify_results
from detectron2.utils import comm

from backbones import BackbonesCheckpointer, Trainer, load_cfg
from backbones.engine import launch, setup


def main(args: argparse.Namespace, cfg: CfgNode) -> Any:
    """Evaluate ``MODEL.WEIGHTS`` (``--eval-only``) or train with ``cfg``, composed once by the
    parent process; returns the evaluation results."""
    cfg = setup(args, cfg)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        BackbonesCheckpointer(model, save_dir=cfg.OUTPUT_DIR, cfg=cfg).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        results = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, results)
        return results

    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Detectron2's arguments plus ``--dataset`` (``args.dataset``: triples that
    :func:`load_cfg` appends to ``BACKBONES.COCO_DATASETS``)."""
    parser = default_argument_parser()
    parser.add_argument(
        "--dataset",
        nargs=3,
        action="append",
        default=[],
        metavar=("NAME", "JSON", "IMAGE_ROOT"),
        help="register a COCO-format dataset under NAME for DATASETS.TRAIN/TEST (repeatable)",
    )
    return parser.parse_args(argv)


def invoke_main() -> None:
    args = parse_args()
    print("Command Line Args:", args)
    # Composed once, here; the workers get it whole (datasets and input settings included).
    cfg = load_cfg(args.config_file, args.opts, datasets=args.dataset)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args, cfg),
        # The device decides between NCCL on GPUs and gloo CPU processes.
        device=cfg.MODEL.DEVICE,
    )


if __name__ == "__main__":
    invoke_main()
