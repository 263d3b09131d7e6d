"""The one composition of a config: Detectron2's defaults, ``BACKBONES``, a YAML file, ``KEY VALUE``
overrides, extra datasets, and the input settings of ``MODEL.WEIGHTS``."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterable, Sequence

import torch
from detectron2.config import CfgNode, get_cfg
from detectron2.engine import default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..config import add_backbones_config, apply_input_settings, config_origins
from ..data import register_datasets_from_cfg
from ..data.coco import check_dataset_entry

logger = logging.getLogger(__name__)


def load_cfg(
    config_file: str = "",
    opts: Sequence[str] | None = None,
    *,
    datasets: Iterable[Sequence[str]] = (),
) -> CfgNode:
    """The config of a run, frozen: Detectron2's defaults + ``BACKBONES`` + ``config_file`` +
    ``opts``, then

    * ``datasets`` (``[name, json_file, image_root]`` triples, e.g. from ``--dataset``) appended
      to ``BACKBONES.COCO_DATASETS``, and every dataset there registered in this process;
    * the input settings of ``MODEL.WEIGHTS`` for the keys the YAML chain and ``opts`` leave
      unset (``BACKBONES.INPUT_FROM_WEIGHTS``);
    * a CUDA ``MODEL.DEVICE`` (Detectron2's default) becomes ``"cpu"``, with a warning, on a
      machine without CUDA, so that every YAML also runs on CPU.

    Every tool and test composes its config here, once per process.

    Raises:
        ValueError, FileNotFoundError: a bad dataset entry (naming it) or file.
        backbones.config.InputSettingsError: a config input setting that contradicts the weights.
    """
    opts = list(opts or [])
    cfg = add_backbones_config(get_cfg())
    if config_file:
        cfg.merge_from_file(config_file)
    cfg.merge_from_list(opts)
    extra = [list(check_dataset_entry("--dataset", entry)) for entry in datasets]
    if extra:
        cfg.BACKBONES.COCO_DATASETS = [list(e) for e in cfg.BACKBONES.COCO_DATASETS] + extra
    register_datasets_from_cfg(cfg)
    # Input settings follow the weights' source unless the YAML chain or opts set them.
    apply_input_settings(cfg, config_origins(config_file, opts))
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("MODEL.DEVICE=%s but CUDA is not available: using cpu", cfg.MODEL.DEVICE)
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    return cfg


def setup(args: argparse.Namespace, cfg: CfgNode | None = None) -> CfgNode:
    """Prepare this process for ``cfg`` (composed by :func:`load_cfg` from ``args.config_file``
    and ``args.opts`` when None): register its datasets (a launched worker has none yet), then
    Detectron2's ``default_setup`` (loggers, environment info, ``OUTPUT_DIR/config.yaml``, seeds)
    and our ``backbones`` logger."""
    if cfg is None:
        cfg = load_cfg(args.config_file, args.opts)
    else:
        register_datasets_from_cfg(cfg)
    default_setup(cfg, args)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="backbones")
    return cfg
