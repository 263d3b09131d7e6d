#!/usr/bin/env python3
"""Train or evaluate an R-CNN with our ResNet-FPN backbones: Detectron2's ``train_net.py`` CLI.

Runs on GPUs or on CPU (``MODEL.DEVICE cpu``, the default without CUDA; ``--num-gpus N`` then
starts N CPU processes), with the processes started here, by torchrun or by SLURM's srun
(docs/training-at-scale.md). A mistake (a config file, a key, the data, the weights, the
processes) ends with one ``error:`` line and exit status 2 or 1; ``--debug`` shows the
traceback (docs/troubleshooting.md). Examples::

    tools/train_net.py --config-file configs/frcnn_r50.yaml --num-gpus 8
    torchrun --nproc_per_node 8 tools/train_net.py --config-file configs/frcnn_r50.yaml
    tools/train_net.py --config-file cfg.yaml --resume                     # continue a training
    tools/train_net.py --config-file cfg.yaml --eval-only MODEL.WEIGHTS out/model_final.pth
    tools/train_net.py --config-file cfg.yaml --dataset my_train train.json images/ \
        --dataset my_val val.json images/ DATASETS.TRAIN '("my_train",)' DATASETS.TEST '("my_val",)'
"""

from __future__ import annotations

# First: importing backbones hides Detectron2's import-time notices; main() hides the rest.
from backbones.quiet import quiet_third_party_warnings

# isort: split

import argparse
import logging
from typing import Any

from detectron2.config import CfgNode
from detectron2.evaluation import verify_results
from detectron2.utils import comm

from backbones import BackbonesCheckpointer, Trainer, load_cfg
from backbones.engine import setup
from backbones.engine.cli import (
    check_datasets,
    check_devices,
    check_weights,
    describe_launch,
    launch_tool,
    parse_training_args,
    plan_launch_from_args,
    training_batch,
    user_errors,
)
from backbones.engine.config import ConfigError, lock_output_dir

logger = logging.getLogger("backbones.train_net")


def main(args: argparse.Namespace, cfg: CfgNode) -> Any:
    """Evaluate ``MODEL.WEIGHTS`` (``--eval-only``) or train with ``cfg``, composed once by the
    parent process; returns the evaluation results."""
    quiet_third_party_warnings()  # again: a started process begins with Python's filters
    with user_errors(debug=args.debug):
        cfg = setup(args, cfg)
        if comm.is_main_process():
            launcher = getattr(args, "launcher", "spawn")
            world = (comm.get_world_size(), comm.get_local_size())
            logger.info(describe_launch(cfg, launcher, *world, train=not args.eval_only))
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
    :func:`load_cfg` appends to ``BACKBONES.COCO_DATASETS``), ``--dist-timeout`` and ``--debug``.

    ``--num-gpus``, ``--num-machines``, ``--machine-rank`` and ``--dist-url`` are ``None`` when
    not given: under torchrun or SLURM the launcher decides them.
    """
    return parse_training_args("DATASETS.TRAIN/TEST", argv)


def invoke_main() -> None:
    quiet_third_party_warnings()
    args = parse_args()
    print("Command Line Args:", args)
    with user_errors(debug=args.debug):
        if not args.config_file:
            raise ConfigError(
                "--config-file is required, e.g. --config-file configs/frcnn_r50.yaml "
                "(configs/mrcnn_r18_shapes.yaml trains on a CPU without downloads)"
            )
        plan = plan_launch_from_args(args)
        # Composed once, here; the workers get it whole (datasets and input settings included).
        cfg = load_cfg(args.config_file, args.opts, datasets=args.dataset)
        # The mistakes found now, before any process starts or model is built.
        check_devices(plan, cfg.MODEL.DEVICE)
        if not args.eval_only:
            training_batch(cfg, plan.world_size)
        check_datasets(cfg, train=not args.eval_only)
        # MODEL.WEIGHTS: downloaded now if needed, read once, checked against the config.
        check_weights(cfg, config_file=args.config_file, resume=args.resume)
        if not args.eval_only and plan.rank == 0:  # one training per OUTPUT_DIR at a time
            lock_output_dir(cfg.OUTPUT_DIR)
        launch_tool(main, plan, args, (args, cfg), cfg.MODEL.DEVICE)


if __name__ == "__main__":
    invoke_main()
