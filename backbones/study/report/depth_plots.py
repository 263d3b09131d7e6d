"""The depth report's plots: AP of the runs against depth or GFLOPs, with the references."""

from __future__ import annotations

import datetime
import math
import os
from collections.abc import Sequence
from pathlib import Path

from .runs import PAPER_SOURCE, TASKS, Reference, RunSummary, reference_groups

MARKERS = {PAPER_SOURCE: "*", "detectron2": "s", "mmdetection": "^"}


def plot_ap(
    runs: Sequence[RunSummary], references: Sequence[Reference], path: str | os.PathLike, *, x: str
) -> Path:
    """Plot the compared runs' box AP (and mask AP where present) against ``x`` (``"depth"`` or
    ``"gflops"``) into a PNG, with the references: points (joined within a group; mask AP
    hollow) against depth; box AP as horizontal lines against GFLOPs, which the sources do not
    give. Returns ``path``."""
    # Figure without pyplot: Agg canvas, no global backend or figure state touched.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    small = dict(textcoords="offset points", fontsize=6)
    compared = sorted((run for run in runs if run.compared), key=lambda run: getattr(run, x))
    groups: dict[str, list[RunSummary]] = {}  # one line per detector, design and schedule
    for run in compared:
        groups.setdefault(run.group, []).append(run)
    colours = 0
    for group, members in groups.items():
        for task, label in TASKS.items():
            key = f"{task}/AP"
            points = [(getattr(r, x), r.ap[key], r) for r in members if key in r.ap]
            points = [p for p in points if math.isfinite(p[1])]
            if points:
                xs, ys, _ = zip(*points)
                name = f"runs: {label} AP" if len(groups) == 1 else f"{group}: {label} AP"
                ax.plot(xs, ys, marker="o", lw=1.8, color=f"C{colours}", label=name)
                colours += 1
            for xv, yv, run in points:
                ax.annotate(run.backbone or f"R-{run.depth}", (xv, yv), xytext=(4, 4), **small)

    for g, group in enumerate(reference_groups(references)):
        style = dict(color=f"C{(g + max(colours, 2) + 1) % 10}", ls=":", lw=0.8)
        marker = MARKERS.get(group[0].source, "D")
        ax.plot([], [], marker=marker, label=f"{group[0].source}: {group[0].group}", **style)
        for task, fill in (("bbox", style["color"]), ("segm", "none")):
            key = f"{task}/AP"
            points = [
                (m.depth, m.ap[key], f"{m.backbone} {TASKS[task]}") for m in group if key in m.ap
            ]
            if points and x == "depth":
                depths, values, _ = zip(*points)
                ax.plot(depths, values, marker=marker, mfc=fill, ms=7, **style)
                for depth, value, text in points:
                    ax.annotate(text, (depth, value), xytext=(4, -8), **small)
            elif task == "bbox":
                for _, value, text in points:
                    ax.axhline(value, **style)
                    at = dict(xycoords=ax.get_yaxis_transform(), xytext=(-2, 1), ha="right")
                    ax.annotate(text, (1, value), color=style["color"], **at, **small)
    ax.set_xlabel("depth (weight layers)" if x == "depth" else "GFLOPs (detector, test size)")
    ax.set_ylabel("AP (%)")
    title = "AP against depth" if x == "depth" else "AP against GFLOPs (references: no GFLOPs)"
    ax.set_title(f"{title}, {datetime.date.today().isoformat()}", fontsize=10)
    ax.grid(alpha=0.3)
    legend = dict(fontsize="x-small", title="runs; COCO references", title_fontsize="x-small")
    fig.legend(loc="outside right upper", **legend)
    fig.savefig(path, dpi=100)
    return Path(path)
