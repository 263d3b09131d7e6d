"""Pictures and tables of classifier pretrainings: a run's training curve, and the degradation
experiment of He et al. (2015, Figure 1 and Figure 4 left) as a figure, a CSV and a markdown
table."""

from __future__ import annotations

import csv
import os
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

CURVE_FILE = "training_curve.png"
CSV_COLUMNS = (
    "model", "depth", "residual", "seed", "iter", "train_error", "val_error", "train_loss",
)  # fmt: skip


def plot_training_curve(
    records: Sequence[Mapping[str, float]], path: str | os.PathLike, *, title: str = ""
) -> Path:
    """Loss and top-1 / top-5 error against the iteration, from ``metrics.json`` records.

    Left: training loss (dashed) and validation loss (bold); right: training top-1 error
    (dashed), validation top-1 error (bold) and top-5 error (dotted), in %.

    Returns:
        ``path``.
    """
    from matplotlib.figure import Figure

    if not records:
        raise ValueError(f"{path}: no evaluation records to plot")
    iters = [r["iter"] for r in records]
    marker = "o" if len(records) < 3 else None
    fig = Figure(figsize=(10, 3.6), layout="constrained")
    loss, error = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    loss.plot(iters, [r["train_loss"] for r in records], "--", color="C0", label="train")
    loss.plot(iters, [r["val_loss"] for r in records], lw=2, color="C0", marker=marker, label="val")
    error.plot(iters, [r["train_error"] for r in records], "--", color="C1", label="train top-1")
    error.plot(
        iters, [r["val_error"] for r in records], lw=2, color="C1", marker=marker, label="val top-1"
    )
    error.plot(iters, [r["val_top5_error"] for r in records], ":", color="C2", label="val top-5")
    for ax, name in ((loss, "loss"), (error, "error (%)")):
        ax.set_xlabel("iteration")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=100)
    return Path(path)


class TrainingCurveWriter:
    """``after_eval`` of a :class:`~backbones.study.pretrain.run.PretrainRun`: redraws
    ``<output_dir>/training_curve.png`` after each evaluation (picklable, for CPU processes)."""

    def __init__(self, title: str = "", filename: str = CURVE_FILE) -> None:
        self.title, self.filename = title, filename

    def __call__(self, output_dir: str, records: Sequence[Mapping[str, float]]) -> Path:
        return plot_training_curve(records, Path(output_dir) / self.filename, title=self.title)


# ---------------------------------------------------------------------------------------------
# The degradation experiment


@dataclass
class NetCurve:
    """One run of the degradation experiment (a net and a seed) and its evaluations
    (``metrics.json`` records)."""

    name: str
    depth: int
    residual: bool
    records: list[dict[str, float]]
    seed: int = 0


@dataclass
class MeanCurve:
    """A net's runs over its seeds: at each iteration every seed evaluated, the mean and the
    (sample) standard deviation of each error, in %; ``seeds`` the seeds with records."""

    name: str
    depth: int
    residual: bool
    seeds: list[int]
    iters: list[int]
    mean: dict[str, list[float]]
    std: dict[str, list[float]]


MEAN_KEYS = ("train_error", "val_error", "train_loss")


def mean_curves(curves: Sequence[NetCurve]) -> list[MeanCurve]:
    """The runs grouped by net (in first-seen order), averaged over their seeds at the iterations
    that all of them reached (a standard deviation of 0 for one seed)."""
    groups: dict[str, list[NetCurve]] = {}
    for curve in curves:
        groups.setdefault(curve.name, []).append(curve)
    out = []
    for name, runs in groups.items():
        done = [run for run in runs if run.records]
        by_iter = [{int(r["iter"]): r for r in run.records} for run in done]
        iters = sorted(set.intersection(*(set(b) for b in by_iter))) if by_iter else []
        mean: dict[str, list[float]] = {k: [] for k in MEAN_KEYS}
        std: dict[str, list[float]] = {k: [] for k in MEAN_KEYS}
        for it in iters:
            for key in MEAN_KEYS:
                values = [b[it][key] for b in by_iter]
                mean[key].append(statistics.fmean(values))
                std[key].append(statistics.stdev(values) if len(values) > 1 else 0.0)
        first = runs[0]
        out.append(
            MeanCurve(name, first.depth, first.residual, [r.seed for r in done], iters, mean, std)
        )
    return out


def write_curves_csv(curves: Sequence[NetCurve], path: str | os.PathLike) -> Path:
    """One row per run (net and seed) and evaluation: :data:`CSV_COLUMNS` (errors in %)."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for curve in curves:
            for r in curve.records:
                writer.writerow(
                    [
                        curve.name,
                        curve.depth,
                        curve.residual,
                        curve.seed,
                        r["iter"],
                        f"{r['train_error']:.3f}",
                        f"{r['val_error']:.3f}",
                        f"{r['train_loss']:.5f}",
                    ]
                )
    return Path(path)


def _last(values: Sequence[float]) -> float:
    return values[-1] if values else float("nan")


def final_errors_table(curves: Sequence[NetCurve]) -> str:
    """A markdown table of each net's training and validation top-1 errors at the last iteration
    all its seeds reached, as mean ± standard deviation over the seeds, with the
    deeper-minus-shallower difference of the means within each kind (positive: degradation)."""
    lines = [
        "| net | depth | seeds | iterations | train error (%) | val error (%) | train loss |",
        "|---|---|---|---|---|---|---|",
    ]
    means = mean_curves(curves)
    for m in means:
        if not m.iters:
            lines.append(f"| {m.name} | {m.depth} | 0 | 0 | - | - | - |")
            continue
        cells = [
            f"{_last(m.mean[k]):.{d}f} ± {_last(m.std[k]):.{d}f}"
            for k, d in (("train_error", 2), ("val_error", 2), ("train_loss", 3))
        ]
        lines.append(
            f"| {m.name} | {m.depth} | {len(m.seeds)} | {m.iters[-1]} | " + " | ".join(cells) + " |"
        )
    notes = []
    for residual, kind in ((False, "plain"), (True, "residual")):
        done = sorted((m for m in means if m.residual == residual and m.iters), key=_depth)
        for shallow, deep in zip(done, done[1:]):
            train = _last(deep.mean["train_error"]) - _last(shallow.mean["train_error"])
            val = _last(deep.mean["val_error"]) - _last(shallow.mean["val_error"])
            notes.append(
                f"- {kind}: {deep.name} minus {shallow.name}: training error {train:+.2f}, "
                f"validation error {val:+.2f} points (means)"
            )
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def _depth(curve: MeanCurve) -> int:
    return curve.depth


def plot_degradation(
    curves: Sequence[NetCurve], path: str | os.PathLike, *, title: str = ""
) -> Path:
    """He et al.'s Figure 4 (left: plain nets, right: residual nets): top-1 error against the
    iteration, the mean over the seeds (training error dashed, validation error bold) in a band
    of ± one standard deviation, one colour per depth.

    Returns:
        ``path``.
    """
    from matplotlib.figure import Figure

    means = mean_curves(curves)
    depths = sorted({m.depth for m in means})
    colours = {d: f"C{i}" for i, d in enumerate(depths)}
    fig = Figure(figsize=(11, 4), layout="constrained")
    panels = {False: fig.add_subplot(1, 2, 1), True: fig.add_subplot(1, 2, 2)}
    tops = [
        v + s
        for m in means
        for k in ("train_error", "val_error")
        for v, s in zip(m.mean[k], m.std[k])
    ]
    top = max(tops, default=1)
    lows = [
        v - s
        for m in means
        for k in ("train_error", "val_error")
        for v, s in zip(m.mean[k], m.std[k])
    ]
    # Zoomed to the curves (a run near chance all the time would leave most of 0-100 empty).
    bottom = max(0.0, 10 * (min(lows, default=0.0) // 10) - 5)
    for residual, ax in panels.items():
        for m in (m for m in means if m.residual == residual and m.iters):
            colour = colours[m.depth]
            for key, style, width in (("train_error", "--", 1), ("val_error", "-", 2.2)):
                mean, std = m.mean[key], m.std[key]
                label = f"{m.name} ({len(m.seeds)} seed{'s' if len(m.seeds) > 1 else ''})"
                ax.plot(
                    m.iters, mean, style, lw=width, color=colour,
                    label=label if key == "val_error" else None,
                )  # fmt: skip
                low = [a - b for a, b in zip(mean, std)]
                high = [a + b for a, b in zip(mean, std)]
                ax.fill_between(m.iters, low, high, color=colour, alpha=0.15, lw=0)
        ax.set_title("residual networks" if residual else "plain networks")
        ax.set_xlabel("iteration")
        ax.set_ylabel("top-1 error (%)")
        ax.set_ylim(bottom, min(100, top * 1.02 + 1))
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(
                title="dashed: training, bold: validation\nbands: ± 1 std over seeds",
                fontsize="small",
                title_fontsize="small",
            )
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=100)
    return Path(path)
