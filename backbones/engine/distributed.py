"""Multi-process training on GPUs (Detectron2's launch) and on CPU (gloo process groups,
DistributedDataParallel without device ids)."""

from __future__ import annotations

import itertools
import os
import socket
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.engine.defaults import create_ddp_model as d2_create_ddp_model
from detectron2.engine.launch import DEFAULT_TIMEOUT
from detectron2.engine.launch import launch as d2_launch
from detectron2.utils import comm
from torch import nn

from ..config.input_settings import drop_read_ahead


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
    if num_machines * num_gpus_per_machine > 1:
        drop_read_ahead()  # workers read MODEL.WEIGHTS themselves: don't hold it here meanwhile
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
