"""Training and evaluation glue over Detectron2's ``DefaultTrainer`` that also runs on CPU.

What Detectron2 lacks and this module adds:

* COCO evaluation with faster-coco-eval's C++ ``COCOeval`` (the same numbers as pycocotools),
  since Detectron2's fast path needs its compiled ``detectron2._C``;
* multi-process training on CPU: ``gloo`` process groups and ``DistributedDataParallel`` with
  ``device_ids=None`` (Detectron2's ``launch`` / ``create_ddp_model`` assume CUDA);
* a ``loss_curve.png`` next to ``metrics.json``, and PNG visualisations of predictions.
"""
from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import os
import socket
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.config import CfgNode, get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.detection_utils import read_image
from detectron2.engine import DefaultTrainer, HookBase, default_setup
from detectron2.engine import defaults as d2_defaults
from detectron2.engine.defaults import create_ddp_model as d2_create_ddp_model
from detectron2.engine.launch import DEFAULT_TIMEOUT
from detectron2.engine.launch import launch as d2_launch
from detectron2.evaluation import DatasetEvaluator
from detectron2.solver.build import get_default_optimizer_params, maybe_add_gradient_clipping
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage
from detectron2.utils.logger import setup_logger
from detectron2.utils.visualizer import Visualizer
from PIL import Image
from torch import nn

from .checkpoint import BackbonesCheckpointer, apply_input_settings, config_origins
from .config import OPTIMIZERS, add_backbones_config
from .data import register_datasets_from_cfg
from .errors import check_choice
from .evaluation import COCO_BACKENDS, FasterCOCOEvaluator, coco_stats

__all__ = [
    "COCO_BACKENDS",
    "DEFAULT_TIMEOUT",
    "FasterCOCOEvaluator",
    "LossCurveWriter",
    "Trainer",
    "coco_stats",
    "create_ddp_model",
    "ddp_device_ids",
    "launch",
    "load_cfg",
    "load_metrics",
    "plot_loss_curves",
    "setup",
    "smooth",
    "visualize_predictions",
]

logger = logging.getLogger(__name__)

# Detectron2 smooths losses with the median of the last 20 values (JSONWriter, metric printer).
SMOOTHING_WINDOW = 20


# ---------------------------------------------------------------------------------------------
# Config


def load_cfg(config_file: str = "", opts: Sequence[str] | None = None) -> CfgNode:
    """Detectron2's defaults + ``BACKBONES`` + ``config_file`` + ``opts``, frozen.

    A CUDA ``MODEL.DEVICE`` (Detectron2's default) becomes ``"cpu"``, with a warning, on a
    machine without CUDA, so that every YAML also runs on CPU. The datasets of
    ``BACKBONES.COCO_DATASETS`` are registered here, in every process that loads the config.
    """
    cfg = add_backbones_config(get_cfg())
    if config_file:
        cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts or []))
    register_datasets_from_cfg(cfg)
    # Input settings follow the weights' source unless the YAML chain or opts set them.
    apply_input_settings(cfg, config_origins(config_file, list(opts or [])))
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("MODEL.DEVICE=%s but CUDA is not available: using cpu", cfg.MODEL.DEVICE)
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    return cfg


def setup(args: argparse.Namespace) -> CfgNode:
    """Config from ``args.config_file`` and ``args.opts``, then Detectron2's ``default_setup``
    (loggers, environment info, ``OUTPUT_DIR/config.yaml``, seeds) and our ``backbones`` logger."""
    cfg = load_cfg(args.config_file, args.opts)
    default_setup(cfg, args)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="backbones")
    return cfg


# ---------------------------------------------------------------------------------------------
# Multi-process training on CPU


def ddp_device_ids(model: nn.Module) -> list[int] | None:
    """``device_ids`` for ``DistributedDataParallel(model)``: this process's GPU for a CUDA
    module (Detectron2's choice), ``None`` for a CPU module (torch rejects a list there)."""
    tensor = next(itertools.chain(model.parameters(), model.buffers()), None)
    return None if tensor is None or tensor.device.type == "cpu" else [comm.get_local_rank()]


def create_ddp_model(
    model: nn.Module, *, fp16_compression: bool = False, **kwargs: Any
) -> nn.Module:
    """Detectron2's ``create_ddp_model`` that also wraps CPU modules.

    Returns ``model`` itself in a single process; otherwise a ``DistributedDataParallel``
    with ``device_ids`` from :func:`ddp_device_ids` unless given in ``kwargs``.
    """
    if comm.get_world_size() > 1:
        kwargs.setdefault("device_ids", ddp_device_ids(model))
    return d2_create_ddp_model(model, fp16_compression=fp16_compression, **kwargs)


def launch(
    main_func: Callable[..., Any],
    num_gpus_per_machine: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: str | None = None,
    args: tuple = (),
    timeout: timedelta = DEFAULT_TIMEOUT,
    *,
    device: str | None = None,
) -> None:
    """Run ``main_func(*args)`` in ``num_gpus_per_machine`` processes on this machine.

    Detectron2's ``launch`` on ``device="cuda"``. On ``device="cpu"``, ``num_gpus_per_machine``
    counts CPU processes that join a ``gloo`` process group without any CUDA call, so
    ``--num-gpus 2`` on a machine without GPU trains with 2 processes.

    Args:
        device: ``cfg.MODEL.DEVICE``; ``None`` means ``"cuda"`` if CUDA is available, else cpu.
        Others: as in ``detectron2.engine.launch``.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if torch.device(device).type != "cpu":
        d2_launch(
            main_func, num_gpus_per_machine, num_machines, machine_rank, dist_url, args, timeout
        )
        return
    world_size = num_machines * num_gpus_per_machine
    if world_size == 1:
        main_func(*args)
        return
    if dist_url == "auto":
        assert num_machines == 1, "dist_url=auto needs a single machine"
        dist_url = f"tcp://127.0.0.1:{_free_port()}"
    mp.start_processes(
        _cpu_worker,
        nprocs=num_gpus_per_machine,
        args=(main_func, world_size, num_gpus_per_machine, machine_rank, dist_url, args, timeout),
        daemon=False,
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def _cpu_worker(
    local_rank: int,
    main_func: Callable[..., Any],
    world_size: int,
    num_procs_per_machine: int,
    machine_rank: int,
    dist_url: str,
    args: tuple,
    timeout: timedelta,
) -> None:
    if "OMP_NUM_THREADS" not in os.environ:
        # Share the cores instead of oversubscribing them, as torchrun does with its
        # OMP_NUM_THREADS default (torch.distributed.run).
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // num_procs_per_machine))
    dist.init_process_group(
        backend="gloo",
        init_method=dist_url,
        world_size=world_size,
        rank=machine_rank * num_procs_per_machine + local_rank,
        timeout=timeout,
    )
    try:
        comm.create_local_process_group(num_procs_per_machine)
        comm.synchronize()
        main_func(*args)
    finally:
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------
# Loss curves


def _is_loss(name: str) -> bool:
    return name == "total_loss" or name.startswith("loss_")


def load_metrics(path: str | os.PathLike) -> list[dict[str, float]]:
    """Records of Detectron2's ``metrics.json`` (one JSON object per line), sorted by iteration.

    ``JSONWriter`` appends: a resumed run repeats the iterations after its checkpoint and a
    fresh run in the same folder restarts at 0. A record whose iteration is not larger than the
    previous one's therefore drops the earlier records from that iteration on.
    """
    records: list[dict[str, float]] = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            record = json.loads(line)
            if "iteration" not in record:
                continue
            while records and records[-1]["iteration"] >= record["iteration"]:
                records.pop()
            records.append(record)
    return records


def smooth(
    series: Sequence[tuple[int, float]], window: int = SMOOTHING_WINDOW
) -> list[tuple[int, float]]:
    """Running median of the last ``window`` values (Detectron2's smoothing of losses).

    Returns:
        ``(iteration, smoothed value)`` pairs, one per input pair.
    """
    values = [v for _, v in series]
    return [
        (it, float(np.median(values[max(0, i + 1 - window) : i + 1])))
        for i, (it, _) in enumerate(series)
    ]


def plot_loss_curves(
    path: str | os.PathLike,
    *,
    raw: Mapping[str, Sequence[tuple[int, float]]] | None = None,
    smoothed: Mapping[str, Sequence[tuple[int, float]]] | None = None,
) -> Path:
    """Plot ``total_loss`` and each ``loss_*`` against the iteration into a PNG, one panel each.

    Args:
        path: output file.
        raw: per-iteration values by loss name, as ``(iteration, value)`` pairs; thin lines.
        smoothed: smoothed values by loss name (e.g. from ``metrics.json``); bold lines.
            ``None`` means :func:`smooth` of ``raw``.

    Returns:
        ``path``.
    """
    # Figure without pyplot: Agg canvas, no global backend or figure state touched.
    from matplotlib.figure import Figure

    raw = {k: v for k, v in (raw or {}).items() if _is_loss(k) and v}
    if smoothed is None:
        smoothed = {k: smooth(v) for k, v in raw.items()}
    smoothed = {k: v for k, v in smoothed.items() if _is_loss(k) and v}
    names = sorted(set(raw) | set(smoothed), key=lambda k: (k != "total_loss", k))
    if not names:
        raise ValueError("No total_loss or loss_* values to plot")

    ncols = min(3, len(names))
    nrows = math.ceil(len(names) / ncols)
    fig = Figure(figsize=(4.5 * ncols, 3.2 * nrows), layout="constrained")
    for i, name in enumerate(names):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        if name in raw:
            ax.plot(*zip(*raw[name]), lw=0.8, alpha=0.4, color="C0", label="raw")
        if name in smoothed:
            marker = "o" if len(smoothed[name]) < 3 else None
            ax.plot(*zip(*smoothed[name]), lw=1.8, color="C1", marker=marker, label="smoothed")
        ax.set_title(name)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.savefig(path, dpi=100)
    return Path(path)


class LossCurveWriter(HookBase):
    """Write ``loss_curve.png`` into ``output_dir`` every ``period`` iterations and at the end.

    Raw values come from this run's ``EventStorage``, smoothed by :func:`smooth`; a resumed
    training adds the earlier runs' (smoothed) values from ``metrics.json``. Register it on the
    main process only, after Detectron2's ``PeriodicWriter`` so that ``metrics.json`` is current.
    """

    def __init__(self, output_dir: str, period: int = 0, filename: str = "loss_curve.png"):
        self._output_dir = output_dir
        self._period = period
        self._filename = filename

    def after_step(self) -> None:
        if self._period > 0 and (self.trainer.iter + 1) % self._period == 0:
            self.write()

    def after_train(self) -> None:
        self.write()

    def write(self) -> Path | None:
        """Plot now; returns the file, or ``None`` when there was nothing new (or it failed)."""
        try:
            return self._plot()
        except Exception:  # a plot must never stop a training
            logger.exception("Could not write %s", self._filename)
            return None

    def _plot(self) -> Path | None:
        raw = {
            name: [(it, value) for value, it in history.values()]
            for name, history in get_event_storage().histories().items()
            if _is_loss(name)
        }
        path = os.path.join(self._output_dir, self._filename)
        if not any(raw.values()) and os.path.isfile(path):
            return None  # e.g. resuming a finished training: the last plot has more to show
        smoothed = {name: smooth(series) for name, series in raw.items()}
        metrics_file = os.path.join(self._output_dir, "metrics.json")
        if os.path.isfile(metrics_file):
            # Iterations before this run (resumed training): only metrics.json has them.
            start = min((series[0][0] for series in raw.values() if series), default=math.inf)
            earlier: dict[str, list[tuple[int, float]]] = {}
            for record in load_metrics(metrics_file):
                if record["iteration"] >= start:
                    break
                for name in filter(_is_loss, record):
                    earlier.setdefault(name, []).append((record["iteration"], record[name]))
            smoothed = {
                name: earlier.get(name, []) + smoothed.get(name, [])
                for name in set(earlier) | set(smoothed)
            }
        if not any(smoothed.values()):
            return None
        return plot_loss_curves(path, raw=raw, smoothed=smoothed)


# ---------------------------------------------------------------------------------------------
# Trainer


class Trainer(DefaultTrainer):
    """``DefaultTrainer`` with COCO evaluation, CPU multi-process training and loss curves."""

    def __init__(self, cfg: CfgNode) -> None:
        # DefaultTrainer.__init__ wraps the model with the module-level create_ddp_model, which
        # passes device_ids=[local_rank] even for a CPU model; ours passes None there.
        with mock.patch.object(d2_defaults, "create_ddp_model", create_ddp_model):
            super().__init__(cfg)

    @classmethod
    def build_evaluator(
        cls, cfg: CfgNode, dataset_name: str, output_folder: str | None = None
    ) -> DatasetEvaluator:
        """COCO evaluation (bbox, and segm with ``MODEL.MASK_ON``) into
        ``OUTPUT_DIR/inference/<dataset_name>`` unless ``output_folder`` is given."""
        evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", "coco")
        if evaluator_type != "coco":
            raise ValueError(
                f"Dataset {dataset_name!r} has evaluator_type={evaluator_type!r}; this trainer "
                "evaluates 'coco' datasets only (COCO-format instances)"
            )
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        tasks = ("bbox", "segm") if cfg.MODEL.MASK_ON else ("bbox",)
        return FasterCOCOEvaluator(dataset_name, tasks=tasks, output_dir=output_folder)

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
        # DefaultTrainer.__init__ made a DetectionCheckpointer just before calling this; ours
        # (safe loading of every weight format, atomic saves) replaces it before the
        # PeriodicCheckpointer hook takes it.
        self.checkpointer = BackbonesCheckpointer(
            self.checkpointer.model,
            self.cfg.OUTPUT_DIR,
            cfg=self.cfg,
            **self.checkpointer.checkpointables,
        )
        hooks = super().build_hooks()
        if comm.is_main_process():
            # Last, after the PeriodicWriter that writes metrics.json.
            hooks.append(LossCurveWriter(self.cfg.OUTPUT_DIR, self.cfg.SOLVER.CHECKPOINT_PERIOD))
        return hooks


# ---------------------------------------------------------------------------------------------
# Visualisation


def visualize_predictions(
    cfg: CfgNode,
    weights: str,
    dataset_name: str,
    output_dir: str | os.PathLike,
    num_images: int = 8,
    score_thresh: float = 0.5,
) -> list[Path]:
    """Draw ground truth (left) and predictions (right) for the first images of a dataset.

    Boxes, masks, class names and scores are drawn by Detectron2's ``Visualizer`` with the
    dataset's metadata; images smaller than 512 pixels are upscaled for legible labels.

    Args:
        cfg: model config; its ``MODEL.WEIGHTS`` is replaced by ``weights``.
        weights: checkpoint file.
        dataset_name: a dataset registered in ``DatasetCatalog``.
        output_dir: folder for ``<image file stem>.png`` (created if needed).
        num_images: how many images, from the start of the dataset.
        score_thresh: smallest score of a drawn prediction.

    Returns:
        the written files.
    """
    # inference builds its models with this module's Trainer: imported here, not at the top.
    from .inference import Predictor, drawing_scale, with_score_threshold

    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.WEIGHTS = weights
    predictor = Predictor(with_score_threshold(cfg, score_thresh))
    metadata = MetadataCatalog.get(dataset_name)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    written = []
    for record in DatasetCatalog.get(dataset_name)[:num_images]:
        image_rgb = read_image(record["file_name"], format="RGB")
        instances = predictor(image_rgb)
        scale = drawing_scale(image_rgb)
        gt = Visualizer(image_rgb, metadata, scale=scale).draw_dataset_dict(record).get_image()
        pred = Visualizer(image_rgb, metadata, scale=scale)
        pred = pred.draw_instance_predictions(instances).get_image()
        gap = np.full((gt.shape[0], 8, 3), 255, dtype=np.uint8)
        path = output_dir / f"{Path(record['file_name']).stem}.png"
        Image.fromarray(np.concatenate([gt, gap, pred], axis=1)).save(path)
        written.append(path)
    logger.info("Wrote %d visualisations of %s into %s", len(written), dataset_name, output_dir)
    return written
