"""A training stopped by a cluster scheduler (SIGTERM, as SLURM sends before it preempts or at
the time limit) writes a checkpoint of the iteration it has finished, then stops: ``--resume``
loses nothing. Every process of the training stops at the same iteration."""

from __future__ import annotations

import os
import signal
from typing import Any

import torch
import torch.distributed as dist
from detectron2.engine import HookBase
from detectron2.utils import comm

from ..errors import StoppedBySignal

# The signals a scheduler stops a job with.
STOP_SIGNALS = (signal.SIGTERM,)


class CheckpointOnSignal(HookBase):
    """Take :data:`STOP_SIGNALS` for the training (the handler only notes the signal), and after
    each iteration ask every process whether one of them got it; if so, write
    ``model_<iteration>.pth`` as the periodic checkpointer does and raise
    :class:`~backbones.errors.StoppedBySignal` in every process. The handlers before the
    training are restored after it."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _note(self, signum: int, frame: Any) -> None:
        self.received = signum

    def before_train(self) -> None:
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._note)

    def after_train(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _signal_anywhere(self) -> int:
        received = self.received or 0
        if comm.get_world_size() == 1:
            return received
        # On the CPU, over Detectron2's gloo group: on GPUs a device tensor here would
        # synchronise the CUDA stream every iteration.
        flag = torch.tensor([received], dtype=torch.int64)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=comm._get_global_gloo_group())
        return int(flag.item())

    def after_step(self) -> None:
        signum = self._signal_anywhere()
        if not signum:
            return
        iteration = self.trainer.iter
        name = f"model_{iteration:07d}"
        checkpointer = self.trainer.checkpointer
        checkpointer.save(name, iteration=iteration)
        comm.synchronize()  # written before any process leaves
        path = os.path.join(checkpointer.save_dir, f"{name}.pth")
        raise StoppedBySignal(signal.Signals(signum).name, iteration, path)
