"""Pretraining a ResNet as an image classifier (He et al., 2015, Sec. 3.4): SGD with momentum and
weight decay, a linear warmup then a cosine or step schedule, optional label smoothing, top-1 and
top-5 errors on the validation set; resumable, in one process, on GPUs or as CPU processes.

:func:`pretrain` runs a :class:`~.pretrain_run.PretrainRun` and leaves in its output folder
``model_final.pth`` (the ResNet for ``make_resnet(weights=...)`` and ``MODEL.WEIGHTS``, with its
architecture and input settings), ``metrics.json`` (one JSON line per evaluation),
``checkpoint.pth`` (model, optimizer, scheduler, iteration, RNG states: what ``resume``
continues from) and ``run.json`` (the settings, the iteration reached).
"""

from __future__ import annotations

import collections
import datetime
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from torch.utils.data import DataLoader, DistributedSampler

from ...engine.ddp import create_ddp_model
from ...engine.distributed import launch
from ...progress import Progress
from ...weights import atomic_write, read_file
from ..data.classification import ArrayDataset, ClassificationData, load_classification_data
from .classifier import build_classifier, write_pretrained_weights
from .run import (
    CHECKPOINT,
    METRICS,
    RUN,
    WEIGHTS,
    LRSchedule,
    PretrainResult,
    PretrainRun,
    ResumeError,
    read_metrics,
    read_result,
)

logger = logging.getLogger(__name__)


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` (shuffled, drop_last) that starts its epoch at sample ``start`` and
    yields ``(index, seed)``: the seed draws that sample's augmentation in that epoch."""

    def __init__(self, dataset: Any, *, world_size: int, rank: int, seed: int) -> None:
        super().__init__(dataset, world_size, rank, shuffle=True, seed=seed, drop_last=True)
        self.start = 0
        self._size = len(dataset)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        base = (self.seed * 100_003 + self.epoch) * self._size
        indices = list(super().__iter__())[self.start :]
        return iter([(int(i), base + int(i)) for i in indices])

    def __len__(self) -> int:
        return self.num_samples - self.start


def _loader(dataset: Any, sampler: Any, batch_size: int, workers: int, device: str) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=device.startswith("cuda"),
    )


@torch.no_grad()
def evaluate(
    model: torch.nn.Module, loader: DataLoader, device: str, *, label: str = ""
) -> dict[str, float]:
    """Loss and top-1 / top-5 errors (%) over this process's share of a validation set, summed
    over all processes. The main process logs its progress (``label`` first) every 5 s.

    Returns:
        ``{"val_loss", "val_error", "val_top5_error"}``.
    """
    was_training = model.training
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64)  # loss sum, top-1 wrong, top-5 wrong, images
    # ImageNet's 50,000 images take minutes, more between two training lines than a user waits.
    progress = Progress(
        len(loader),
        what=f"{label}validation",
        logger=logger,
        unit="batches",
        level=logging.INFO if comm.is_main_process() else logging.DEBUG,
    )
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        logits = model(images)
        hit = logits.topk(min(5, logits.shape[1]), dim=1).indices == labels[:, None]
        loss = F.cross_entropy(logits, labels, reduction="sum")
        wrong1, wrong5 = (~hit[:, 0]).sum(), (~hit.any(1)).sum()
        totals += torch.tensor([float(loss), float(wrong1), float(wrong5), len(labels)])
        progress.update()
    progress.close()
    model.train(was_training)
    totals = _all_sum(totals)
    count = max(1.0, float(totals[3]))
    return {
        "val_loss": float(totals[0]) / count,
        "val_error": 100 * float(totals[1]) / count,
        "val_top5_error": 100 * float(totals[2]) / count,
    }


def _all_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum over all processes of a CPU tensor (NCCL reduces on the GPU)."""
    if comm.get_world_size() > 1:
        gpu = torch.distributed.get_backend() == "nccl"
        tensor = tensor.to(f"cuda:{comm.get_local_rank()}" if gpu else "cpu", copy=True)
        torch.distributed.all_reduce(tensor)
    return tensor.cpu()


def _format_seconds(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(max(0.0, seconds))))


class _Trainer:
    """One process's share of a run: the model, optimizer, schedule, data and loop."""

    def __init__(self, run: PretrainRun, data: ClassificationData) -> None:
        self.run, self.data, recipe = run, data, run.recipe
        self.output = Path(run.output_dir)
        self.world, self.rank = comm.get_world_size(), comm.get_rank()
        self.device = f"cuda:{comm.get_local_rank()}" if torch.cuda.is_available() else "cpu"
        if recipe.batch_size % self.world:
            raise ValueError(
                f"batch_size={recipe.batch_size} does not split over {self.world} processes; "
                f"give a multiple of {self.world}"
            )
        self.batch = recipe.batch_size // self.world
        self.sampler = ResumableSampler(
            data.train, world_size=self.world, rank=self.rank, seed=recipe.seed
        )
        self.max_iter, per_epoch = run.length(len(data.train))
        self.epoch_iters = self.sampler.num_samples // self.batch
        if self.epoch_iters < 1:
            raise ValueError(
                f"batch_size={recipe.batch_size}: {self.batch} images per process is more than "
                f"the {self.sampler.num_samples} training images each of the {self.world} "
                "processes gets; give a smaller batch or fewer processes"
            )
        self.eval_period = recipe.eval_period or min(per_epoch, self.max_iter)
        self.checkpoint_period = recipe.checkpoint_period or self.eval_period
        self.window: collections.deque = collections.deque(
            maxlen=recipe.train_window or self.eval_period
        )
        warmup = recipe.warmup_iters
        if warmup is None:
            warmup = min(round(0.05 * self.max_iter), 5 * per_epoch)
        self.lr = recipe.lr if recipe.lr is not None else 0.1 * recipe.batch_size / 256
        self.workers = recipe.num_workers
        if self.workers is None:
            cpus = max(1, (os.cpu_count() or 1) // self.world)
            self.workers = 0 if isinstance(data.train, ArrayDataset) else min(8, cpus)

        torch.manual_seed(recipe.seed)
        self.model, self.architecture = build_classifier(
            run.depth, data.num_classes, run.resnet_options
        )
        self.model.to(self.device)
        self.ddp = create_ddp_model(self.model, broadcast_buffers=False)
        self.optimizer = torch.optim.SGD(
            self.model.parameters(),
            lr=self.lr,
            momentum=recipe.momentum,
            weight_decay=recipe.weight_decay,
        )
        self.schedule = LRSchedule(recipe, self.max_iter, warmup)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.schedule)
        val_indices = list(range(self.rank, len(data.val), self.world))
        self.val_loader = _loader(data.val, val_indices, self.batch, self.workers, self.device)
        self.iteration, self.elapsed_before, self.session_start = 0, 0.0, time.perf_counter()
        self.settings = {
            **run.signature(),
            "data_path": run.data.path,
            "data_description": data.description,
            "num_classes": data.num_classes,
            "classes": data.classes,
            "input_size": data.input_size,
            "max_iter": self.max_iter,
            "lr": self.lr,
            "warmup_iters": warmup,
            "eval_period": self.eval_period,
            "world_size": self.world,
            "architecture": self.architecture,
        }

    @property
    def elapsed(self) -> float:
        """Training seconds so far, earlier sessions included."""
        return self.elapsed_before + time.perf_counter() - self.session_start

    # -- files ---------------------------------------------------------------------------------

    def save_checkpoint(self) -> None:
        """``checkpoint.pth`` (atomic), then ``run.json`` with the iteration; main process."""
        if self.rank != 0:
            return
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "iteration": self.iteration,
            "elapsed": self.elapsed,
            "window": list(self.window),
            "signature": json.dumps(self.run.signature(), sort_keys=True),
            "rng": {
                "torch": torch.get_rng_state(),
                "numpy": np.random.get_state(),
                "python": random.getstate(),
            },
        }
        atomic_write(self.output / CHECKPOINT, lambda f: torch.save(state, f))
        self.write_settings()

    def write_settings(self) -> None:
        text = json.dumps({**self.settings, "iteration": self.iteration}, indent=1, default=repr)
        atomic_write(self.output / RUN, lambda f: f.write(text.encode() + b"\n"))

    def load_checkpoint(self) -> bool:
        """Continue from ``checkpoint.pth``; False when there is none."""
        path = self.output / CHECKPOINT
        if not path.is_file():
            logger.info(f"No {path} to resume from: starting at iteration 0")
            return False
        state = read_file(path)
        mine = json.dumps(self.run.signature(), sort_keys=True)
        if state["signature"] != mine:
            old, new = json.loads(state["signature"]), json.loads(mine)
            diff = [f"{k}: {old.get(k)} (now {new[k]})" for k in new if old.get(k) != new[k]]
            raise ResumeError(
                f"{path} was trained with other settings; resuming needs the same ones:\n  "
                + "\n  ".join(diff)
                + "\nGive the same options, or another output folder to start anew."
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.iteration, self.elapsed_before = int(state["iteration"]), float(state["elapsed"])
        self.window.extend(tuple(w) for w in state["window"])
        torch.set_rng_state(state["rng"]["torch"])
        np.random.set_state(state["rng"]["numpy"])
        random.setstate(state["rng"]["python"])
        logger.info(f"Resuming {path} at iteration {self.iteration} of {self.max_iter}")
        return True

    # -- the loop ------------------------------------------------------------------------------

    def train(self) -> None:
        log_period = self.run.recipe.log_period
        stop = min(self.max_iter, self.run.stop_at or self.max_iter)
        first, self.session_start = self.iteration, time.perf_counter()
        self.ddp.train()
        while self.iteration < stop:
            epoch, position = divmod(self.iteration, self.epoch_iters)
            self.sampler.set_epoch(epoch)
            self.sampler.start = position * self.batch
            loader = _loader(self.data.train, self.sampler, self.batch, self.workers, self.device)
            for images, labels in loader:
                if len(labels) < self.batch:
                    break  # the rest of an epoch: the next one starts
                self.step(images.to(self.device), labels.to(self.device))
                it = self.iteration
                if it % log_period == 0 or it == stop:
                    self.log_progress(it - first, time.perf_counter() - self.session_start, stop)
                if it % self.eval_period == 0 or it == self.max_iter:
                    self.evaluate()
                if it % self.checkpoint_period == 0 or it == stop:
                    self.save_checkpoint()
                if it >= stop:
                    break

    def step(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        logits = self.ddp(images)
        loss = F.cross_entropy(logits, labels, label_smoothing=self.run.recipe.label_smoothing)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(
                f"loss is {value} at iteration {self.iteration}: lower the learning rate "
                f"(lr {self.lr}) or lengthen the warmup"
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        wrong = float((logits.detach().argmax(1) != labels).sum())
        self.window.append((value * len(labels), wrong, len(labels)))
        self.iteration += 1

    def _window_sums(self, last: int | None = None) -> tuple[float, float, float]:
        """Loss, top-1 error (%) and images over the last ``last`` iterations of the window."""
        rows = list(self.window)[-last:] if last else list(self.window)
        loss, wrong, count = (sum(column) for column in zip(*rows)) if rows else (0.0, 0.0, 0.0)
        return loss, wrong, count

    def log_progress(self, done: int, seconds: float, stop: int) -> None:
        if self.rank != 0 or done == 0:
            return
        rate = done / max(seconds, 1e-9)
        remaining = stop - self.iteration
        if stop == self.max_iter:
            remaining += self.run.progress.later_iters
        loss, wrong, count = self._window_sums(self.run.recipe.log_period)
        logger.info(
            f"{self.run.progress.label}iter {self.iteration}/{self.max_iter}  "
            f"loss {loss / count:.3f}  top-1 err {100 * wrong / count:.1f}%  "
            f"lr {self.optimizer.param_groups[0]['lr']:.4g}  {rate:.2f} it/s "
            f"({rate * self.run.recipe.batch_size:.0f} img/s)  "
            f"ETA {_format_seconds(remaining / rate)}"
        )

    def evaluate(self) -> None:
        """Validation errors and the window's training loss and error: a ``metrics.json`` line
        and ``after_eval`` (main process)."""
        loss, wrong, count = _all_sum(torch.tensor(self._window_sums(), dtype=torch.float64))
        count = max(float(count), 1.0)
        metrics = evaluate(self.ddp, self.val_loader, self.device, label=self.run.progress.label)
        if self.rank != 0:
            return
        record = {
            "iter": self.iteration,
            "epoch": round(self.iteration / self.epoch_iters, 3),
            "train_loss": float(loss) / count,
            "train_error": 100 * float(wrong) / count,
            **metrics,
            "lr": self.optimizer.param_groups[0]["lr"],
            "time": round(self.elapsed, 1),
        }
        with open(self.output / METRICS, "a") as f:
            f.write(json.dumps(record) + "\n")
        logger.info(
            f"{self.run.progress.label}iter {self.iteration}: val top-1 error "
            f"{record['val_error']:.2f}%, top-5 {record['val_top5_error']:.2f}%; train top-1 "
            f"error {record['train_error']:.2f}%, loss {record['train_loss']:.3f}"
        )
        if self.run.after_eval is not None:
            try:
                self.run.after_eval(str(self.output), read_metrics(self.output / METRICS))
            except Exception:  # a plot must never stop a training
                logger.exception("after_eval failed")


def _run_process(
    run: PretrainRun,
    data: ClassificationData | None,
    process_setup: Callable[[], object] | None = None,
) -> None:
    """One process of :func:`pretrain`."""
    if process_setup is not None:
        process_setup()
    if not logging.getLogger("backbones").handlers:  # a new process; else the caller's logging
        setup_logger(name="backbones", distributed_rank=comm.get_rank())
    data = data if data is not None else load_classification_data(run.data)
    trainer = _Trainer(run, data)
    output, main = trainer.output, comm.is_main_process()
    resumed = run.resume and trainer.load_checkpoint()
    if resumed and trainer.iteration >= trainer.max_iter and (output / WEIGHTS).is_file():
        if main:
            logger.info(
                f"{run.progress.label}{output} is finished ({trainer.iteration} of "
                f"{trainer.max_iter} iterations, {output / WEIGHTS}): nothing to do"
            )
        return
    if main:
        records = read_metrics(output / METRICS, until=trainer.iteration) if resumed else []
        if not resumed and (output / CHECKPOINT).is_file():
            logger.warning(f"{output / CHECKPOINT} exists: starting anew (resume continues it)")
            (output / CHECKPOINT).unlink()
        text = "".join(json.dumps(r) + "\n" for r in records)
        atomic_write(output / METRICS, lambda f: f.write(text.encode()))
        if (output / WEIGHTS).is_file():
            (output / WEIGHTS).unlink()  # an earlier run's: this one is not finished
        trainer.write_settings()
    comm.synchronize()
    trainer.train()
    if main and trainer.iteration >= trainer.max_iter:
        lines = write_pretrained_weights(
            trainer.model,
            output / WEIGHTS,
            architecture=trainer.architecture,
            description=f"backbones.study.pretrain, ResNet-{run.depth} on {data.description}",
        )
        logger.info(
            f"{run.progress.label}wrote {output / WEIGHTS}; to fine-tune a detector from it:\n"
            + "\n".join(lines)
        )
    comm.synchronize()


def pretrain(
    run: PretrainRun,
    *,
    num_gpus: int = 1,
    dist_url: str = "auto",
    process_setup: Callable[[], object] | None = None,
) -> PretrainResult:
    """Train ``run`` in ``num_gpus`` processes (GPUs, or CPU processes joined in a gloo group on a
    machine without CUDA), from its checkpoint when ``run.resume`` and there is one.

    ``process_setup``, if given, is called first in each process (e.g. a tool's
    ``quiet_third_party_warnings``: a started process begins with Python's warning filters);
    picklable, as a module-level function is.

    The data is checked (and the synthetic set generated) here, once, before any process starts,
    and the net's options are checked by building it on the ``meta`` device.

    Returns:
        :class:`~.pretrain_run.PretrainResult` read from the output folder: the evaluations,
        the weights file (None if the run stopped before its end: ``stop_at``);
        ``already_finished`` when ``resume`` found the run finished (nothing is started).

    Raises:
        ClassificationDataError: a bad data folder (named, with the expected layout).
        BackboneOptionError: a ResNet option the depth cannot take.
        ResumeError: resuming a checkpoint of other settings.
    """
    data = load_classification_data(run.data)
    if "weights" not in run.resnet_options:
        with torch.device("meta"):
            build_classifier(run.depth, data.num_classes, run.resnet_options)
    done = read_result(run.output_dir)
    max_iter = run.length(len(data.train))[0]
    if run.resume and done.finished and done.iteration >= max_iter:
        logger.info(
            f"{run.progress.label}{run.output_dir} is finished ({done.iteration} of {max_iter} "
            f"iterations, {done.weights}): nothing to do"
        )
        done.already_finished = True
        return done
    os.makedirs(run.output_dir, exist_ok=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    launch(
        _run_process,
        num_gpus,
        dist_url=dist_url,
        args=(run, data if num_gpus == 1 else None, process_setup),
        device=device,
    )
    return read_result(run.output_dir)
