"""What a classifier pretraining adds to Detectron2's hooks and writers: the evaluator of a
validation set (loss, top-1 and top-5 errors), the evaluation hook that adds the training loss
and error of the last iterations, the writer that records every evaluation, and a progress
line for a run in a series."""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.engine import HookBase, PeriodicWriter
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from detectron2.utils.events import CommonMetricPrinter, EventWriter, get_event_storage

from .run import METRICS, evaluation_records

logger = logging.getLogger(__name__)


class ClassificationEvaluator(DatasetEvaluator):
    """Cross-entropy and top-1 / top-5 errors (%) of a classifier's logits, summed over every
    process's share of the validation set."""

    def reset(self) -> None:
        self._sums = np.zeros(4)  # loss, top-1 wrong, top-5 wrong, images

    def process(self, inputs: tuple[torch.Tensor, torch.Tensor], outputs: torch.Tensor) -> None:
        labels = inputs[1].to(outputs.device)
        hit = outputs.topk(min(5, outputs.shape[1]), dim=1).indices == labels[:, None]
        loss = F.cross_entropy(outputs.float(), labels, reduction="sum")
        wrong1, wrong5 = (~hit[:, 0]).sum(), (~hit.any(dim=1)).sum()
        self._sums += [float(loss), float(wrong1), float(wrong5), len(labels)]

    def evaluate(self) -> dict[str, float]:
        """Returns ``{"val_loss", "val_error", "val_top5_error"}``, on every process."""
        loss, wrong1, wrong5, count = np.sum(comm.all_gather(self._sums), axis=0)
        count = max(float(count), 1.0)
        return {
            "val_loss": float(loss) / count,
            "val_error": 100 * float(wrong1) / count,
            "val_top5_error": 100 * float(wrong5) / count,
        }


def evaluates(trainer: Any, period: int) -> bool:
    """Whether the iteration ``trainer`` has just run is an evaluation's: every ``period``
    iterations (0: none) and the last one, as Detectron2's ``EvalHook`` evaluates."""
    done = trainer.iter + 1
    return done == trainer.max_iter or (period > 0 and done % period == 0)


class ClassificationEval(HookBase):
    """Detectron2's ``EvalHook`` for a classifier: every ``eval_period`` iterations and after
    the last one, ``evaluate()``'s validation metrics with the training loss and top-1 error
    (%) averaged over the last ``window`` iterations of every process, and the epoch, as scalars
    of that iteration (so ``metrics.json`` records them). Register it on every process.

    The window (each iteration's loss, and the model's ``cls_error`` averaged over the
    processes) is part of the trainer's checkpoints, so a resumed run's evaluations average
    what the uninterrupted run's do.
    """

    def __init__(
        self,
        eval_period: int,
        evaluate: Callable[[], dict[str, float]],
        *,
        window: int,
        epoch_iters: float,
        label: str = "",
    ) -> None:
        self._period, self._evaluate, self._label = eval_period, evaluate, label
        self._epoch_iters = epoch_iters
        self._window: collections.deque[tuple[float, float]] = collections.deque(maxlen=window)

    def after_step(self) -> None:
        storage = self.trainer.storage
        errors = comm.gather(storage.history("cls_error").latest())
        if comm.is_main_process():
            loss = storage.history("total_loss").latest()
            self._window.append((loss, sum(errors) / len(errors)))
        if not evaluates(self.trainer, self._period):
            return
        done = self.trainer.iter + 1
        results = self._evaluate()
        if comm.is_main_process():
            loss, error = np.mean(self._window, axis=0) if self._window else (np.nan, np.nan)
            results.update(
                train_loss=float(loss),
                train_error=float(error),
                epoch=round(done / self._epoch_iters, 3),
            )
            storage.put_scalars(**results, smoothing_hint=False)
            logger.info(
                f"{self._label}iter {done}: val top-1 error {results['val_error']:.2f}%, "
                f"top-5 {results['val_top5_error']:.2f}%; train top-1 error "
                f"{results['train_error']:.2f}%, loss {results['train_loss']:.3f}"
            )
        comm.synchronize()  # the processes leave the evaluation together

    def state_dict(self) -> dict[str, Any]:
        return {"window": [list(item) for item in self._window]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._window.clear()
        self._window.extend(tuple(item) for item in state["window"])


class EvaluationWriter(PeriodicWriter):
    """Detectron2's ``PeriodicWriter`` that also writes right after each evaluation (its writers
    keep only the newest value of a scalar between two writes), then calls
    ``after_eval(output_dir, records)`` with the evaluations so far (:func:`evaluation_records`
    of ``metrics.json``); its errors are logged, never raised. Main process."""

    def __init__(
        self,
        writers: list[EventWriter],
        period: int,
        eval_period: int,
        *,
        output_dir: str,
        after_eval: Callable[[str, list[dict]], Any] | None = None,
    ) -> None:
        super().__init__(writers, period)
        self._eval_period, self._output_dir, self._after_eval = eval_period, output_dir, after_eval

    def after_step(self) -> None:
        if not evaluates(self.trainer, self._eval_period):
            super().after_step()
            return
        for writer in self._writers:
            writer.write()
        if self._after_eval is not None:
            try:
                records = evaluation_records(f"{self._output_dir}/{METRICS}")
                self._after_eval(self._output_dir, records)
            except Exception:  # a plot must never stop a training
                logger.exception("after_eval failed")


class SeriesPrinter(CommonMetricPrinter):
    """Detectron2's progress line (losses, time, learning rate, ETA) after ``label``, with an
    ETA that also covers ``later_iters`` iterations of the runs after this one in a series."""

    def __init__(self, max_iter: int, *, label: str = "", later_iters: float = 0.0) -> None:
        super().__init__(max_iter + round(later_iters))
        self._run_max_iter = max_iter
        if label:
            self.logger = _Prefixed(self.logger, {"label": label})  # type: ignore[assignment]

    def write(self) -> None:
        if get_event_storage().iter < self._run_max_iter:  # nothing after the run's end
            super().write()


class _Prefixed(logging.LoggerAdapter):
    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return f"{self.extra['label']}{msg}", kwargs
