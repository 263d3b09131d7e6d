"""Detectron2's training loops (``SimpleTrainer``, ``AMPTrainer``) made resumable and safe.

- Every iteration starts from global RNGs (``random``, numpy, torch) seeded from
  ``(seed, iteration, rank)``: what the model draws (proposal sampling, drop-path) is the same
  in a run resumed at that iteration as in the run it continues, without saving RNG states.
- Each iteration's loss terms are shared by all processes before the optimizer steps; a term
  that is not finite on any of them raises :class:`~backbones.errors.DivergenceError` on every
  process at once, before the step. Weights made non-finite by a step (an infinite gradient
  from a finite loss) are found right after it, on every process. So the weights and every
  checkpoint stay finite.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from detectron2.engine import AMPTrainer, SimpleTrainer
from detectron2.utils import comm

from ..checkpoint import nonfinite_tensors
from ..data.loader import derive_seed, seed_all_from
from ..errors import DivergenceError

__all__ = ["ResumableAMPTrainer", "ResumableSimpleTrainer", "describe_nonfinite"]


def describe_nonfinite(losses_by_rank: list[Mapping[str, float]]) -> str | None:
    """``loss_box_reg = nan (rank 1); loss_cls = 0.6931`` for the first rank with a term that
    is not finite (its terms, the bad ones first), or ``None`` when all are finite."""
    for rank, losses in enumerate(losses_by_rank):
        bad = {k: v for k, v in losses.items() if not math.isfinite(v)}
        if not bad:
            continue
        where = f" (rank {rank})" if len(losses_by_rank) > 1 else ""
        terms = [f"{k} = {v}" for k, v in bad.items()]
        terms += [f"{k} = {v:.4g}" for k, v in losses.items() if k not in bad]
        return f"{terms[0]}{where}" + "".join(f"; {t}" for t in terms[1:])
    return None


class _Resumable:
    """The mixin of both loops: seeds each iteration and stops on a non-finite loss."""

    seed: int = 0
    iter: int
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer

    def run_step(self) -> None:
        seed_all_from(derive_seed(self.seed, self.iter, comm.get_rank()))
        try:
            super().run_step()  # type: ignore[misc]
        except DivergenceError:
            raise
        except FloatingPointError as error:
            # Detectron2's own checks in the forward (e.g. the RPN's "Predicted boxes or scores
            # contain Inf/NaN"): this process alone may have it, so it says it itself.
            where = f" (rank {comm.get_rank()})" if comm.get_world_size() > 1 else ""
            divergence = DivergenceError(self.iter, f"{str(error).rstrip('.')}{where}")
            divergence.said_by_main_process = False
            raise divergence from error
        # The step's weights, checked on every process (DDP keeps them equal, so all agree
        # without talking): the next forward would otherwise fail on some processes only.
        parameters = [p for p in self.model.parameters() if p.requires_grad]
        norm = torch.nn.utils.get_total_norm(parameters, foreach=True) if parameters else None
        if norm is None or bool(torch.isfinite(norm)):
            return
        # The norm also overflows for huge finite weights: only a non-finite tensor stops.
        bad = nonfinite_tensors(getattr(self.model, "module", self.model).state_dict())
        if bad is not None:
            raise DivergenceError(
                self.iter,
                f"the step made weights that are not finite ({bad}) from a finite loss: an "
                "infinite gradient",
            )

    def _write_metrics(
        self,
        loss_dict: Mapping[str, torch.Tensor],
        data_time: float,
        prefix: str = "",
        iter: int | None = None,  # noqa: A002 (Detectron2's keyword)
    ) -> None:
        iteration = self.iter if iter is None else iter
        losses = {k: float(v.detach()) for k, v in loss_dict.items()}
        everyone = comm.all_gather(losses) if comm.get_world_size() > 1 else [losses]
        bad = describe_nonfinite(everyone)
        if bad is not None:
            lr = self.optimizer.param_groups[0]["lr"] if self.optimizer.param_groups else None
            raise DivergenceError(iteration, bad, lr=lr)
        super()._write_metrics(loss_dict, data_time, prefix, iter)  # type: ignore[misc]


class ResumableSimpleTrainer(_Resumable, SimpleTrainer):
    """``SimpleTrainer`` with per-iteration seeding and the divergence stop; ``seed`` is the
    training's seed (the same on every process)."""


class ResumableAMPTrainer(_Resumable, AMPTrainer):
    """``AMPTrainer`` with per-iteration seeding and the divergence stop."""
