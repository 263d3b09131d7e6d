"""``DistributedDataParallel`` for GPU and CPU processes alike: no device ids for a CPU module,
and SyncBN on CPU through :class:`backbones.modeling.layers.SyncBatchNorm`."""

from __future__ import annotations

import itertools
from typing import Any

from detectron2.engine.defaults import create_ddp_model as d2_create_ddp_model
from detectron2.utils import comm
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..modeling.layers import SyncBatchNorm

__all__ = ["create_ddp_model", "ddp_device_ids"]


def ddp_device_ids(model: nn.Module) -> list[int] | None:
    """``device_ids`` for ``DistributedDataParallel(model)``: this process's GPU for a CUDA
    module (Detectron2's choice), ``None`` for a CPU module (torch rejects a list there)."""
    tensor = next(itertools.chain(model.parameters(), model.buffers()), None)
    return None if tensor is None or tensor.device.type == "cpu" else [comm.get_local_rank()]


class _CPUSyncBNParallel(DistributedDataParallel):
    # torch refuses every SyncBatchNorm in a CPU module ("SyncBatchNorm layers only work with
    # GPU modules"); ours synchronises CPU processes itself, so only torch's own are refused.
    def _passing_sync_batchnorm_handle(self, module: nn.Module) -> None:
        torch_only = [
            m
            for m in module.modules()
            if isinstance(m, nn.SyncBatchNorm) and not isinstance(m, SyncBatchNorm)
        ]
        if torch_only:
            super()._passing_sync_batchnorm_handle(torch_only[0])


def create_ddp_model(
    model: nn.Module, *, fp16_compression: bool = False, **kwargs: Any
) -> nn.Module:
    """Detectron2's ``create_ddp_model`` that also wraps CPU modules.

    Returns ``model`` itself in a single process; otherwise a ``DistributedDataParallel``
    with ``device_ids`` from :func:`ddp_device_ids` unless given in ``kwargs``. A CPU module
    with ``norm="SyncBN"`` layers (:class:`~backbones.modeling.layers.SyncBatchNorm`) trains
    in CPU processes too.
    """
    if comm.get_world_size() == 1:
        return model
    kwargs.setdefault("device_ids", ddp_device_ids(model))
    if kwargs["device_ids"] is None and any(isinstance(m, SyncBatchNorm) for m in model.modules()):
        if fp16_compression:
            raise ValueError("fp16 gradient compression needs GPU processes")
        return _CPUSyncBNParallel(model, **kwargs)
    return d2_create_ddp_model(model, fp16_compression=fp16_compression, **kwargs)
