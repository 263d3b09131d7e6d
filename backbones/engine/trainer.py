"""Detectron2's ``DefaultTrainer`` with our checkpointer, an optimizer choice, evaluators by dataset
type, CPU multi-process training and loss curves."""

from __future__ import annotations

import logging
import os
import weakref
from collections.abc import Callable

import torch
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.engine import AMPTrainer, DefaultTrainer, HookBase, SimpleTrainer
from detectron2.evaluation import (
    DatasetEvaluator,
    LVISEvaluator,
    PascalVOCDetectionEvaluator,
    SemSegEvaluator,
)
from detectron2.solver.build import (
    get_default_optimizer_params,
    maybe_add_gradient_clipping,
)
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from torch import nn

from ..checkpoint import BackbonesCheckpointer
from ..config.defaults import OPTIMIZERS
from ..errors import check_choice
from ..evaluation import FasterCOCOEvaluator
from .distributed import create_ddp_model
from .hooks import LossCurveWriter

logger = logging.getLogger(__name__)


def _coco(cfg: CfgNode, dataset_name: str, output_folder: str) -> DatasetEvaluator:
    tasks = ("bbox", "segm") if cfg.MODEL.MASK_ON else ("bbox",)
    return FasterCOCOEvaluator(dataset_name, tasks=tasks, output_dir=output_folder)


# Evaluators by the dataset's ``evaluator_type`` metadata, as Detectron2's tools/train_net.py
# dispatches; those that need Detectron2's compiled ops or extra packages (Cityscapes, panoptic)
# are left out. A dataset without the key is evaluated as COCO.
EVALUATORS: dict[str, Callable[[CfgNode, str, str], DatasetEvaluator]] = {
    "coco": _coco,
    "lvis": lambda cfg, name, output: LVISEvaluator(name, output_dir=output),
    "pascal_voc": lambda cfg, name, output: PascalVOCDetectionEvaluator(name),
    "sem_seg": lambda cfg, name, output: SemSegEvaluator(name, output_dir=output),
}


class Trainer(DefaultTrainer):
    """``DefaultTrainer`` whose model is wrapped for CPU processes too, with
    :class:`BackbonesCheckpointer` (every weight format, safe reading, atomic saves), the
    ``BACKBONES.OPTIMIZER`` choice, evaluators by ``evaluator_type`` and a loss-curve hook."""

    def __init__(self, cfg: CfgNode) -> None:
        # DefaultTrainer.__init__, with our create_ddp_model (DDP without device ids for a CPU
        # model) and our checkpointer built here instead of replaced afterwards.
        super(DefaultTrainer, self).__init__()
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = create_ddp_model(model, broadcast_buffers=False)
        loop = AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer
        self._trainer = loop(model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = BackbonesCheckpointer(
            model, cfg.OUTPUT_DIR, cfg=cfg, trainer=weakref.proxy(self)
        )
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    @classmethod
    def build_evaluator(
        cls, cfg: CfgNode, dataset_name: str, output_folder: str | None = None
    ) -> DatasetEvaluator:
        """The evaluator of the dataset's ``evaluator_type`` (:data:`EVALUATORS`; COCO when
        unset: bbox, and segm with ``MODEL.MASK_ON``) writing into
        ``OUTPUT_DIR/inference/<dataset_name>`` unless ``output_folder`` is given.

        Raises:
            ValueError: an ``evaluator_type`` without an evaluator here, naming it.
        """
        evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", "coco")
        if evaluator_type not in EVALUATORS:
            raise ValueError(
                f"Dataset {dataset_name!r} has evaluator_type={evaluator_type!r}, which this "
                f"trainer cannot evaluate; supported: {', '.join(map(repr, EVALUATORS))}. "
                "Register the dataset with one of those, or add an entry to "
                "backbones.engine.EVALUATORS"
            )
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return EVALUATORS[evaluator_type](cfg, dataset_name, output_folder)

    @classmethod
    def build_optimizer(cls, cfg: CfgNode, model: nn.Module) -> torch.optim.Optimizer:
        """``BACKBONES.OPTIMIZER``: Detectron2's SGD, or AdamW with the same parameter groups."""
        check_choice("BACKBONES.OPTIMIZER", cfg.BACKBONES.OPTIMIZER, OPTIMIZERS)
        if cfg.BACKBONES.OPTIMIZER == "SGD":
            return super().build_optimizer(cfg, model)
        params = get_default_optimizer_params(
            model,
            base_lr=cfg.SOLVER.BASE_LR,
            weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
            bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR,
            weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS,
        )
        optimizer = torch.optim.AdamW(
            params, lr=cfg.SOLVER.BASE_LR, weight_decay=cfg.SOLVER.WEIGHT_DECAY
        )
        return maybe_add_gradient_clipping(cfg, optimizer)

    def build_hooks(self) -> list[HookBase]:
        hooks = super().build_hooks()
        if comm.is_main_process():
            # Last, after the PeriodicWriter that writes metrics.json.
            hooks.append(LossCurveWriter(self.cfg.OUTPUT_DIR, self.cfg.SOLVER.CHECKPOINT_PERIOD))
        return hooks
