"""Training and evaluation over Detectron2's ``DefaultTrainer``, on GPUs or CPU processes.

``config`` is the one place a config is composed (:func:`load_cfg`); ``distributed`` starts the
processes; ``hooks`` writes loss curves; ``trainer`` is the :class:`Trainer`.
"""

from .config import load_cfg, setup
from .ddp import create_ddp_model, ddp_device_ids
from .distributed import DEFAULT_TIMEOUT, launch
from .hooks import (
    SMOOTHING_WINDOW,
    LossCurveWriter,
    load_metrics,
    plot_loss_curves,
    smooth,
)
from .trainer import EVALUATORS, Trainer

__all__ = [
    "DEFAULT_TIMEOUT",
    "EVALUATORS",
    "SMOOTHING_WINDOW",
    "LossCurveWriter",
    "Trainer",
    "create_ddp_model",
    "ddp_device_ids",
    "launch",
    "load_cfg",
    "load_metrics",
    "plot_loss_curves",
    "setup",
    "smooth",
]
