"""Loss curves: metrics.json records, running-median smoothing, loss_curve.png and the hook that
writes it."""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from detectron2.engine import HookBase
from detectron2.utils.events import get_event_storage

logger = logging.getLogger(__name__)

# Detectron2 smooths losses with the median of the last 20 values (JSONWriter, metric printer).
SMOOTHING_WINDOW = 20


def _is_loss(name: str) -> bool:
    return name == "total_loss" or name.startswith("loss_")


def load_metrics(path: str | os.PathLike) -> list[dict[str, float]]:
    """Records of Detectron2's ``metrics.json`` (one JSON object per line), sorted by iteration.

    ``JSONWriter`` appends: a resumed run repeats the iterations after its checkpoint and a
    fresh run in the same folder restarts at 0. A record whose iteration is not larger than the
    previous one's therefore drops the earlier records from that iteration on.
    """
    records: list[dict[str, float]] = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            record = json.loads(line)
            if "iteration" not in record:
                continue
            while records and records[-1]["iteration"] >= record["iteration"]:
                records.pop()
            records.append(record)
    return records


def smooth(
    series: Sequence[tuple[int, float]], window: int = SMOOTHING_WINDOW
) -> list[tuple[int, float]]:
    """Running median of the last ``window`` values (Detectron2's smoothing of losses).

    Returns:
        ``(iteration, smoothed value)`` pairs, one per input pair.
    """
    values = [v for _, v in series]
    return [
        (it, float(np.median(values[max(0, i + 1 - window) : i + 1])))
        for i, (it, _) in enumerate(series)
    ]


def plot_loss_curves(
    path: str | os.PathLike,
    *,
    raw: Mapping[str, Sequence[tuple[int, float]]] | None = None,
    smoothed: Mapping[str, Sequence[tuple[int, float]]] | None = None,
) -> Path:
    """Plot ``total_loss`` and each ``loss_*`` against the iteration into a PNG, one panel each.

    Args:
        path: output file.
        raw: per-iteration values by loss name, as ``(iteration, value)`` pairs; thin lines.
        smoothed: smoothed values by loss name (e.g. from ``metrics.json``); bold lines.
            ``None`` means :func:`smooth` of ``raw``.

    Returns:
        ``path``.
    """
    # Figure without pyplot: Agg canvas, no global backend or figure state touched.
    from matplotlib.figure import Figure

    raw = {k: v for k, v in (raw or {}).items() if _is_loss(k) and v}
    if smoothed is None:
        smoothed = {k: smooth(v) for k, v in raw.items()}
    smoothed = {k: v for k, v in smoothed.items() if _is_loss(k) and v}
    names = sorted(set(raw) | set(smoothed), key=lambda k: (k != "total_loss", k))
    if not names:
        raise ValueError("No total_loss or loss_* values to plot")

    ncols = min(3, len(names))
    nrows = math.ceil(len(names) / ncols)
    fig = Figure(figsize=(4.5 * ncols, 3.2 * nrows), layout="constrained")
    for i, name in enumerate(names):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        if name in raw:
            ax.plot(*zip(*raw[name]), lw=0.8, alpha=0.4, color="C0", label="raw")
        if name in smoothed:
            marker = "o" if len(smoothed[name]) < 3 else None
            ax.plot(*zip(*smoothed[name]), lw=1.8, color="C1", marker=marker, label="smoothed")
        ax.set_title(name)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.savefig(path, dpi=100)
    return Path(path)


class LossCurveWriter(HookBase):
    """Write ``loss_curve.png`` into ``output_dir`` every ``period`` iterations and at the end.

    Raw values come from this run's ``EventStorage``, smoothed by :func:`smooth`; a resumed
    training adds the earlier runs' (smoothed) values from ``metrics.json``. Register it on the
    main process only, after Detectron2's ``PeriodicWriter`` so that ``metrics.json`` is current.
    """

    def __init__(self, output_dir: str, period: int = 0, filename: str = "loss_curve.png"):
        self._output_dir = output_dir
        self._period = period
        self._filename = filename

    def after_step(self) -> None:
        if self._period > 0 and (self.trainer.iter + 1) % self._period == 0:
            self.write()

    def after_train(self) -> None:
        self.write()

    def write(self) -> Path | None:
        """Plot now; returns the file, or ``None`` when there was nothing new (or it failed)."""
        try:
            return self._plot()
        except Exception:  # a plot must never stop a training
            logger.exception("Could not write %s", self._filename)
            return None

    def _plot(self) -> Path | None:
        raw = {
            name: [(it, value) for value, it in history.values()]
            for name, history in get_event_storage().histories().items()
            if _is_loss(name)
        }
        path = os.path.join(self._output_dir, self._filename)
        if not any(raw.values()) and os.path.isfile(path):
            return None  # e.g. resuming a finished training: the last plot has more to show
        smoothed = {name: smooth(series) for name, series in raw.items()}
        metrics_file = os.path.join(self._output_dir, "metrics.json")
        if os.path.isfile(metrics_file):
            # Iterations before this run (resumed training): only metrics.json has them.
            start = min((series[0][0] for series in raw.values() if series), default=math.inf)
            earlier: dict[str, list[tuple[int, float]]] = {}
            for record in load_metrics(metrics_file):
                if record["iteration"] >= start:
                    break
                for name in filter(_is_loss, record):
                    earlier.setdefault(name, []).append((record["iteration"], record[name]))
            smoothed = {
                name: earlier.get(name, []) + smoothed.get(name, [])
                for name in set(earlier) | set(smoothed)
            }
        if not any(smoothed.values()):
            return None
        return plot_loss_curves(path, raw=raw, smoothed=smoothed)
