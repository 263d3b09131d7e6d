"""Pictures and tables of classifier pretrainings: a run's training curve, and the degradation
experiment of He et al. (2015, Figure 1 and Figure 4 left) as a figure, a CSV and a markdown
table."""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

CURVE_FILE = "training_curve.png"
CSV_COLUMNS = ("model", "depth", "residual", "iter", "train_error", "val_error", "train_loss")


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
    """One net of the degradation experiment and its evaluations (``metrics.json`` records)."""

    name: str
    depth: int
    residual: bool
    records: list[dict[str, float]]


def write_curves_csv(curves: Sequence[NetCurve], path: str | os.PathLike) -> Path:
    """One row per net and evaluation: :data:`CSV_COLUMNS` (errors in %)."""
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
                        r["iter"],
                        f"{r['train_error']:.3f}",
                        f"{r['val_error']:.3f}",
                        f"{r['train_loss']:.5f}",
                    ]
                )
    return Path(path)


def final_errors_table(curves: Sequence[NetCurve]) -> str:
    """A markdown table of each net's last training and validation top-1 errors, with the
    deeper-minus-shallower difference within each kind (positive: degradation)."""
    lines = [
        "| net | depth | iterations | train error (%) | val error (%) | val top-5 error (%) |",
        "|---|---|---|---|---|---|",
    ]
    for c in curves:
        if not c.records:
            lines.append(f"| {c.name} | {c.depth} | 0 | - | - | - |")
            continue
        r = c.records[-1]
        lines.append(
            f"| {c.name} | {c.depth} | {r['iter']} | {r['train_error']:.2f} | "
            f"{r['val_error']:.2f} | {r.get('val_top5_error', float('nan')):.2f} |"
        )
    notes = []
    for residual, kind in ((False, "plain"), (True, "residual")):
        done = sorted((c for c in curves if c.residual == residual and c.records), key=_depth)
        if len(done) >= 2:
            shallow, deep = done[0], done[-1]
            train = deep.records[-1]["train_error"] - shallow.records[-1]["train_error"]
            val = deep.records[-1]["val_error"] - shallow.records[-1]["val_error"]
            notes.append(
                f"- {kind}: {deep.name} minus {shallow.name}: training error {train:+.2f}, "
                f"validation error {val:+.2f} points"
            )
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def _depth(curve: NetCurve) -> int:
    return curve.depth


def plot_degradation(
    curves: Sequence[NetCurve], path: str | os.PathLike, *, title: str = ""
) -> Path:
    """He et al.'s Figure 4 (left: plain nets, right: residual nets): top-1 error against the
    iteration, training error dashed, validation error bold, one colour per depth.

    Returns:
        ``path``.
    """
    from matplotlib.figure import Figure

    depths = sorted({c.depth for c in curves})
    colours = {d: f"C{i}" for i, d in enumerate(depths)}
    fig = Figure(figsize=(11, 4), layout="constrained")
    panels = {False: fig.add_subplot(1, 2, 1), True: fig.add_subplot(1, 2, 2)}
    top = max((max(r["train_error"], r["val_error"]) for c in curves for r in c.records), default=1)
    for residual, ax in panels.items():
        for c in (c for c in curves if c.residual == residual):
            if not c.records:
                continue
            iters = [r["iter"] for r in c.records]
            colour = colours[c.depth]
            ax.plot(iters, [r["train_error"] for r in c.records], "--", lw=1, color=colour)
            ax.plot(iters, [r["val_error"] for r in c.records], lw=2.2, color=colour, label=c.name)
        ax.set_title("residual networks" if residual else "plain networks")
        ax.set_xlabel("iteration")
        ax.set_ylabel("top-1 error (%)")
        ax.set_ylim(0, min(100, top * 1.05 + 1))
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(title="dashed: training, bold: validation", fontsize="small")
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=100)
    return Path(path)
