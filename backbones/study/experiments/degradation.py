"""The degradation experiment of He et al. (2015, Figure 4 and Figure 6): plain nets
(``residual=False``) and residual nets of several depths, trained with one optimiser and schedule
and several seeds; the deeper plain net has the higher *training* error, the deeper residual net
the lower.

:func:`run_degradation` trains every net and seed into ``<output>/<net>/seed<k>/`` with
:func:`backbones.study.pretrain.train.pretrain` (``jobs`` of them at once, in processes of their
own), then writes ``curves.csv``, ``degradation.png`` (mean curves, a band of ± one standard
deviation over the seeds) and ``degradation.md`` (final errors as mean ± std) into ``<output>``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ...progress import format_duration
from ..data.classification import DataSpec
from ..pretrain.cifar import CLASSIFIER_BUILDERS
from ..pretrain.run import (
    FAMILIES,
    METRICS,
    PretrainRun,
    Recipe,
    SeriesProgress,
    evaluation_records,
    read_result,
)
from ..pretrain.train import pretrain
from ..report.pretrain_plots import (
    NetCurve,
    TrainingCurveWriter,
    final_errors_table,
    plot_degradation,
    write_curves_csv,
)

logger = logging.getLogger(__name__)

# Figure 4's ImageNet nets (here thin: width 16) and one deeper; Figure 6's CIFAR-10 nets.
DEFAULT_DEPTHS = {"imagenet": (18, 34, 50), "cifar": (20, 32, 44, 56)}
DEFAULT_WIDTH = 16
DEFAULT_SEEDS = 3
# One recipe for every net: SGD 0.1 with a cosine schedule (a step schedule cuts the rate at
# 1/2, just as nets leave the ln(classes) plateau of the synthetic set), batch 64.
DEGRADATION_RECIPE = dict(lr=0.1, batch_size=64, schedule="cosine")
CSV_FILE, FIGURE_FILE, TABLE_FILE = "curves.csv", "degradation.png", "degradation.md"


@dataclass
class DegradationNet:
    """One run: the net's name (``plain-18``, ``resnet-34``), depth, kind, seed and folder."""

    name: str
    depth: int
    residual: bool
    output_dir: Path
    seed: int = 0

    @property
    def label(self) -> str:
        return f"{self.name} seed {self.seed}"


@dataclass
class DegradationResult:
    """The runs with their curves, the files written, and the runs that failed (label and
    message)."""

    curves: list[NetCurve]
    csv: Path
    figure: Path
    table: Path
    failed: list[tuple[str, str]] = field(default_factory=list)


def plan_degradation(
    output_dir: str | os.PathLike,
    depths: Sequence[int] = DEFAULT_DEPTHS["imagenet"],
    seeds: Sequence[int] = (0,),
) -> list[DegradationNet]:
    """The plain nets then the residual nets, each depth in the order given, each seed."""
    output, nets = Path(output_dir), []
    for residual in (False, True):
        for depth in depths:
            name = f"{'resnet' if residual else 'plain'}-{depth}"
            for seed in seeds:
                nets.append(
                    DegradationNet(name, depth, residual, output / name / f"seed{seed}", seed)
                )
    return nets


def is_finished(output_dir: str | os.PathLike, max_iter: int | None) -> bool:
    """Whether a net's folder holds a finished run (of ``max_iter`` iterations, when given)."""
    result = read_result(output_dir)
    return result.finished and (max_iter is None or result.iteration >= max_iter)


def net_options(
    net: DegradationNet,
    family: str,
    resnet_options: dict[str, Any] | None,
    *,
    width: int | None,
    zero_init: bool,
) -> dict[str, Any]:
    """The builder options of ``net``: the shared ones, ``residual``, the width (ImageNet
    family), and ``zero_init_residual`` for the residual nets only (a plain net has no
    residual branch to start at zero)."""
    options = {**(resnet_options or {}), "residual": net.residual}
    if width is not None and family == "imagenet":
        options["width"] = width
    if zero_init and net.residual:
        options["zero_init_residual"] = True
    return options


def default_jobs(num_gpus: int = 1) -> int:
    """Runs at once by default: one per CPU core without CUDA (each with one thread: small nets
    gain little from more), one with CUDA or with several processes per run."""
    if torch.cuda.is_available() or num_gpus > 1:
        return 1
    return max(1, os.cpu_count() or 1)


def run_degradation(
    output_dir: str | os.PathLike,
    *,
    data: DataSpec,
    recipe: Recipe,
    depths: Sequence[int] | None = None,
    seeds: int = DEFAULT_SEEDS,
    family: str = "imagenet",
    width: int | None = DEFAULT_WIDTH,
    zero_init: bool = True,
    resnet_options: dict[str, Any] | None = None,
    num_gpus: int = 1,
    jobs: int = 1,
    resume: bool = False,
    process_setup: Callable[[], object] | None = None,
) -> DegradationResult:
    """Train the plain and residual nets of ``depths`` with one ``recipe`` on ``data``, each with
    ``seeds`` seeds (``recipe.seed``, ``recipe.seed + 1``, ...), then write the curves, the figure
    and the table.

    Args:
        output_dir: each run trains into ``output_dir/<name>/seed<k>``.
        data: the data of every net.
        recipe: the optimisation of every net (give ``max_iter``: the ETA covers all runs).
        depths: two or more depths (default: :data:`DEFAULT_DEPTHS` of ``family``).
        seeds: runs per net; the seed sets the initialisation and the data order.
        family: ``"imagenet"`` (make_resnet's nets) or ``"cifar"`` (the paper's CIFAR-10 nets).
        width: the ImageNet nets' width (64: the paper's); None for the options' own.
        zero_init: start the residual nets' blocks at the identity (``zero_init_residual``).
        resnet_options: further builder options of every net.
        num_gpus: processes per run (CPU processes without CUDA).
        jobs: runs trained at once, each in a process of its own with ``cpus / jobs`` threads
            (1: one after another, in this process).
        resume: skip finished runs and continue interrupted ones.
        process_setup: called first in each process of a run (see :func:`pretrain`).

    Returns:
        :class:`DegradationResult`; runs that failed in a job process are listed in ``failed``
        (the others go on). With ``jobs=1`` a failure is raised.

    Raises:
        ValueError: fewer than two depths, no seed, ``jobs`` with ``num_gpus``, a width for the
            CIFAR nets.
        BackboneOptionError: an option a net cannot take (checked for every net first).
    """
    if family not in FAMILIES:
        raise ValueError(f"family={family!r}: one of {', '.join(FAMILIES)}")
    depths = tuple(DEFAULT_DEPTHS[family] if depths is None else depths)
    if len(set(depths)) < 2:
        raise ValueError(f"depths={list(depths)}: the experiment compares two or more depths")
    if seeds < 1:
        raise ValueError(f"seeds={seeds}: one or more")
    if jobs < 1 or (jobs > 1 and num_gpus > 1):
        raise ValueError(f"jobs={jobs} with num_gpus={num_gpus}: several jobs of one process each")
    if family == "cifar":
        width = None
    nets = plan_degradation(output_dir, depths, range(recipe.seed, recipe.seed + seeds))

    def options(net: DegradationNet) -> dict[str, Any]:
        return net_options(net, family, resnet_options, width=width, zero_init=zero_init)

    for net in nets[::seeds]:  # every net's options, before any run starts
        with torch.device("meta"):
            CLASSIFIER_BUILDERS[family](net.depth, 10, options(net))
    todo = [n for n in nets if not (resume and is_finished(n.output_dir, recipe.max_iter))]
    for net in nets:
        if net not in todo:
            logger.info(f"{net.label}: finished in {net.output_dir}, skipped (--resume)")
    runs = []
    for i, net in enumerate(todo):
        # The ETA covers the runs after this one, their cost scaled by depth, over the jobs.
        later = sum((recipe.max_iter or 0) * n.depth / net.depth for n in todo[i + 1 :]) / jobs
        run = PretrainRun(
            str(net.output_dir),
            net.depth,
            data=data,
            recipe=dataclasses.replace(recipe, seed=net.seed),
            resnet_options=options(net),
            family=family,
            resume=resume,
            progress=SeriesProgress(f"[{net.label} {i + 1}/{len(todo)}] ", later),
            after_eval=TrainingCurveWriter(title=net.label),
        )
        runs.append((net, run))
    failed = []
    if jobs == 1:
        for net, run in runs:
            pretrain(run, num_gpus=num_gpus, process_setup=process_setup)
    elif runs:  # the synthetic set is drawn by one job while the others wait for it
        failed = _run_jobs(runs, jobs, process_setup)
    result = write_degradation_report(
        output_dir, depths, seeds=range(recipe.seed, recipe.seed + seeds), data=data,
        recipe=recipe, family=family, width=width, zero_init=zero_init,
    )  # fmt: skip
    result.failed = failed
    return result


def _run_jobs(
    runs: list[tuple[DegradationNet, PretrainRun]],
    jobs: int,
    process_setup: Callable[[], object] | None,
) -> list[tuple[str, str]]:
    """Train ``runs`` in ``jobs`` processes (started afresh: ``spawn``), a line as each ends
    with the time it took and the ETA; returns the failures (label, message)."""
    threads = max(1, (os.cpu_count() or 1) // jobs)
    context = multiprocessing.get_context("spawn")
    failed, times = [], []
    start = time.perf_counter()
    with ProcessPoolExecutor(jobs, mp_context=context) as pool:
        pending = {
            pool.submit(_train_in_job, run, threads, process_setup): net for net, run in runs
        }
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                net = pending.pop(future)
                error, seconds = future.result()
                times.append(seconds)  # the run's own time, not its wait in the queue
                left = len(pending)
                eta = sum(times) / len(times) * left / jobs
                status = "done" if error is None else f"FAILED: {error}"
                logger.info(
                    f"{net.label}: {status}; {len(runs) - left}/{len(runs)} ended, elapsed "
                    f"{format_duration(time.perf_counter() - start)}, ETA {format_duration(eta)}"
                )
                if error is not None:
                    failed.append((net.label, error))
    return failed


def _train_in_job(
    run: PretrainRun, threads: int, process_setup: Callable[[], object] | None
) -> tuple[str | None, float]:
    """One run in a job process: its error as one line (None when it finished), and the
    seconds it took."""
    start = time.perf_counter()
    torch.set_num_threads(threads)
    for stream in (sys.stdout, sys.stderr):  # progress lines as they come, also into a file
        stream.reconfigure(line_buffering=True)
    try:
        pretrain(run, num_gpus=1, process_setup=process_setup)
    except Exception as e:  # a divergence, a full disk: said by the main process, others go on
        logger.exception(f"{run.output_dir} failed")
        return f"{type(e).__name__}: {e}", time.perf_counter() - start
    return None, time.perf_counter() - start


def write_degradation_report(
    output_dir: str | os.PathLike,
    depths: Sequence[int] = DEFAULT_DEPTHS["imagenet"],
    *,
    seeds: Sequence[int] = (0,),
    data: DataSpec | None = None,
    recipe: Recipe | None = None,
    family: str = "imagenet",
    width: int | None = None,
    zero_init: bool | None = None,
) -> DegradationResult:
    """``curves.csv``, ``degradation.png`` and ``degradation.md`` from the runs' folders as they
    are now (unfinished runs with what they have)."""
    output = Path(output_dir)
    curves = [
        NetCurve(n.name, n.depth, n.residual, evaluation_records(n.output_dir / METRICS), n.seed)
        for n in plan_degradation(output, depths, seeds)
    ]
    csv_path = write_curves_csv(curves, output / CSV_FILE)
    nets = "CIFAR-10 ResNets" if family == "cifar" else "ImageNet ResNets"
    if width is not None:
        nets += f" of width {width}"
    title = f"{nets}; {data.describe()}" if data is not None else nets
    figure = plot_degradation(curves, output / FIGURE_FILE, title=title)
    lines = ["# Degradation: plain vs residual nets", "", f"Nets: {nets}."]
    if zero_init is not None:
        lines.append(
            "Residual nets start at the identity (zero_init_residual)." if zero_init else
            "No zero-init of the residual nets."
        )  # fmt: skip
    if data is not None:
        lines.append(f"Data: {data.describe()}.")
    if recipe is not None:
        settings = {k: v for k, v in dataclasses.asdict(recipe).items() if v is not None}
        settings.pop("seed", None)
        if recipe.schedule != "step":
            settings.pop("steps", None)
            settings.pop("gamma", None)
        lines.append(f"Recipe (every net): `{json.dumps(settings)}`.")
    lines.append(f"Seeds: {', '.join(map(str, seeds))}.")
    lines += [
        "",
        "Top-1 errors at the last evaluation, mean ± standard deviation over the seeds:",
        "",
        final_errors_table(curves),
    ]
    table = output / TABLE_FILE
    table.write_text("\n".join(lines))
    return DegradationResult(curves, csv_path, figure, table)
