"""Reports of a COCO evaluation (Lin et al., 2014, "Microsoft COCO"): text, JSON, CSV, PR curves.

:func:`write_report` saves :data:`METRICS_FILE` and :data:`PER_CATEGORY_FILE`; values keep
pycocotools' scale, [0, 1] and -1 where undefined (Detectron2 reports x100 and NaN).
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from .cocoeval import STAT_NAMES
from .offline import PER_CATEGORY_METRICS, EvaluationReport, IouTypeReport

METRICS_FILE = "coco_eval_metrics.json"
PER_CATEGORY_FILE = "coco_eval_per_category.csv"
# (IoU, area, maxDets) of each of STAT_NAMES, as pycocotools' summarize() prints them.
_STAT_SETTINGS = [
    ("0.50:0.95", "all", 100),
    ("0.50", "all", 100),
    ("0.75", "all", 100),
    ("0.50:0.95", "small", 100),
    ("0.50:0.95", "medium", 100),
    ("0.50:0.95", "large", 100),
    ("0.50:0.95", "all", 1),
    ("0.50:0.95", "all", 10),
    ("0.50:0.95", "all", 100),
    ("0.50:0.95", "small", 100),
    ("0.50:0.95", "medium", 100),
    ("0.50:0.95", "large", 100),
]


def _fmt(value: float) -> str:
    return "n/a" if value < 0 else f"{value:.4f}"


def format_report(report: EvaluationReport) -> str:
    """The report as text: the 12 numbers (as pycocotools prints them) and per-category AP.

    Args:
        report: what :func:`~.offline.evaluate_results` or :func:`read_report` returned.

    Returns:
        lines without a final newline; "n/a" where a value is undefined (-1).
    """
    lines = [
        f"COCO evaluation with {report.backend}: "
        f"{report.num_results} results on {report.num_images} images"
    ]
    for iou_type, r in report.iou_types.items():
        lines += ["", f"{iou_type}:"]
        for name, (iou, area, max_dets) in zip(STAT_NAMES, _STAT_SETTINGS):
            kind = "Average Precision" if name.startswith("AP") else "Average Recall"
            lines.append(
                f"  {name:<6} {kind:<17} @[ IoU={iou:<9} | area={area:>6} | maxDets={max_dets:>3} ]"
                f" = {_fmt(r.stats[name])}"
            )
        width = max([len("category")] + [len(c["name"]) for c in r.per_category])
        lines += ["", f"  {'category':<{width}} {'id':>6} {'AP':>7} {'AP50':>7} {'AP75':>7}"]
        for c in r.per_category:
            values = " ".join(f"{_fmt(c[m]):>7}" for m in PER_CATEGORY_METRICS)
            lines.append(f"  {c['name']:<{width}} {c['category_id']:>6} {values}")
    lines.append("(n/a: no ground truth in that category or area range)")
    return "\n".join(lines)


def write_report(report: EvaluationReport, output_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write :data:`METRICS_FILE` (JSON) and :data:`PER_CATEGORY_FILE` (CSV) into ``output_dir``.

    Args:
        report: the report to save (its precision arrays are not saved).
        output_dir: folder, created if missing; files there are overwritten.

    Returns:
        ``(json file, csv file)``. Values keep pycocotools' scale: [0, 1], -1 where undefined.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    json_file, csv_file = output_dir / METRICS_FILE, output_dir / PER_CATEGORY_FILE
    json_file.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    with open(csv_file, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["iou_type", "category_id", "name", *PER_CATEGORY_METRICS])
        for iou_type, r in report.iou_types.items():
            for c in r.per_category:
                values = [repr(c[m]) for m in PER_CATEGORY_METRICS]  # repr: exact round trip
                writer.writerow([iou_type, c["category_id"], c["name"], *values])
    return json_file, csv_file


def read_report(path: str | os.PathLike) -> EvaluationReport:
    """A report written by :func:`write_report`.

    Args:
        path: its folder or its JSON file.

    Returns:
        the report, without precision arrays.

    Raises:
        ValueError: naming the file: not JSON, or not a report (a key missing).
    """
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    try:
        return EvaluationReport.from_dict(json.loads(path.read_text()))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from None
    except (KeyError, TypeError, AttributeError) as e:
        raise ValueError(
            f"{path}: not a report written by write_report ({type(e).__name__}: {e})"
        ) from None


def read_per_category_csv(path: str | os.PathLike) -> dict[str, list[dict[str, Any]]]:
    """Per-category rows of a CSV written by :func:`write_report`.

    Args:
        path: its folder or the CSV file.

    Returns:
        IoU type -> ``[{"category_id", "name", "AP", "AP50", "AP75"}, ...]``.
    """
    path = Path(path)
    if path.is_dir():
        path = path / PER_CATEGORY_FILE
    out: dict[str, list[dict[str, Any]]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            out.setdefault(row["iou_type"], []).append(
                {"category_id": int(row["category_id"]), "name": row["name"]}
                | {m: float(row[m]) for m in PER_CATEGORY_METRICS}
            )
    return out


def pr_curves(result: IouTypeReport) -> np.ndarray:
    """Precision-recall curves, one per IoU threshold (.50:.05:.95).

    COCO's interpolated precision at each recall threshold (0:.01:1), averaged over the
    categories with ground truth (area all, maxDets 100): the mean of a curve is the AP at
    its IoU threshold (row 0: AP50), the mean of all is AP. -1 where no category has ground
    truth.

    Args:
        result: metrics of one IoU type, with its precision array.

    Returns:
        ``(10 IoU thresholds, 101 recall thresholds)`` array.

    Raises:
        ValueError: the report was read from a file (no precision array).
    """
    if result.precision is None:
        raise ValueError("No precision array: this report was read from a file")
    p = result.precision[:, :, :, 0, -1]  # (iou, recall, category)
    valid = p > -1
    count = valid.sum(2)
    mean = np.where(valid, p, 0).sum(2) / np.maximum(count, 1)
    return np.where(count > 0, mean, -1.0)


def plot_pr_curves(report: EvaluationReport, output_dir: str | os.PathLike) -> list[Path]:
    """Plot :func:`pr_curves` into ``pr_curve_<iou type>.png`` in ``output_dir``.

    Args:
        report: what :func:`~.offline.evaluate_results` returned (with precision arrays).
        output_dir: folder, created if missing.

    Returns:
        the written files, one per IoU type of ``report`` with a precision array.
    """
    # A figure on an Agg canvas: no pyplot, no global backend or figure state touched.
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    recall = np.linspace(0.0, 1.0, 101)  # COCOeval's recThrs
    iou_thresholds = np.linspace(0.5, 0.95, 10)  # COCOeval's iouThrs
    written = []
    for iou_type, r in report.iou_types.items():
        if r.precision is None:
            continue
        fig = Figure(figsize=(8.0, 4.8), layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        colours = matplotlib.colormaps["viridis"](np.linspace(0, 0.9, len(iou_thresholds)))
        for curve, iou, colour in zip(pr_curves(r), iou_thresholds, colours):
            if (curve >= 0).all():
                label = f"IoU {iou:.2f}: AP {curve.mean():.3f}"
                ax.plot(recall, curve, color=colour, lw=1.5, label=label)
        ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision")
        ax.set_title(f"{iou_type}: AP {_fmt(r.stats['AP'])} ({report.backend})")
        ax.grid(alpha=0.3)
        if ax.lines:
            fig.legend(fontsize="small", loc="outside right upper")
        path = output_dir / f"pr_curve_{iou_type}.png"
        fig.savefig(path, dpi=100)
        written.append(path)
    return written
