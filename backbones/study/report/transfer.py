"""Pretrained depth -> detection at small scale: the detectors fine-tuned from each seed's
pretrained net and trained from scratch (``<root>/detection/<arm>/seed<k>/<run>``), their box and
mask AP per depth as mean ± standard deviation over the seeds, as a CSV, a markdown table (with
the pretrained nets' validation error) and a figure of AP against depth with error bars."""

from __future__ import annotations

import csv
import math
import os
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ...engine.hooks import load_metrics
from ..pretrain.run import METRICS, evaluation_records
from .runs import ap_values

ARMS = ("pretrained", "scratch")
AP_KEYS = ("bbox/AP", "bbox/AP50", "segm/AP")
CSV_NAME, TABLE_NAME, FIGURE_NAME = (
    "pretrained_vs_scratch.csv", "pretrained_vs_scratch.md", "pretrained_vs_scratch.png",
)  # fmt: skip
RUN_NAME = "mrcnn_r{depth}_shapes"


@dataclass
class DetectorResult:
    """One detector run: its arm, depth, seed, iterations and final APs (empty: no evaluation)."""

    arm: str
    depth: int
    seed: int
    iterations: int
    ap: dict[str, float]


def read_detector(path: Path, arm: str, depth: int, seed: int) -> DetectorResult:
    """The last evaluation in ``path/metrics.json`` (Detectron2's writer), and the iterations."""
    records = load_metrics(path / "metrics.json") if (path / "metrics.json").is_file() else []
    aps = [ap for ap in (ap_values(r) for r in records) if ap]
    # The training's records (Detectron2 writes the final evaluation one iteration later).
    trained = [r for r in records if "total_loss" in r]
    iterations = max((int(r["iteration"]) + 1 for r in trained), default=0)
    return DetectorResult(arm, depth, seed, iterations, aps[-1] if aps else {})


def read_detectors(
    root: str | os.PathLike, depths: Sequence[int], seeds: int
) -> list[DetectorResult]:
    root = Path(root)
    return [
        read_detector(root / "detection" / arm / f"seed{seed}" / RUN_NAME.format(depth=depth),
                      arm, depth, seed)
        for arm in ARMS for depth in depths for seed in range(seeds)
    ]  # fmt: skip


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value; NaN for none)."""
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _cell(values: Sequence[float], digits: int = 1) -> str:
    if not values:
        return "-"
    mean, std = mean_std(values)
    return f"{mean:.{digits}f} ± {std:.{digits}f} ({len(values)})"


def pretraining_errors(root: Path, depth: int, seeds: int) -> list[float]:
    """The final validation top-1 errors of the pretrained residual nets of ``depth``."""
    errors = []
    for seed in range(seeds):
        records = evaluation_records(
            root / "degradation" / f"resnet-{depth}" / f"seed{seed}" / METRICS
        )
        if records:
            errors.append(records[-1]["val_error"])
    return errors


def write_transfer_report(root: str | os.PathLike, depths: Sequence[int], *, seeds: int) -> Path:
    """``pretrained_vs_scratch.csv`` (a row per run), ``.md`` (mean ± std (n) per depth and arm,
    the difference of the means) and ``.png`` (AP against depth, error bars of ± 1 std) in
    ``root``; returns the markdown file."""
    root = Path(root)
    results = read_detectors(root, depths, seeds)
    with open(root / CSV_NAME, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["arm", "depth", "seed", "iterations", *AP_KEYS])
        for r in results:
            writer.writerow(
                [r.arm, r.depth, r.seed, r.iterations]
                + [f"{r.ap[k]:.3f}" if k in r.ap else "" for k in AP_KEYS]
            )
    values = {
        (arm, depth, key): [r.ap[key] for r in results
                            if r.arm == arm and r.depth == depth and key in r.ap]
        for arm in ARMS for depth in depths for key in AP_KEYS
    }  # fmt: skip
    header = ["depth", "pretraining val error (%)"]
    for key in ("bbox/AP", "segm/AP"):
        header += [f"{key} pretrained", f"{key} scratch", "difference"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for depth in depths:
        cells = [f"R-{depth}", _cell(pretraining_errors(root, depth, seeds))]
        for key in ("bbox/AP", "segm/AP"):
            pre, scr = values["pretrained", depth, key], values["scratch", depth, key]
            diff = "-" if not pre or not scr else f"{mean_std(pre)[0] - mean_std(scr)[0]:+.1f}"
            cells += [_cell(pre), _cell(scr), diff]
        lines.append("| " + " | ".join(cells) + " |")
    path = root / TABLE_NAME
    path.write_text(
        "# Mask R-CNN on shapes: fine-tuned from the pretrained ResNet vs from scratch\n\n"
        "AP in points, mean ± standard deviation over the seeds (number of runs); the\n"
        "difference is of the means. Pretraining error: the pretrained nets' final validation\n"
        "top-1 error on the synthetic classes.\n\n" + "\n".join(lines) + "\n"
    )
    plot_transfer(values, depths, root / FIGURE_NAME)
    return path


def plot_transfer(
    values: dict[tuple[str, int, str], list[float]], depths: Sequence[int], path: Path
) -> Path:
    """Box AP and mask AP against depth, both arms, mean with ± 1 std error bars."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.6), layout="constrained")
    for index, (key, title) in enumerate((("bbox/AP", "box AP"), ("segm/AP", "mask AP"))):
        ax = fig.add_subplot(1, 2, index + 1)
        for arm, colour, shift in (("pretrained", "C0", -0.6), ("scratch", "C1", 0.6)):
            xs, means, stds = [], [], []
            for depth in depths:
                if values[arm, depth, key]:
                    mean, std = mean_std(values[arm, depth, key])
                    xs.append(depth + shift)
                    means.append(mean)
                    stds.append(std)
            if xs:
                ax.errorbar(xs, means, yerr=stds, marker="o", capsize=4, color=colour, label=arm)
        ax.set_xticks(list(depths), [f"R-{d}" for d in depths])
        ax.set_xlabel("backbone depth")
        ax.set_ylabel(f"{title} (points)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(
                title="error bars: ± 1 std over seeds", fontsize="small", title_fontsize="small"
            )
    fig.savefig(path, dpi=100)
    return path
