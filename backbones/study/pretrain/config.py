"""The config of a classifier pretraining: Detectron2's keys where it has one (``SOLVER.*``,
``TEST.EVAL_PERIOD``, ``DATALOADER.NUM_WORKERS``, ``SEED``, the input settings), the
``CLASSIFIER`` node for the rest, the translation of a :class:`~.run.PretrainRun` (the tools'
flags) into them, and the check that a resumed run keeps its checkpoint's settings."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import yaml
from detectron2.config import CfgNode, get_cfg

from ...config import add_backbones_config
from ...weights import atomic_write
from ..data.classification import CHANNEL_ORDER, ArrayDataset, ClassificationData, DataSpec
from .cifar import CLASSIFIER_BUILDERS
from .classifier import PIXEL_MEAN, PIXEL_STD
from .run import CONFIG, PretrainRun, ResumeError

# Recipe.schedule -> SOLVER.LR_SCHEDULER_NAME: Detectron2's schedules (fvcore's cosine and
# multi-step schedules with Detectron2's WarmupParamScheduler and LRMultiplier).
SCHEDULERS = {"cosine": "WarmupCosineLR", "step": "WarmupMultiStepLR"}
# Keys a resumed run may change: the length, the periods, the workers, where things are.
RESUMABLE_KEYS = (
    "SOLVER.MAX_ITER",
    "SOLVER.CHECKPOINT_PERIOD",
    "TEST.EVAL_PERIOD",
    "CLASSIFIER.LOG_PERIOD",
    "CLASSIFIER.TRAIN_WINDOW",
    "DATALOADER.NUM_WORKERS",
    "CLASSIFIER.DATA.PATH",
    "OUTPUT_DIR",
    "MODEL.DEVICE",
)
# Keys that follow SOLVER.MAX_ITER (the step iterations, the default warmup): compared only
# between runs of the same length.
LENGTH_KEYS = ("SOLVER.STEPS", "SOLVER.WARMUP_ITERS")
# What the user gave for a key, as a resume refusal names it.
FLAGS = {
    "CLASSIFIER.FAMILY": "--family",
    "CLASSIFIER.DEPTH": "--depth",
    "CLASSIFIER.RESNET_OPTIONS": "resnet_options, the KEY VALUE pairs",
    "CLASSIFIER.NUM_CLASSES": "the data's classes",
    "CLASSIFIER.LABEL_SMOOTHING": "--label-smoothing",
    "CLASSIFIER.DATA.KIND": "--data / --cifar",
    "CLASSIFIER.DATA.NUM_CLASSES": "--num-classes",
    "CLASSIFIER.DATA.NUM_TRAIN": "--num-train",
    "CLASSIFIER.DATA.NUM_VAL": "--num-val",
    "CLASSIFIER.DATA.IMAGE_SIZE": "--image-size",
    "CLASSIFIER.DATA.SEED": "--data-seed",
    "CLASSIFIER.DATA.INPUT_SIZE": "--input-size",
    "SOLVER.IMS_PER_BATCH": "--batch-size",
    "SOLVER.BASE_LR": "--lr",
    "SOLVER.MOMENTUM": "--momentum",
    "SOLVER.WEIGHT_DECAY": "--weight-decay",
    "SOLVER.WEIGHT_DECAY_NORM": "--weight-decay",
    "SOLVER.LR_SCHEDULER_NAME": "--schedule",
    "SOLVER.STEPS": "--steps",
    "SOLVER.GAMMA": "--gamma",
    "SOLVER.WARMUP_ITERS": "--warmup-iters",
    "SEED": "--seed",
}


def add_classifier_config(cfg: CfgNode) -> CfgNode:
    """Add the ``CLASSIFIER`` node to ``cfg`` (in place): what a pretraining needs that
    Detectron2 has no key for. Returns ``cfg``."""
    data = DataSpec()
    cfg.CLASSIFIER = CfgNode()
    # Options: "imagenet" (make_resnet's family), "cifar" (the paper's CIFAR-10 nets,
    # make_cifar_resnet: DEPTH 20/32/44/56/110).
    cfg.CLASSIFIER.FAMILY = "imagenet"
    # The net: make_resnet(DEPTH, **PRETRAIN_RESNET_DEFAULTS, **options), the options as
    # KEY VALUE strings whose values are Python literals, e.g. ["num_groups", "32"].
    cfg.CLASSIFIER.DEPTH = 50
    cfg.CLASSIFIER.RESNET_OPTIONS = []
    # The outputs of the linear layer: the number of classes of the data.
    cfg.CLASSIFIER.NUM_CLASSES = 1000
    # Label smoothing of the training loss (Szegedy et al., 2016: 0.1); 0 for none.
    cfg.CLASSIFIER.LABEL_SMOOTHING = 0.0
    # Iterations averaged into the training loss and error of each evaluation (0: the
    # evaluation period).
    cfg.CLASSIFIER.TRAIN_WINDOW = 0
    # Iterations between progress lines (and metrics.json lines besides the evaluations').
    cfg.CLASSIFIER.LOG_PERIOD = 20
    cfg.CLASSIFIER.DATA = CfgNode()
    # Options: "synthetic" (the embedded set, generated on first use), "folder" (an ImageFolder
    # tree at PATH), "cifar10" (CIFAR-10's python batches at PATH).
    cfg.CLASSIFIER.DATA.KIND = data.kind
    # The data's folder; for the synthetic set its cache ("": $DETECTRON2_DATASETS/...).
    cfg.CLASSIFIER.DATA.PATH = ""
    # The synthetic set: classes (2..100), training and validation images, side, seed.
    cfg.CLASSIFIER.DATA.NUM_CLASSES = data.num_classes
    cfg.CLASSIFIER.DATA.NUM_TRAIN = data.num_train
    cfg.CLASSIFIER.DATA.NUM_VAL = data.num_val
    cfg.CLASSIFIER.DATA.IMAGE_SIZE = data.image_size
    cfg.CLASSIFIER.DATA.SEED = data.seed
    # The network's input side; 0: the images' own (synthetic, CIFAR-10), 224 for folders.
    cfg.CLASSIFIER.DATA.INPUT_SIZE = 0
    return cfg


def data_spec(cfg: CfgNode) -> DataSpec:
    """The data ``cfg.CLASSIFIER.DATA`` names."""
    d = cfg.CLASSIFIER.DATA
    return DataSpec(
        d.KIND,
        d.PATH or None,
        num_classes=d.NUM_CLASSES,
        num_train=d.NUM_TRAIN,
        num_val=d.NUM_VAL,
        image_size=d.IMAGE_SIZE,
        seed=d.SEED,
        input_size=d.INPUT_SIZE or None,
    )


def classifier_cfg(run: PretrainRun, data: ClassificationData, *, world_size: int = 1) -> CfgNode:
    """The frozen config of ``run`` on ``data`` in ``world_size`` processes: the recipe's
    defaults resolved (the length, the learning rate, the warmup, the periods, the workers),
    and the input settings its checkpoints record (BGR, :data:`PIXEL_MEAN`, :data:`PIXEL_STD`,
    the stride placement of its ResNet). The net is built on the ``meta`` device to check its
    options (on the CPU when they load weights).

    Raises:
        ValueError: a batch that does not split over the processes, or larger than the data.
        BackboneOptionError: a ResNet option the depth cannot take.
    """
    recipe = run.recipe
    if recipe.batch_size % world_size:
        raise ValueError(
            f"batch_size={recipe.batch_size} does not split over {world_size} processes; "
            f"give a multiple of {world_size}"
        )
    max_iter, per_epoch = run.length(len(data.train))
    eval_period = recipe.eval_period or min(per_epoch, max_iter)
    workers = recipe.num_workers
    if workers is None:
        cpus = max(1, (os.cpu_count() or 1) // world_size)
        workers = 0 if isinstance(data.train, ArrayDataset) else min(8, cpus)
    with torch.device("cpu" if "weights" in run.resnet_options else "meta"):
        build = CLASSIFIER_BUILDERS[run.family]
        _, architecture = build(run.depth, data.num_classes, run.resnet_options)

    cfg = add_classifier_config(add_backbones_config(get_cfg()))
    cfg.OUTPUT_DIR = run.output_dir
    cfg.SEED = recipe.seed
    cfg.MODEL.DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
    cfg.INPUT.FORMAT = CHANNEL_ORDER
    cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD = list(PIXEL_MEAN), list(PIXEL_STD)
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = bool(architecture.get("stride_in_1x1", False))
    cfg.DATASETS.TRAIN = cfg.DATASETS.TEST = ()  # the data is CLASSIFIER.DATA's
    cfg.BACKBONES.OPTIMIZER = "SGD"
    solver = cfg.SOLVER
    solver.IMS_PER_BATCH = recipe.batch_size
    # Goyal et al. (2017): 0.1 for a batch of 256, linear in the batch.
    solver.BASE_LR = recipe.lr if recipe.lr is not None else 0.1 * recipe.batch_size / 256
    solver.MOMENTUM = recipe.momentum
    # Decay on every parameter, norms included (torchvision's recipe; Detectron2's default
    # exempts norms).
    solver.WEIGHT_DECAY = solver.WEIGHT_DECAY_NORM = recipe.weight_decay
    solver.LR_SCHEDULER_NAME = SCHEDULERS[recipe.schedule]
    # fvcore's multi-step schedule takes increasing iterations inside the run.
    steps = {round(fraction * max_iter) for fraction in recipe.steps}
    solver.STEPS = tuple(sorted(step for step in steps if 0 < step < max_iter))
    solver.GAMMA = recipe.gamma
    # A linear warmup from BASE_LR / 1000 (Detectron2's WARMUP_FACTOR): 5% of the run, at
    # most 5 epochs (Goyal et al., 2017) unless given.
    warmup = recipe.warmup_iters
    if warmup is None:
        warmup = min(round(0.05 * max_iter), 5 * per_epoch)
    solver.WARMUP_ITERS = warmup
    solver.MAX_ITER = max_iter
    solver.CHECKPOINT_PERIOD = recipe.checkpoint_period or eval_period
    cfg.TEST.EVAL_PERIOD = eval_period
    cfg.DATALOADER.NUM_WORKERS = workers
    c = cfg.CLASSIFIER
    c.FAMILY = run.family
    c.DEPTH = run.depth
    c.RESNET_OPTIONS = [text for k, v in run.resnet_options.items() for text in (k, repr(v))]
    c.NUM_CLASSES = data.num_classes
    c.LABEL_SMOOTHING = recipe.label_smoothing
    c.TRAIN_WINDOW = recipe.train_window or eval_period
    c.LOG_PERIOD = recipe.log_period
    spec = run.data
    c.DATA.KIND, c.DATA.PATH = spec.kind, spec.path or ""
    c.DATA.NUM_CLASSES, c.DATA.NUM_TRAIN, c.DATA.NUM_VAL = (
        spec.num_classes,
        spec.num_train,
        spec.num_val,
    )
    c.DATA.IMAGE_SIZE, c.DATA.SEED, c.DATA.INPUT_SIZE = spec.image_size, spec.seed, data.input_size
    cfg.freeze()
    return cfg


def write_config(cfg: CfgNode) -> Path:
    """``OUTPUT_DIR/config.yaml`` (atomically), as Detectron2's ``default_setup`` writes it."""
    path = Path(cfg.OUTPUT_DIR) / CONFIG
    atomic_write(path, lambda f: f.write(cfg.dump().encode()))
    return path


def _flat(node: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in node.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = list(value) if isinstance(value, tuple) else value
    return flat


def check_resumable(cfg: CfgNode) -> None:
    """Refuse to resume the checkpoints of ``cfg.OUTPUT_DIR`` with other settings than theirs,
    which its ``config.yaml`` holds (written at each start; a start with other settings either
    resumes, and is refused here, or starts anew and removes the checkpoints).

    Raises:
        ResumeError: listing each key that differs (besides :data:`RESUMABLE_KEYS`) with the
            flag that sets it, its value then and now.
    """
    path = Path(cfg.OUTPUT_DIR) / CONFIG
    if not path.is_file():
        return
    old, new = _flat(yaml.safe_load(path.read_text()) or {}), _flat(yaml.safe_load(cfg.dump()))
    skip = set(RESUMABLE_KEYS)
    if old.get("SOLVER.MAX_ITER") != new["SOLVER.MAX_ITER"]:
        skip |= set(LENGTH_KEYS)
    differ = [k for k in new if k in old and k not in skip and old[k] != new[k]]
    if differ:
        lines = [f"{k} ({FLAGS.get(k, 'the config')}): {old[k]} (now {new[k]})" for k in differ]
        raise ResumeError(
            f"{cfg.OUTPUT_DIR} was trained with other settings; resuming needs the same ones:\n  "
            + "\n  ".join(lines)
            + "\nGive the same options, or another output folder to start anew."
        )
