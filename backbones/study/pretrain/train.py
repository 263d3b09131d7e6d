"""Pretraining a ResNet as an image classifier (He et al., 2015, Sec. 3.4) on the detection
training framework: :class:`ClassifierTrainer` is the engine's :class:`~backbones.engine.Trainer`
(Detectron2's ``DefaultTrainer`` with our checkpointer, the resumable loop seeded per
iteration, the divergence stop on every process) training a :class:`~.classifier.Classifier`
that returns a loss dict, with Detectron2's LR scheduler, periodic checkpointer and writers.

:func:`pretrain` runs a :class:`~.run.PretrainRun` in one process or several (GPUs, or CPU
processes) and leaves in its output folder ``model_final.pth`` (the last checkpoint: the ResNet for
``make_resnet(weights=...)`` and ``MODEL.WEIGHTS``, with its architecture and input settings),
``metrics.json`` (Detectron2's, the evaluations among its lines), the checkpoints a resumed run
continues from (``model_XXXXXXX.pth``, ``last_checkpoint``) and ``config.yaml``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from detectron2.data.samplers import InferenceSampler
from detectron2.engine import HookBase, hooks
from detectron2.evaluation import inference_on_dataset
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng
from detectron2.utils.events import EventWriter, JSONWriter, TensorboardXWriter
from detectron2.utils.logger import setup_logger
from torch import nn
from torch.utils.data import DataLoader

from ...checkpoint import BackbonesCheckpointer
from ...data.loader import ResumableBatchSampler
from ...engine import Trainer, launch
from ...engine.cli import describe_error, user_errors
from ...errors import BackboneOptionError
from ...weights import read_weights
from ...weights.convert import config_lines
from ..data.classification import (
    ClassificationData,
    ClassificationDataError,
    load_classification_data,
)
from .cifar import CLASSIFIER_BUILDERS, family_option_names
from .classifier import parse_resnet_options
from .config import check_resumable, classifier_cfg, data_spec, write_config
from .hooks import ClassificationEval, ClassificationEvaluator, EvaluationWriter, SeriesPrinter
from .run import (
    LAST,
    METRICS,
    WEIGHTS,
    PretrainResult,
    PretrainRun,
    ResumeError,
    SeriesProgress,
    read_result,
)

logger = logging.getLogger(__name__)

# The mistakes of a pretraining's options and data: one error line, exit status 2.
USAGE_ERRORS = (BackboneOptionError, ClassificationDataError, ResumeError)
# The single checkpoint of the pretraining tools before they ran on the engine's Trainer.
EARLIER_FORMAT = "checkpoint.pth"
# Periodic checkpoints kept (the final one besides): the newest, and one before it in case the
# newest is damaged (the checkpointer resumes past it).
CHECKPOINTS_KEPT = 2


class ClassifierTrainer(Trainer):
    """The engine's :class:`~backbones.engine.Trainer` for a classifier pretraining.

    What differs from a detection training is the model (``CLASSIFIER.*``:
    :func:`~.classifier.build_classifier`), the data (``CLASSIFIER.DATA``, loaded once: every
    global batch a function of (seed, iteration) through the same
    :class:`~backbones.data.loader.ResumableBatchSampler`, each image's augmentation drawn from
    its sample seed), the evaluation (:class:`~.hooks.ClassificationEval` with the training
    error of the last iterations) and the writers (:class:`~.hooks.EvaluationWriter`, a
    progress line labelled for a series). The checkpoints store the ResNet's architecture and
    the input settings, so each one, ``model_final.pth`` included, is a weights file.

    Args:
        cfg: from :func:`~.config.classifier_cfg`.
        data: the data of ``cfg.CLASSIFIER.DATA`` if already loaded.
        stop_at: leave after this iteration with a checkpoint (a run split over jobs).
        series: the progress lines' label and the cost of the runs after this one.
        after_eval: ``(output_dir, evaluation records)`` after each evaluation (main process).
    """

    # An unreadable image is said as one message too.
    KNOWN_FAILURES = Trainer.KNOWN_FAILURES + (ClassificationDataError,)

    def __init__(
        self,
        cfg: Any,
        *,
        data: ClassificationData | None = None,
        stop_at: int | None = None,
        series: SeriesProgress | None = None,
        after_eval: Callable[[str, list[dict]], Any] | None = None,
    ) -> None:
        self.data = data if data is not None else load_classification_data(data_spec(cfg))
        self.stop_at, self.series = stop_at, series or SeriesProgress()
        self.after_eval = after_eval
        super().__init__(cfg)

    @classmethod
    def build_model(cls, cfg: Any) -> nn.Module:
        """The :class:`~.classifier.Classifier` of ``CLASSIFIER.*``, normalising its inputs with
        ``MODEL.PIXEL_MEAN`` / ``PIXEL_STD``, on ``MODEL.DEVICE``."""
        c = cfg.CLASSIFIER
        options = parse_resnet_options(c.RESNET_OPTIONS, family_option_names(c.FAMILY))
        model, _ = CLASSIFIER_BUILDERS[c.FAMILY](
            c.DEPTH,
            c.NUM_CLASSES,
            options,
            label_smoothing=c.LABEL_SMOOTHING,
            pixel_mean=cfg.MODEL.PIXEL_MEAN,
            pixel_std=cfg.MODEL.PIXEL_STD,
        )
        given = "".join(f", {k}={v!r}" for k, v in options.items())
        logger.info(
            f"Classifier: {'CIFAR ' if c.FAMILY == 'cifar' else ''}ResNet-{c.DEPTH}{given}, "
            f"{c.NUM_CLASSES} classes, "
            f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters"
        )
        return model.to(torch.device(cfg.MODEL.DEVICE))

    def build_checkpointer(self, cfg: Any, model: nn.Module) -> BackbonesCheckpointer:
        architecture = getattr(model, "module", model).architecture
        return BackbonesCheckpointer(
            model,
            cfg.OUTPUT_DIR,
            cfg=cfg,
            metadata={"architecture": architecture},
            trainer=weakref.proxy(self),
        )

    def build_train_loader(self, cfg: Any) -> DataLoader:  # type: ignore[override]
        """This process's share of each global batch, ``(images, labels)``; the trainer sets
        the sampler's ``seed`` and ``start``."""
        sampler = ResumableBatchSampler(
            [0] * len(self.data.train),  # one group: any images make a batch
            total_batch_size=cfg.SOLVER.IMS_PER_BATCH,
            seed=max(cfg.SEED, 0),
            rank=comm.get_rank(),
            world_size=comm.get_world_size(),
        )
        return DataLoader(
            self.data.train,
            batch_sampler=sampler,
            num_workers=cfg.DATALOADER.NUM_WORKERS,
            pin_memory=cfg.MODEL.DEVICE.startswith("cuda"),
            # Its own generator: starting workers then draws nothing from the global torch RNG.
            generator=torch.Generator().manual_seed(max(cfg.SEED, 0)),
        )

    def evaluate(self) -> dict[str, float]:
        """Loss, top-1 and top-5 errors (%) on the validation set, each process taking a share
        (Detectron2's ``inference_on_dataset``, with its progress lines and ETA)."""
        loader = DataLoader(
            self.data.val,
            batch_size=self.cfg.SOLVER.IMS_PER_BATCH // comm.get_world_size(),
            sampler=InferenceSampler(len(self.data.val)),
            num_workers=self.cfg.DATALOADER.NUM_WORKERS,
            pin_memory=self.cfg.MODEL.DEVICE.startswith("cuda"),
        )
        return inference_on_dataset(self.model, loader, ClassificationEvaluator())

    def build_hooks(self) -> list[HookBase]:
        """Detectron2's timer and LR scheduler, the evaluation, then on the main process the
        writers and Detectron2's periodic checkpointer: a checkpoint comes after the metrics of
        its iteration are written, so a run killed after it has every evaluation on file."""
        cfg = self.cfg
        built: list[HookBase] = [
            hooks.IterationTimer(),
            hooks.LRScheduler(),
            ClassificationEval(
                cfg.TEST.EVAL_PERIOD,
                self.evaluate,
                window=cfg.CLASSIFIER.TRAIN_WINDOW or cfg.TEST.EVAL_PERIOD or cfg.SOLVER.MAX_ITER,
                epoch_iters=len(self.data.train) / cfg.SOLVER.IMS_PER_BATCH,
                label=self.series.label,
            ),
        ]
        if comm.is_main_process():
            writer = EvaluationWriter(
                self.build_writers(),
                cfg.CLASSIFIER.LOG_PERIOD,
                cfg.TEST.EVAL_PERIOD,
                output_dir=cfg.OUTPUT_DIR,
                after_eval=self.after_eval,
            )
            period = cfg.SOLVER.CHECKPOINT_PERIOD
            checkpointer = hooks.PeriodicCheckpointer(
                self.checkpointer, period, max_to_keep=CHECKPOINTS_KEPT
            )
            built += [writer, checkpointer]
        return built

    def build_writers(self) -> list[EventWriter]:
        output = self.cfg.OUTPUT_DIR
        return [
            SeriesPrinter(
                self.max_iter, label=self.series.label, later_iters=self.series.later_iters
            ),
            JSONWriter(os.path.join(output, METRICS)),
            TensorboardXWriter(output),
        ]

    def train(self) -> Any:
        """Detectron2's training; with ``stop_at``, its loop ends there."""
        if self.stop_at is None or self.stop_at >= self.max_iter:
            return super().train()
        length, self.max_iter = self.max_iter, self.stop_at  # the loop's end
        try:
            return super().train()
        finally:
            self.max_iter = length

    def before_train(self) -> None:
        # The loop may end at stop_at; the hooks (schedule, evaluations, final checkpoint) and
        # the state the checkpoints save follow the whole run.
        self.max_iter = self.cfg.SOLVER.MAX_ITER
        super().before_train()

    def after_step(self) -> None:
        super().after_step()
        done = self.iter + 1
        if done == self.stop_at and done % self.cfg.SOLVER.CHECKPOINT_PERIOD:
            if comm.is_main_process():  # as the periodic checkpointer saves
                self.checkpointer.save(f"model_{self.iter:07d}", iteration=self.iter)


def _run_process(
    cfg: Any,
    run: PretrainRun,
    data: ClassificationData | None,
    process_setup: Callable[[], object] | None,
) -> None:
    """One process of :func:`pretrain`."""
    if process_setup is not None:
        process_setup()
    rank = comm.get_rank()
    for name in ("detectron2", "backbones"):
        if not logging.getLogger(name).handlers:  # a new process; else the caller's logging
            setup_logger(name=name, distributed_rank=rank)
    seed_all_rng(cfg.SEED)  # the initialisation; DDP gives every process rank 0's
    # Processes that stop together (a divergence) say why once, from the main process.
    many = comm.get_world_size() > 1
    with user_errors() if many else contextlib.nullcontext():
        trainer = ClassifierTrainer(
            cfg, data=data, stop_at=run.stop_at, series=run.progress, after_eval=run.after_eval
        )
        trainer.resume_or_load(resume=run.resume)
        trainer.train()
    final = Path(cfg.OUTPUT_DIR) / WEIGHTS
    # A CIFAR net is no detector backbone: no config lines for it.
    if (
        comm.is_main_process()
        and cfg.CLASSIFIER.FAMILY == "imagenet"
        and trainer.iter >= trainer.max_iter
        and final.is_file()
    ):
        lines = config_lines(read_weights(final), str(final))
        logger.info(
            f"{run.progress.label}wrote {final}; to fine-tune a detector from it:\n"
            + "\n".join(lines)
        )


def pretrain(
    run: PretrainRun,
    *,
    num_gpus: int = 1,
    dist_url: str = "auto",
    process_setup: Callable[[], object] | None = None,
) -> PretrainResult:
    """Train ``run`` in ``num_gpus`` processes (GPUs, or CPU processes joined in a gloo group on a
    machine without CUDA), from its newest checkpoint when ``run.resume`` and there is one.

    The data is checked (and the synthetic set generated), the net's options and a resumed
    checkpoint's settings are checked here, once, before any process starts. Without
    ``resume``, the checkpoints and metrics of an earlier run in ``run.output_dir`` are
    removed first.

    Args:
        process_setup: called first in each process (e.g. a tool's
            ``quiet_third_party_warnings``: a started process begins with Python's warning
            filters); picklable, as a module-level function is.

    Returns:
        :class:`~.run.PretrainResult` read from the output folder: the evaluations, the weights
        file (None if the run stopped before its end: ``stop_at``); ``already_finished`` when
        ``resume`` found the run finished (nothing is started).

    Raises:
        ClassificationDataError: a bad data folder (named, with the expected layout).
        BackboneOptionError: a ResNet option the depth cannot take.
        ResumeError: resuming a checkpoint of other settings, listing them.
        DivergenceError: a loss or weights no longer finite (in one process; several processes
            say it on stderr and exit).
    """
    data = load_classification_data(run.data)
    cfg = classifier_cfg(run, data, world_size=num_gpus)
    output = Path(run.output_dir)
    if run.resume:
        done = read_result(output)
        if done.finished and done.iteration >= cfg.SOLVER.MAX_ITER:
            logger.info(
                f"{run.progress.label}{output} is finished ({done.iteration} of "
                f"{cfg.SOLVER.MAX_ITER} iterations, {done.weights}): nothing to do"
            )
            done.already_finished = True
            return done
        if (output / LAST).is_file():  # a checkpoint to continue: the same settings
            check_resumable(cfg)
        elif (output / EARLIER_FORMAT).is_file():
            raise ResumeError(
                f"{output / EARLIER_FORMAT} is a checkpoint of the earlier pretraining format "
                "(before 2026-12-07), which this version cannot resume; start anew without "
                "--resume, or in another output folder to keep it"
            )
    else:
        _start_anew(output)
    output.mkdir(parents=True, exist_ok=True)
    write_config(cfg)
    launch(
        _run_process,
        num_gpus,
        dist_url=dist_url,
        args=(cfg, run, data if num_gpus == 1 else None, process_setup),
        device=cfg.MODEL.DEVICE,
    )
    return read_result(output)


def _start_anew(output: Path) -> None:
    """Remove an earlier run's checkpoints and metrics from ``output`` (a new run's would mix
    with them)."""
    stale = sorted(output.glob("model_*.pth")) + [output / LAST, output / METRICS]
    stale = [path for path in stale if path.is_file()]
    if stale:
        logger.warning(
            f"{output} holds an earlier run ({', '.join(p.name for p in stale[:3])}"
            f"{'...' if len(stale) > 3 else ''}): starting anew (--resume continues it)"
        )
        for path in stale:
            path.unlink()


def tool_exit_status(error: Exception) -> int:
    """The exit status of a pretraining tool that stopped on ``error``, after one ``error:``
    line on stderr for a known mistake (the options, the data, a resume; the engine's: a
    divergence, processes that stopped and said why themselves). Anything else is raised again,
    with its traceback."""
    if isinstance(error, USAGE_ERRORS):
        message, status = str(error), 2
    else:
        known = describe_error(error)
        if known is None:
            raise error
        message, status = known
    if message:
        print(f"error: {message}", file=sys.stderr)
    return status
