"""Detectron2's ``DefaultTrainer`` with our checkpointer, an optimizer choice, evaluators by dataset
type, CPU multi-process training and loss curves."""

from __future__ import annotations

import logging
import os
import weakref
from collections.abc import Callable, Iterable
from typing import Any

import torch
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.engine import DefaultTrainer, HookBase
from detectron2.engine import hooks as d2_hooks
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
from ..config.defaults import OPTIMIZERS, TRAIN_LOADERS
from ..data.loader import ResumableBatchSampler, build_resumable_train_loader
from ..errors import DivergenceError, StoppedBySignal, check_choice
from ..evaluation import FasterCOCOEvaluator
from .ddp import create_ddp_model
from .hooks import LossCurveWriter
from .loop import ResumableAMPTrainer, ResumableSimpleTrainer
from .preemption import CheckpointOnSignal

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


class _DropKnownFailure(logging.Filter):
    # Detectron2's loop logs every exception with its traceback before re-raising it; a known
    # failure (a divergence) is said once, as a message, by the command line.
    def __init__(self, known: tuple[type[BaseException], ...]) -> None:
        super().__init__()
        self.known = known

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], self.known))


class Trainer(DefaultTrainer):
    """``DefaultTrainer`` whose model is wrapped for CPU processes too, with
    :class:`BackbonesCheckpointer` (every weight format, safe reading, atomic saves), the
    ``BACKBONES.OPTIMIZER`` choice, evaluators by ``evaluator_type`` and a loss-curve hook.

    Exact resume: with ``BACKBONES.TRAIN_LOADER`` ``resumable`` (the default) every batch and
    its augmentations are a function of (seed, iteration) (:mod:`backbones.data.loader`), and
    each iteration seeds the global RNGs from (seed, iteration, rank) (:mod:`.loop`); the seed
    (``SEED``, or a drawn one when it is negative) is saved in the checkpoints. So a training
    killed at any point and resumed with ``--resume`` ends with the weights of the
    uninterrupted run. A non-finite loss or weight stops every process with
    :class:`~backbones.errors.DivergenceError`, naming the last good checkpoint.
    """

    # Failures the command line says as one message: the loop's traceback of them is not logged.
    KNOWN_FAILURES: tuple[type[BaseException], ...] = (DivergenceError, StoppedBySignal)

    def __init__(self, cfg: CfgNode) -> None:
        # DefaultTrainer.__init__, with our create_ddp_model (DDP without device ids for a CPU
        # model) and our checkpointer built here instead of replaced afterwards.
        super(DefaultTrainer, self).__init__()
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        # A training's seed is the same in every process (each takes a slice of one batch).
        self.seed = cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed()
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = create_ddp_model(model, broadcast_buffers=False)
        loop = ResumableAMPTrainer if cfg.SOLVER.AMP.ENABLED else ResumableSimpleTrainer
        self._trainer = loop(model, data_loader, optimizer)
        self._set_seed(self.seed)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = self.build_checkpointer(cfg, model)
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    def build_checkpointer(self, cfg: CfgNode, model: nn.Module) -> BackbonesCheckpointer:
        """The checkpointer of ``model`` (wrapped for its processes) into ``cfg.OUTPUT_DIR``,
        saving this trainer's state (iteration, optimizer, hooks) with it."""
        return BackbonesCheckpointer(model, cfg.OUTPUT_DIR, cfg=cfg, trainer=weakref.proxy(self))

    @classmethod
    def build_train_loader(cls, cfg: CfgNode) -> Iterable[list[dict[str, Any]]]:
        """``BACKBONES.TRAIN_LOADER``: the resumable loader (its seed is set to the training's
        by the trainer), or Detectron2's."""
        check_choice("BACKBONES.TRAIN_LOADER", cfg.BACKBONES.TRAIN_LOADER, TRAIN_LOADERS)
        if cfg.BACKBONES.TRAIN_LOADER == "detectron2":
            return super().build_train_loader(cfg)
        return build_resumable_train_loader(cfg, seed=max(cfg.SEED, 0))

    @property
    def _batch_sampler(self) -> ResumableBatchSampler | None:
        sampler = getattr(self._trainer.data_loader, "batch_sampler", None)
        return sampler if isinstance(sampler, ResumableBatchSampler) else None

    def _set_seed(self, seed: int) -> None:
        self.seed = self._trainer.seed = seed
        if self._batch_sampler is not None:
            self._batch_sampler.seed = seed

    def resume_or_load(self, resume: bool = True) -> None:
        """Detectron2's, then the data continues at the resumed iteration (with the
        checkpoint's seed) when the loader is resumable."""
        super().resume_or_load(resume=resume)
        if self._batch_sampler is not None:
            self._batch_sampler.start = self.start_iter
        elif self.start_iter > 0:
            logger.warning(
                "Resuming at iteration %d with a loader that cannot skip to it "
                "(BACKBONES.TRAIN_LOADER %s): the data order starts anew",
                self.start_iter,
                self.cfg.BACKBONES.TRAIN_LOADER,
            )

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["seed"] = self.seed
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if "seed" in state_dict and state_dict["seed"] != self.seed:
            logger.info("Resuming with the checkpoint's seed %d", state_dict["seed"])
        self._set_seed(state_dict.get("seed", self.seed))

    def train(self) -> Any:
        """Detectron2's; a :class:`DivergenceError` leaves with the last good checkpoint named
        (the one ``--resume`` continues from) and without the loop's traceback in the log."""
        loop_logger = logging.getLogger("detectron2.engine.train_loop")
        drop = _DropKnownFailure(self.KNOWN_FAILURES)
        loop_logger.addFilter(drop)
        try:
            return super().train()
        except DivergenceError as error:
            if error.iteration < 0:
                error.iteration = self.iter
            if error.lr is None:
                error.lr = self.optimizer.param_groups[0]["lr"]
            if self.checkpointer.has_checkpoint():
                error.last_checkpoint = self.checkpointer.get_checkpoint_file()
            raise
        finally:
            loop_logger.removeFilter(drop)

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
        # Every process, right after the LR scheduler has stepped (the state the periodic
        # checkpoints hold): a SIGTERM writes a checkpoint of the iteration.
        after = next(i for i, h in enumerate(hooks) if isinstance(h, d2_hooks.LRScheduler)) + 1
        hooks.insert(after, CheckpointOnSignal())
        if comm.is_main_process():
            # Last, after the PeriodicWriter that writes metrics.json.
            hooks.append(LossCurveWriter(self.cfg.OUTPUT_DIR, self.cfg.SOLVER.CHECKPOINT_PERIOD))
        return hooks
