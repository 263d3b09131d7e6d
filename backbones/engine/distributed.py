"""Multi-process training: processes started here (Detectron2's launch on GPUs, gloo processes
on CPU) or by torchrun or SLURM's srun (found from their environment variables), a rendezvous
that times out instead of hanging (the model's wrapper: :mod:`.ddp`)."""

from __future__ import annotations

import errno
import os
import re
import signal
import socket
import threading
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlparse

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.engine.launch import DEFAULT_TIMEOUT
from detectron2.engine.launch import launch as d2_launch
from detectron2.utils import comm

from ..config.input_settings import drop_read_ahead

# How long the processes of a training wait for each other to start (the rendezvous); the
# collectives of the training itself keep Detectron2's DEFAULT_TIMEOUT (30 min).
DEFAULT_RENDEZVOUS_TIMEOUT = timedelta(seconds=60)
# SLURM without MASTER_PORT: a port derived from the job id, the same in every task, below
# Linux's ephemeral range (32768-60999) so that no client socket holds it by chance.
SLURM_PORT_BASE, SLURM_PORT_SPAN = 15000, 10000


class LaunchError(ValueError):
    """Launch settings that cannot work: flags that contradict the launcher's environment or the
    GPUs present, a malformed launcher variable. The message names them and the fix."""


class RendezvousError(RuntimeError):
    """The processes of a training did not all meet within the rendezvous timeout."""


@dataclass(frozen=True)
class LaunchEnv:
    """The processes of a training and this process's place among them.

    Attributes:
        launcher: ``"torchrun"``, ``"slurm"`` (srun: one process per task), or ``"spawn"``:
            no launcher around this process, which starts ``--num-gpus`` processes itself.
        rank, local_rank: this process's rank among all processes and on its machine (for
            ``"spawn"``: the first process of this machine).
        world_size, local_world_size: the number of processes in all and per machine.
        master_addr, master_port: where rank 0 serves the rendezvous; ``None`` if unknown.
    """

    launcher: str
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1
    master_addr: str | None = None
    master_port: int | None = None

    @property
    def num_machines(self) -> int:
        return self.world_size // self.local_world_size

    @property
    def machine_rank(self) -> int:
        return self.rank // self.local_world_size


def _str(environ: Mapping[str, str], name: str) -> str:
    if not environ.get(name):
        raise LaunchError(f"{name} is not set: the launcher's environment is incomplete")
    return environ[name]


def _int(environ: Mapping[str, str], name: str) -> int:
    value = _str(environ, name)
    try:
        return int(value)
    except ValueError:
        raise LaunchError(f"{name}={value!r} is not an integer") from None


def expand_hostlist(hostlist: str) -> list[str]:
    """The host names of a SLURM host list, in order (``scontrol show hostnames``).

    ``"node[01-03,07],gpu7"`` gives ``node01 node02 node03 node07 gpu7``; zero padding is kept
    and several bracket groups multiply (``"r[1-2]-n[1-2]"``: ``r1-n1 r1-n2 r2-n1 r2-n2``).

    Raises:
        LaunchError: a malformed list (unbalanced brackets, a range that is not numbers).
    """
    items, depth, start = [], 0, 0
    for i, char in enumerate(hostlist):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if depth not in (0, 1):
            raise LaunchError(f"host list {hostlist!r}: unbalanced brackets")
        if char == "," and depth == 0:
            items.append(hostlist[start:i])
            start = i + 1
    if depth:
        raise LaunchError(f"host list {hostlist!r}: unbalanced brackets")
    items.append(hostlist[start:])
    hosts = [host for item in items if item for host in _expand_item(item, hostlist)]
    if not hosts:
        raise LaunchError(f"host list {hostlist!r}: no host")
    return hosts


def _expand_item(item: str, hostlist: str) -> list[str]:
    group = re.search(r"\[([^\]]*)\]", item)
    if group is None:
        return [item]
    prefix, rest = item[: group.start()], _expand_item(item[group.end() :], hostlist)
    hosts = []
    for part in group.group(1).split(","):
        low, _, high = part.partition("-")
        if not low.isdigit() or not (high or low).isdigit():
            raise LaunchError(f"host list {hostlist!r}: {part!r} is not a number or a range")
        for number in range(int(low), int(high or low) + 1):
            hosts += [f"{prefix}{number:0{len(low)}d}{tail}" for tail in rest]
    return hosts


def _tasks_per_node(environ: Mapping[str, str]) -> int:
    """SLURM's tasks on each node, which must be the same on every node (Detectron2's local
    process groups are equal blocks of ranks)."""
    for name in ("SLURM_STEP_TASKS_PER_NODE", "SLURM_NTASKS_PER_NODE", "SLURM_TASKS_PER_NODE"):
        if name in environ:
            break
    else:
        raise LaunchError(
            "SLURM_NTASKS_PER_NODE and SLURM_TASKS_PER_NODE are not set: start the tasks with "
            "srun --ntasks-per-node N"
        )
    counts = set()
    for part in environ[name].split(","):
        match = re.fullmatch(r"(\d+)(?:\(x\d+\))?", part.strip())
        if match is None:
            raise LaunchError(f"{name}={environ[name]!r}: expected counts like 8 or 8(x2),4")
        counts.add(int(match.group(1)))
    if len(counts) != 1:
        raise LaunchError(
            f"{name}={environ[name]!r}: the nodes run different numbers of tasks; give every "
            "node the same number (srun --ntasks-per-node N)"
        )
    return counts.pop()


def slurm_port(job_id: str | None) -> int:
    """The rendezvous port of a SLURM job without ``MASTER_PORT``: the same in all its tasks."""
    if not job_id:
        return 29500  # torch.distributed's usual default
    number = int(job_id) if job_id.isdigit() else zlib.crc32(job_id.encode())
    return SLURM_PORT_BASE + number % SLURM_PORT_SPAN


def detect_launch(environ: Mapping[str, str]) -> LaunchEnv:
    """How the process with environment ``environ`` (``os.environ``) was started.

    * torchrun (``TORCHELASTIC_RUN_ID``, or ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` as other
      ``env://`` launchers set): its ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``,
      ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``;
    * SLURM's srun with more than one task, no torchrun inside: ``SLURM_PROCID``,
      ``SLURM_LOCALID``, ``SLURM_NTASKS``, the tasks per node (``SLURM_NTASKS_PER_NODE`` or
      ``SLURM_TASKS_PER_NODE``), the first host of ``SLURM_JOB_NODELIST`` (or
      ``SLURM_STEP_NODELIST``) as master unless ``MASTER_ADDR`` is set, and ``MASTER_PORT`` or
      :func:`slurm_port` of ``SLURM_JOB_ID``. One task (a shell in an allocation) is not a
      launch by SLURM;
    * otherwise ``"spawn"``: this process starts the processes itself (``--num-gpus``).

    Raises:
        LaunchError: a launcher's variable missing or malformed, naming it.
    """
    if "TORCHELASTIC_RUN_ID" in environ or {"RANK", "WORLD_SIZE", "LOCAL_RANK"} <= set(environ):
        found = LaunchEnv(
            "torchrun",
            rank=_int(environ, "RANK"),
            local_rank=_int(environ, "LOCAL_RANK"),
            world_size=_int(environ, "WORLD_SIZE"),
            local_world_size=_int(environ, "LOCAL_WORLD_SIZE"),
            master_addr=_str(environ, "MASTER_ADDR"),
            master_port=_int(environ, "MASTER_PORT"),
        )
    elif "SLURM_PROCID" in environ and environ.get("SLURM_NTASKS", "1") != "1":
        # srun's SLURM_STEP_NODELIST: the nodes of this job step, when it has its own.
        nodes = "SLURM_STEP_NODELIST" if "SLURM_STEP_NODELIST" in environ else "SLURM_JOB_NODELIST"
        master_addr = environ.get("MASTER_ADDR") or expand_hostlist(_str(environ, nodes))[0]
        found = LaunchEnv(
            "slurm",
            rank=_int(environ, "SLURM_PROCID"),
            local_rank=_int(environ, "SLURM_LOCALID"),
            world_size=_int(environ, "SLURM_NTASKS"),
            local_world_size=_tasks_per_node(environ),
            master_addr=master_addr,
            master_port=(
                _int(environ, "MASTER_PORT")
                if "MASTER_PORT" in environ
                else slurm_port(environ.get("SLURM_JOB_ID"))
            ),
        )
    else:
        return LaunchEnv("spawn")
    if found.world_size % found.local_world_size or not (
        0 <= found.local_rank < found.local_world_size and 0 <= found.rank < found.world_size
    ):
        raise LaunchError(
            f"{found.launcher}: rank {found.rank} (local {found.local_rank}) of world size "
            f"{found.world_size} with {found.local_world_size} per machine is not a valid layout"
        )
    return found


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
    launcher: LaunchEnv | None = None,
    rendezvous_timeout: timedelta = DEFAULT_RENDEZVOUS_TIMEOUT,
) -> None:
    """Run ``main_func(*args)`` in every process of a training.

    Under torchrun or SLURM (``launcher`` from :func:`detect_launch`, checked against the
    command's flags by ``backbones.engine.cli.plan_launch``),
    this process is one of them: it joins the others (NCCL on CUDA, gloo on CPU) and runs
    ``main_func`` once. Otherwise it starts ``num_gpus_per_machine`` processes: Detectron2's
    ``launch`` on ``device="cuda"``; on ``device="cpu"``, processes that join a ``gloo`` process
    group without any CUDA call, so ``--num-gpus 2`` on a machine without GPU trains with 2
    processes. Before that, a ``tcp://`` ``dist_url`` is checked: machine 0 must be able to
    listen there, the others to reach it within ``rendezvous_timeout``.

    Args:
        device: ``cfg.MODEL.DEVICE``; ``None`` means ``"cuda"`` if CUDA is available, else cpu.
        launcher: the processes of the training; ``None`` means started here.
        rendezvous_timeout: how long the processes wait for each other to start.
        Others: as in ``detectron2.engine.launch`` (``timeout``: for the training's collectives).

    Raises:
        LaunchError: ``dist_url`` not usable on this machine.
        RendezvousError: the processes did not all meet within ``rendezvous_timeout``.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if launcher is not None and launcher.launcher != "spawn":
        _run_in_process(main_func, args, launcher, device, timeout, rendezvous_timeout)
        return
    world_size = num_machines * num_gpus_per_machine
    if world_size == 1:
        main_func(*args)
        return
    drop_read_ahead()  # workers read MODEL.WEIGHTS themselves: don't hold it here meanwhile
    if dist_url in (None, "auto"):
        if num_machines > 1:
            raise LaunchError(f"--num-machines {num_machines} needs a --dist-url tcp://HOST:PORT")
        dist_url = f"tcp://127.0.0.1:{_free_port()}"
    check_dist_url(dist_url, machine_rank, timeout=rendezvous_timeout)
    if torch.device(device).type != "cpu":
        d2_launch(
            main_func, num_gpus_per_machine, num_machines, machine_rank, dist_url, args, timeout
        )
        return
    context = mp.start_processes(
        _cpu_worker,
        nprocs=num_gpus_per_machine,
        args=(
            main_func,
            # This machine's processes: its first rank, and how many.
            LaunchEnv(
                "spawn",
                rank=machine_rank * num_gpus_per_machine,
                world_size=world_size,
                local_world_size=num_gpus_per_machine,
            ),
            dist_url,
            args,
            timeout,
            rendezvous_timeout,
        ),
        daemon=False,
        join=False,
    )
    _join_forwarding_signals(context)


def _join_forwarding_signals(context: mp.ProcessContext) -> None:
    """Wait for the started processes; a SIGTERM to this one (a scheduler stopping the job) is
    passed on to them, which checkpoint and stop together, instead of ending this process and
    leaving them running."""

    def forward(signum: int, frame: object) -> None:
        for process in context.processes:
            if process.is_alive():
                os.kill(process.pid, signum)

    # Only the main thread takes signals (a launch from another thread just waits).
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, forward) if main else None
    try:
        while not context.join():
            pass
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def check_dist_url(dist_url: str, machine_rank: int, *, timeout: timedelta) -> None:
    """For a ``tcp://HOST:PORT`` URL: on machine 0, that it can serve the rendezvous there
    (:func:`check_listen`); on the others, that HOST:PORT accepts connections within
    ``timeout`` (machine 0 may start later). Other URLs (``file://``) are not checked.

    Raises:
        LaunchError: machine 0 cannot listen at the URL.
        RendezvousError: machine 0 was not reached within ``timeout``.
    """
    url = urlparse(dist_url)
    if url.scheme != "tcp":
        return
    if not url.hostname or not url.port:
        raise LaunchError(f"--dist-url {dist_url}: expected tcp://HOST:PORT")
    what = f"--dist-url {dist_url}"
    if machine_rank == 0:
        check_listen(url.hostname, url.port, what=f"{what}: machine 0 (this one)")
    else:
        wait_for_master(url.hostname, url.port, timeout=timeout, what=what)


def check_listen(host: str, port: int, *, what: str) -> None:
    """That this machine can serve the rendezvous at ``host:port``: ``host`` is one of its
    addresses and ``port`` is free.

    Raises:
        LaunchError: naming ``what`` and the reason.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As torch's TCPStore does: a port left in TIME_WAIT by an earlier run is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as e:
            why = (
                f"port {port} is in use (by another training, or a process left by one?)"
                if e.errno == errno.EADDRINUSE
                else f"{host} is not an address of this machine ({e.strerror})"
            )
            raise LaunchError(
                f"{what} must serve the rendezvous at {host}:{port}, but {why}; give this "
                "machine's address and a free port"
            ) from None


def wait_for_master(host: str, port: int, *, timeout: timedelta, what: str) -> None:
    """Wait until ``host:port`` accepts a connection.

    Raises:
        RendezvousError: not within ``timeout``, naming ``what`` and the fix.
    """
    deadline = time.monotonic() + timeout.total_seconds()
    while True:
        try:
            with socket.create_connection((host, port), timeout=2.0):
                return
        except OSError as e:
            if time.monotonic() >= deadline:
                raise RendezvousError(
                    f"{what}: rank 0 at {host}:{port} could not be reached within "
                    f"{timeout.total_seconds():g} s ({e.strerror or e}). Start rank 0 (machine 0) "
                    "with the same address, check the host is reachable from here (firewall, "
                    "interface), or wait longer with --dist-timeout SECONDS"
                ) from None
            time.sleep(0.5)


def _rendezvous(env: LaunchEnv, timeout: timedelta) -> dist.TCPStore:
    """The store all processes of ``env`` meet at (rank 0 serves it), within ``timeout``."""
    what = f"{env.launcher} rank {env.rank}"
    if env.rank == 0:
        check_listen(env.master_addr, env.master_port, what=f"{what} (MASTER_ADDR, MASTER_PORT)")
    else:
        wait_for_master(env.master_addr, env.master_port, timeout=timeout, what=what)
    try:
        return dist.TCPStore(
            env.master_addr,
            env.master_port,
            env.world_size,
            is_master=env.rank == 0,
            timeout=timeout,
            wait_for_workers=True,
        )
    except dist.DistError as e:
        raise RendezvousError(
            f"{what}: the {env.world_size} processes did not all meet at {env.master_addr}:"
            f"{env.master_port} within {timeout.total_seconds():g} s ({str(e).rstrip('.')}). "
            "Start every process (under SLURM: with srun, one per task), or wait longer with "
            "--dist-timeout SECONDS"
        ) from None


def _run_in_process(
    main_func: Callable[..., Any],
    args: tuple,
    env: LaunchEnv,
    device: str,
    timeout: timedelta,
    rendezvous_timeout: timedelta,
    init_method: str | None = None,
) -> None:
    """Join the process group of ``env`` as its rank ``env.rank``, run ``main_func(*args)``, leave.

    torchrun's processes initialise from its environment (``env://``: it has already gathered
    them); the others meet at a store served by rank 0 that waits ``rendezvous_timeout`` at
    most, or at ``init_method`` (``file://``) when given.
    """
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.set_device(env.local_rank)
    if env.world_size == 1:
        main_func(*args)
        return
    backend, store = "nccl" if cuda else "gloo", None
    if env.launcher == "torchrun":
        dist.init_process_group(backend, init_method="env://", timeout=timeout)
    elif init_method is not None:
        dist.init_process_group(
            backend,
            init_method=init_method,
            rank=env.rank,
            world_size=env.world_size,
            timeout=timeout,
        )
    else:
        store = _rendezvous(env, rendezvous_timeout)
        dist.init_process_group(
            backend, store=store, rank=env.rank, world_size=env.world_size, timeout=timeout
        )
    try:
        comm.create_local_process_group(env.local_world_size)
        comm.synchronize()
        if store is not None:
            store.set_timeout(timeout)  # all met: the training's own waits may be long
        main_func(*args)
        # All finished before any leaves: a process that tears the group down (and rank 0 the
        # store) while another still talks to it can abort that one at exit.
        comm.synchronize()
    finally:
        dist.destroy_process_group()


def _cpu_worker(
    local_rank: int,
    main_func: Callable[..., Any],
    machine: LaunchEnv,
    dist_url: str,
    args: tuple,
    timeout: timedelta,
    rendezvous_timeout: timedelta,
) -> None:
    if "OMP_NUM_THREADS" not in os.environ:
        # Share the cores instead of oversubscribing them, as torchrun does with its
        # OMP_NUM_THREADS default (torch.distributed.run).
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // machine.local_world_size))
    url = urlparse(dist_url)
    env = LaunchEnv(
        "spawn",
        rank=machine.rank + local_rank,
        local_rank=local_rank,
        world_size=machine.world_size,
        local_world_size=machine.local_world_size,
        master_addr=url.hostname,
        master_port=url.port,
    )
    init_method = None if url.scheme == "tcp" else dist_url
    _run_in_process(main_func, args, env, "cpu", timeout, rendezvous_timeout, init_method)
