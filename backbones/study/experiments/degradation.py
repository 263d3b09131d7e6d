"""The degradation experiment of He et al. (2015, Figure 1 and Figure 4 left): plain nets
(``residual=False``) and residual nets of two depths, trained with one optimiser and schedule;
the deeper plain net has the higher *training* error, the deeper residual net the lower.

:func:`run_degradation` trains the four nets one after another into ``<output>/<net>/`` with
:func:`backbones.study.pretrain.train.pretrain`, then writes ``curves.csv``, ``degradation.png`` and
``degradation.md`` into ``<output>``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data.classification import DataSpec
from ..pretrain.run import (
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

DEFAULT_DEPTHS = (18, 34)
# The paper's CIFAR-10 schedule (Sec. 4.2): divide the rate by 10 at 1/2 and 3/4 of training.
DEGRADATION_RECIPE = dict(lr=0.1, batch_size=128, schedule="step", steps=(0.5, 0.75))
CSV_FILE, FIGURE_FILE, TABLE_FILE = "curves.csv", "degradation.png", "degradation.md"


@dataclass
class DegradationNet:
    """One of the nets: its name (``plain-18``, ``resnet-34``), depth, kind and folder."""

    name: str
    depth: int
    residual: bool
    output_dir: Path


@dataclass
class DegradationResult:
    """The nets with their curves, and the files written."""

    curves: list[NetCurve]
    csv: Path
    figure: Path
    table: Path


def plan_degradation(
    output_dir: str | os.PathLike, depths: Sequence[int] = DEFAULT_DEPTHS
) -> list[DegradationNet]:
    """The plain nets then the residual nets, each depth in the order given."""
    output, nets = Path(output_dir), []
    for residual in (False, True):
        for depth in depths:
            name = f"{'resnet' if residual else 'plain'}-{depth}"
            nets.append(DegradationNet(name, depth, residual, output / name))
    return nets


def is_finished(output_dir: str | os.PathLike, max_iter: int | None) -> bool:
    """Whether a net's folder holds a finished run (of ``max_iter`` iterations, when given)."""
    result = read_result(output_dir)
    return result.finished and (max_iter is None or result.iteration >= max_iter)


def run_degradation(
    output_dir: str | os.PathLike,
    *,
    data: DataSpec,
    recipe: Recipe,
    depths: Sequence[int] = DEFAULT_DEPTHS,
    resnet_options: dict[str, Any] | None = None,
    num_gpus: int = 1,
    resume: bool = False,
    process_setup: Callable[[], object] | None = None,
) -> DegradationResult:
    """Train the plain and residual nets of ``depths`` with one ``recipe`` on ``data``, then
    write the curves, the figure and the table.

    Args:
        output_dir: each net trains into ``output_dir/<name>``.
        data: the data of every net.
        recipe: the optimisation of every net (give ``max_iter``: the ETA covers all nets).
        depths: two (or more) depths.
        resnet_options: further ``make_resnet`` options of every net (``residual`` is set
            here).
        num_gpus: processes per net (CPU processes without CUDA).
        resume: skip finished nets and continue interrupted ones.
        process_setup: called first in each process of a net (see :func:`pretrain`).

    Returns:
        :class:`DegradationResult`.
    """
    if len(set(depths)) < 2:
        raise ValueError(f"depths={list(depths)}: the experiment compares two or more depths")
    nets = plan_degradation(output_dir, depths)
    todo = [n for n in nets if not (resume and is_finished(n.output_dir, recipe.max_iter))]
    for net in nets:
        if net not in todo:
            logger.info(f"{net.name}: finished in {net.output_dir}, skipped (--resume)")
    for i, net in enumerate(todo):
        # The ETA covers the nets after this one, their cost scaled by depth.
        later = sum((recipe.max_iter or 0) * n.depth / net.depth for n in todo[i + 1 :])
        run = PretrainRun(
            str(net.output_dir),
            net.depth,
            data=data,
            recipe=recipe,
            resnet_options={**(resnet_options or {}), "residual": net.residual},
            resume=resume,
            progress=SeriesProgress(f"[{net.name} {i + 1}/{len(todo)}] ", later),
            after_eval=TrainingCurveWriter(title=net.name),
        )
        pretrain(run, num_gpus=num_gpus, process_setup=process_setup)
    return write_degradation_report(output_dir, depths, data=data, recipe=recipe)


def write_degradation_report(
    output_dir: str | os.PathLike,
    depths: Sequence[int] = DEFAULT_DEPTHS,
    *,
    data: DataSpec | None = None,
    recipe: Recipe | None = None,
) -> DegradationResult:
    """``curves.csv``, ``degradation.png`` and ``degradation.md`` from the nets' folders as they
    are now (unfinished nets with what they have)."""
    output = Path(output_dir)
    curves = [
        NetCurve(n.name, n.depth, n.residual, evaluation_records(n.output_dir / METRICS))
        for n in plan_degradation(output, depths)
    ]
    csv_path = write_curves_csv(curves, output / CSV_FILE)
    title = f"{data.describe()}" if data is not None else ""
    figure = plot_degradation(curves, output / FIGURE_FILE, title=title)
    lines = ["# Degradation: plain vs residual nets", ""]
    if data is not None:
        lines.append(f"Data: {data.describe()}.")
    if recipe is not None:
        settings = {k: v for k, v in dataclasses.asdict(recipe).items() if v is not None}
        lines.append(f"Recipe (every net): `{json.dumps(settings)}`.")
    lines += ["", "Top-1 errors at the last evaluation:", "", final_errors_table(curves)]
    table = output / TABLE_FILE
    table.write_text("\n".join(lines))
    return DegradationResult(curves, csv_path, figure, table)
