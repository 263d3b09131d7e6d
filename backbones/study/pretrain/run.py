"""The settings of a classifier pretraining (:class:`Recipe`, :class:`PretrainRun`), the tools'
flags that give them, and what a run leaves in its output folder (:class:`PretrainResult`)."""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ...engine.hooks import load_metrics
from ...errors import check_choice
from ...weights import read_file
from ..data.classification import DataSpec

SCHEDULES = ("cosine", "step")
# The nets: make_resnet's ImageNet family, or the paper's CIFAR-10 nets (make_cifar_resnet).
FAMILIES = ("imagenet", "cifar")
# Epochs when neither max_iter nor epochs is given: torchvision's ImageNet recipe; the paper's
# CIFAR-10 schedule (64k iterations of 128 images); fewer on the synthetic set (CPU-sized).
DEFAULT_EPOCHS = {"folder": 90, "cifar10": 164, "synthetic": 30}
# What a run leaves: Detectron2's final checkpoint (the weights for detectors), its metrics,
# its config, and the checkpointer's pointer to the newest checkpoint.
WEIGHTS, METRICS, CONFIG, LAST = "model_final.pth", "metrics.json", "config.yaml", "last_checkpoint"


@dataclass
class Recipe:
    """The optimisation of a pretraining.

    Attributes:
        batch_size: images per iteration over all processes.
        lr: the base learning rate; None for ``0.1 * batch_size / 256`` (Goyal et al., 2017).
        momentum, weight_decay: SGD's (He et al., 2015: 0.9 and 1e-4).
        schedule: ``"cosine"`` (to 0 at ``max_iter``) or ``"step"`` (x ``gamma`` at each
            fraction of ``max_iter`` in ``steps``).
        warmup_iters: linear warmup from ``lr / 1000``; None for 5% of max_iter, at most 5
            epochs.
        label_smoothing: of the cross-entropy (Szegedy et al., 2016: 0.1); 0 for none.
        max_iter, epochs: the length, one of them (None, None: :data:`DEFAULT_EPOCHS`).
        eval_period: iterations between evaluations (None: one epoch); also at the end.
        checkpoint_period: iterations between checkpoints (None: ``eval_period``).
        log_period: iterations between progress lines.
        train_window: the last iterations averaged into the training loss and error of each
            evaluation (None: ``eval_period``).
        num_workers: data loader processes per training process (None: 0 for in-memory
            arrays, up to 8 for image files).
        seed: initialisation, data order and augmentation.
    """

    batch_size: int = 128
    lr: float | None = None
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    steps: tuple[float, ...] = (1 / 3, 2 / 3)
    gamma: float = 0.1
    warmup_iters: int | None = None
    label_smoothing: float = 0.0
    max_iter: int | None = None
    epochs: float | None = None
    eval_period: int | None = None
    checkpoint_period: int | None = None
    log_period: int = 20
    train_window: int | None = None
    num_workers: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        check_choice("schedule", self.schedule, SCHEDULES)
        for name in ("batch_size", "max_iter", "eval_period", "checkpoint_period", "log_period"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name}={value!r}: a positive integer or None")


@dataclass
class SeriesProgress:
    """How a run's progress lines read: a label, and for a series of runs the cost of the runs
    after this one, in iterations of this one, so that the ETA covers them all."""

    label: str = ""
    later_iters: float = 0.0


@dataclass
class PretrainRun:
    """One pretraining: the net, the data, the recipe and where it goes.

    Attributes:
        output_dir: the run's folder.
        depth, resnet_options: ``make_resnet(depth, **resnet_options)`` (over
            ``PRETRAIN_RESNET_DEFAULTS``), or for ``family="cifar"``
            ``make_cifar_resnet(depth, **resnet_options)``.
        family: ``"imagenet"`` or ``"cifar"`` (:data:`FAMILIES`).
        data: which data (:class:`~backbones.study.data.classification.DataSpec`).
        recipe: the optimisation.
        resume: continue from the newest checkpoint in ``output_dir`` if there is one.
        stop_at: stop after this iteration with a checkpoint and no weights file (to split a
            run over jobs); None runs to the end.
        progress: the progress lines' label and the series' remaining cost.
        after_eval: ``(output_dir, records)`` called on the main process after each evaluation
            (e.g. a plot); picklable for CPU processes. Its errors are logged, never raised.
    """

    output_dir: str
    depth: int
    data: DataSpec = field(default_factory=DataSpec)
    recipe: Recipe = field(default_factory=Recipe)
    resnet_options: dict[str, Any] = field(default_factory=dict)
    resume: bool = False
    stop_at: int | None = None
    progress: SeriesProgress = field(default_factory=SeriesProgress)
    after_eval: Callable[[str, list[dict]], Any] | None = None
    family: str = "imagenet"

    def __post_init__(self) -> None:
        check_choice("family", self.family, FAMILIES)

    def length(self, num_train: int) -> tuple[int, int]:
        """``(max_iter, iterations per epoch)`` on ``num_train`` training images: the recipe's
        ``max_iter``, else its ``epochs`` (else :data:`DEFAULT_EPOCHS` of the data's kind).

        Raises:
            ValueError: a batch larger than the training set.
        """
        per_epoch = num_train // self.recipe.batch_size
        if per_epoch < 1:
            raise ValueError(
                f"batch_size={self.recipe.batch_size} is larger than the {num_train} training "
                "images; give a smaller one"
            )
        epochs = self.recipe.epochs or DEFAULT_EPOCHS[self.data.kind]
        return self.recipe.max_iter or max(1, round(epochs * per_epoch)), per_epoch


@dataclass
class PretrainResult:
    """What a pretraining left: the evaluations (``metrics.json`` records), the weights file
    (None until finished), the iteration reached, the length, and whether it had finished
    before this call (a resumed finished run does nothing)."""

    output_dir: str
    records: list[dict[str, float]]
    weights: str | None
    iteration: int
    max_iter: int
    already_finished: bool = False

    @property
    def finished(self) -> bool:
        return self.weights is not None


class ResumeError(ValueError):
    """A checkpoint that the run asked to resume cannot continue (other net, data or recipe)."""


def evaluation_records(path: str | os.PathLike) -> list[dict[str, float]]:
    """The evaluations of a pretraining's ``metrics.json`` (Detectron2's JSONWriter lines, read
    by :func:`~backbones.engine.hooks.load_metrics`): the records with ``val_error``, each with
    ``iter``, the iterations done (Detectron2's 0-based ``iteration`` + 1)."""
    if not os.path.isfile(path):
        return []
    return [{**r, "iter": int(r["iteration"]) + 1} for r in load_metrics(path) if "val_error" in r]


def read_result(output_dir: str | os.PathLike) -> PretrainResult:
    """What a pretraining's folder holds now: the evaluations, the iteration of its newest
    checkpoint (``last_checkpoint``), and its length (``config.yaml``). The weights are
    ``model_final.pth`` when it is the newest checkpoint."""
    output = Path(output_dir)
    config = yaml.safe_load((output / CONFIG).read_text()) if (output / CONFIG).is_file() else {}
    last = (output / LAST).read_text().strip() if (output / LAST).is_file() else ""
    iteration, weights = 0, None
    if last == WEIGHTS and (output / WEIGHTS).is_file():
        weights = str(output / WEIGHTS)
        iteration = int(read_file(weights).get("iteration", -1)) + 1
    elif re.fullmatch(r"model_\d+\.pth", last):
        iteration = int(last[len("model_") : -len(".pth")]) + 1
    return PretrainResult(
        str(output),
        evaluation_records(output / METRICS),
        weights,
        iteration,
        int((config or {}).get("SOLVER", {}).get("MAX_ITER", 0)),
    )


# ---------------------------------------------------------------------------------------------
# Command-line flags shared by tools/pretrain_classifier.py and tools/degradation.py


def add_pretrain_arguments(
    parser: argparse.ArgumentParser, recipe: Recipe, data_defaults: DataSpec | None = None
) -> None:
    """The data, recipe and process flags of the pretraining tools, with ``recipe``'s values
    (and the synthetic set's of ``data_defaults``) as defaults; :func:`pretrain_settings` reads
    them back."""
    data = parser.add_argument_group("data (default: the embedded synthetic set)")
    source = data.add_mutually_exclusive_group()
    source.add_argument(
        "--data", metavar="DIR", help="an ImageFolder tree: DIR/train/<class>/*, DIR/val/<class>/*"
    )
    source.add_argument(
        "--cifar", metavar="DIR", help="CIFAR-10's python batches (cifar-10-batches-py)"
    )
    synthetic = data_defaults or DataSpec()
    data.add_argument(
        "--input-size",
        type=int,
        default=synthetic.input_size,
        help="network input side (default: %s)" % (synthetic.input_size or "the images' own"),
    )
    for flag, value, text in (
        ("--num-classes", synthetic.num_classes, "synthetic classes (2..100)"),
        ("--num-train", synthetic.num_train, "synthetic training images"),
        ("--num-val", synthetic.num_val, "synthetic validation images"),
        ("--image-size", synthetic.image_size, "synthetic image side, pixels"),
        ("--data-seed", synthetic.seed, "seed of the synthetic images"),
    ):
        data.add_argument(flag, type=int, default=value, help=f"{text} (default: {value})")
    data.add_argument(
        "--synthetic-root",
        help="the synthetic set's cache ($DETECTRON2_DATASETS/synthetic_classes)",
    )
    r = parser.add_argument_group("recipe")
    r.add_argument("--batch-size", type=int, default=recipe.batch_size, help="over all processes")
    lr = "0.1 x batch size / 256" if recipe.lr is None else recipe.lr
    r.add_argument("--lr", type=float, default=recipe.lr, help=f"default: {lr}")
    r.add_argument("--momentum", type=float, default=recipe.momentum)
    r.add_argument("--weight-decay", type=float, default=recipe.weight_decay)
    r.add_argument("--schedule", choices=SCHEDULES, default=recipe.schedule)
    r.add_argument(
        "--steps", type=float, nargs="+", default=list(recipe.steps), metavar="FRACTION",
        help="step schedule: fractions of training where the rate is multiplied by --gamma",
    )  # fmt: skip
    r.add_argument("--gamma", type=float, default=recipe.gamma)
    r.add_argument(
        "--warmup-iters", type=int, default=recipe.warmup_iters,
        help="linear warmup (default: 5%% of training, at most 5 epochs)",
    )  # fmt: skip
    r.add_argument("--label-smoothing", type=float, default=recipe.label_smoothing)
    length = r.add_mutually_exclusive_group()
    length.add_argument(
        "--max-iter",
        type=int,
        default=recipe.max_iter,
        help=f"default: {recipe.max_iter or 'from --epochs'}",
    )
    length.add_argument(
        "--epochs", type=float, default=recipe.epochs, help="instead of --max-iter (default: "
        f"{', '.join(f'{v} on {k}' for k, v in DEFAULT_EPOCHS.items())})",
    )  # fmt: skip
    r.add_argument("--eval-period", type=int, default=recipe.eval_period, help="iterations")
    r.add_argument("--checkpoint-period", type=int, default=recipe.checkpoint_period)
    r.add_argument("--log-period", type=int, default=recipe.log_period)
    r.add_argument(
        "--train-window", type=int, default=recipe.train_window,
        help="iterations averaged into each training error (default: --eval-period)",
    )  # fmt: skip
    r.add_argument(
        "--num-workers", type=int, default=recipe.num_workers,
        help="loader processes per training process (default: 0 for arrays, 8 for files)",
    )  # fmt: skip
    r.add_argument("--seed", type=int, default=recipe.seed)
    parser.add_argument("--output", required=True, metavar="DIR", help="output folder")
    parser.add_argument(
        "--num-gpus", type=int, default=1, help="processes: GPUs, or CPU processes without CUDA"
    )
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoint")


def pretrain_settings(args: argparse.Namespace) -> tuple[DataSpec, Recipe]:
    """The data and the recipe that :func:`add_pretrain_arguments`' flags give."""
    kind, path = "synthetic", args.synthetic_root
    if args.data:
        kind, path = "folder", args.data
    elif args.cifar:
        kind, path = "cifar10", args.cifar
    data = DataSpec(
        kind,
        path,
        num_classes=args.num_classes,
        num_train=args.num_train,
        num_val=args.num_val,
        image_size=args.image_size,
        seed=args.data_seed,
        input_size=args.input_size,
    )
    names = {f.name for f in dataclasses.fields(Recipe)}
    recipe = Recipe(**{k: v for k, v in vars(args).items() if k in names})
    recipe.steps = tuple(recipe.steps)
    if args.epochs is not None:  # --epochs given: it decides, not a default --max-iter
        recipe.max_iter = None
    return data, recipe
