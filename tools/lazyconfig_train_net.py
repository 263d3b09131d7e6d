#!/usr/bin/env python3
"""Train or evaluate a LazyConfig (``configs/lazy/*.py``): Detectron2's ``lazyconfig_train_net.py``
CLI on this project's engine.

Same flags as Detectron2's (``--config-file``, ``--resume``, ``--eval-only``, ``--num-gpus``,
``--num-machines``, ``--machine-rank``, ``--dist-url`` and ``key=value`` overrides), plus
``--dataset``, ``--dist-timeout`` and ``--debug`` as in ``tools/train_net.py``. It trains with our
checkpointer (every weight format for ``train.init_checkpoint``, atomic saves), our loop (each
iteration seeded from ``train.seed``, the divergence stop), loss curves, and our launch (GPUs or
CPU processes, torchrun, SLURM). A mistake ends with one ``error:`` line. Examples::

    tools/lazyconfig_train_net.py --config-file configs/lazy/mrcnn_r50.py --num-gpus 8
    tools/lazyconfig_train_net.py --config-file configs/lazy/mrcnn_r18_shapes.py train.max_iter=100
    tools/lazyconfig_train_net.py --config-file configs/lazy/mrcnn_r50.py --resume
    tools/lazyconfig_train_net.py --config-file configs/lazy/mrcnn_r50.py --eval-only \
        train.init_checkpoint=output/model_final.pth
"""

from __future__ import annotations

# First: importing backbones hides Detectron2's import-time notices; main() hides the rest.
from backbones.quiet import quiet_third_party_warnings

# isort: split

import argparse
import logging
from typing import Any

from detectron2.engine import default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from backbones import BackbonesCheckpointer
from backbones.data.coco import register_datasets_from_cfg
from backbones.engine import create_ddp_model
from backbones.engine.cli import (
    check_datasets,
    check_devices,
    describe_launch,
    launch_tool,
    parse_training_args,
    plan_launch_from_args,
    training_batch,
    user_errors,
)
from backbones.engine.config import ConfigError, plain_log_files

# The loading, checks and loops; tests and users' scripts reach them through this tool too.
from backbones.engine.lazy import (  # noqa: F401
    build_model,
    check_init_checkpoint,
    do_test,
    do_train,
    lazy_words,
    load_config,
    yaml_view,
)

logger = logging.getLogger("backbones.lazyconfig_train_net")


def main(args: argparse.Namespace) -> dict[str, Any]:
    """In each process: load the config (a LazyConfig may hold code, so each process loads it
    rather than receive it), then evaluate ``train.init_checkpoint`` (``--eval-only``; with
    ``--resume``, the last checkpoint of ``train.output_dir``) or train."""
    quiet_third_party_warnings()  # again: a started process begins with Python's filters
    with user_errors(debug=args.debug):
        cfg = load_config(args.config_file, args.opts, train=not args.eval_only, warn=False)
        view = yaml_view(cfg, args.dataset)
        register_datasets_from_cfg(view)  # a started process has none of the parent's
        plain_log_files(cfg.train.output_dir)  # log.txt without colour codes
        default_setup(cfg, args)
        setup_logger(cfg.train.output_dir, distributed_rank=comm.get_rank(), name="backbones")
        if comm.is_main_process():
            launcher = getattr(args, "launcher", "spawn")
            world = (comm.get_world_size(), comm.get_local_size())
            logger.info(describe_launch(view, launcher, *world, train=not args.eval_only))
        if not args.eval_only:
            return do_train(cfg, view, resume=args.resume)
        model = create_ddp_model(build_model(cfg))
        BackbonesCheckpointer(
            model, cfg.train.output_dir, cfg=view if "INPUT" in view else None
        ).resume_or_load(cfg.train.init_checkpoint, resume=args.resume)
        return do_test(cfg, model)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Detectron2's arguments (``opts``: ``key=value`` overrides) plus ``--dataset``,
    ``--dist-timeout`` and ``--debug``, as in ``tools/train_net.py``; the launch flags are
    ``None`` when not given (under torchrun or SLURM the launcher decides them)."""
    return parse_training_args("dataloader.*.dataset.names", argv)


def invoke_main(argv: list[str] | None = None) -> None:
    """Parse, check what can be checked before any process starts, launch :func:`main`."""
    quiet_third_party_warnings()
    args = parse_args(argv)
    print("Command Line Args:", args)
    with user_errors(debug=args.debug), lazy_words():
        if not args.config_file:
            raise ConfigError(
                "--config-file is required, e.g. --config-file configs/lazy/mrcnn_r50.py "
                "(configs/lazy/mrcnn_r18_shapes.py trains on a CPU without downloads)"
            )
        plan = plan_launch_from_args(args)
        cfg = load_config(args.config_file, args.opts, train=not args.eval_only)
        view = yaml_view(cfg, args.dataset)
        register_datasets_from_cfg(view)
        # The mistakes found now, before any process starts or model is built.
        check_devices(plan, cfg.train.device)
        if not args.eval_only:
            training_batch(view, plan.world_size)
        check_datasets(view, train=not args.eval_only)
        check_init_checkpoint(cfg, resume=args.resume)
        launch_tool(main, plan, args, (args,), cfg.train.device)


if __name__ == "__main__":
    invoke_main()
