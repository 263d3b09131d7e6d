"""The depth report: COCO AP, parameters and GFLOPs of Detectron2 runs by ResNet depth, and the
gain of each over the shallowest, beside He et al. (2015)'s Table 8 and the model zoos' figures
(and, for a run of a zoo checkpoint, its difference to the zoo's published AP), as CSV, markdown
and plots (the runs and references are read by :mod:`.runs`)."""

from __future__ import annotations

import csv
import datetime
import io
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ...progress import Progress
from ...weights.formats import atomic_write
from .depth_plots import plot_ap
from .runs import (
    AP_METRICS,
    REFERENCES_FILE,
    TASKS,
    Reference,
    RunSummary,
    add_gains,
    load_references,
    match_zoo,
    read_run,
    select_references,
)

logger = logging.getLogger(__name__)

# COCO val2017 as Detectron2 registers it: the data the zoo's published figures are measured on.
ZOO_DATASET = "coco_2017_val"
FILES = {
    "csv": "depth_report.csv",
    "markdown": "depth_report.md",
    "depth": "depth_report_ap_vs_depth.png",
    "gflops": "depth_report_ap_vs_gflops.png",
}


@dataclass
class DepthReport:
    """What :func:`depth_report` read and wrote: ``files`` maps ``csv``, ``markdown``,
    ``depth`` and ``gflops`` (the plots) to their paths."""

    runs: list[RunSummary]
    base: RunSummary | None
    references: list[Reference]
    files: dict[str, Path]


def sort_ap_keys(keys: Iterable[str]) -> list[str]:
    """AP metric names, once each, in report order (box before mask, AP before AP50)."""

    def order(key: str) -> tuple:
        task, metric = key.split("/")
        return (*TASKS, task).index(task), task, AP_METRICS.index(metric)

    return sorted(set(keys), key=order)


def ap_columns(runs: Iterable[RunSummary]) -> list[str]:
    """The AP metrics of the runs, in report order (box before mask, AP before AP50)."""
    return sort_ap_keys(key for run in runs for key in run.ap)


def zoo_columns(runs: Iterable[RunSummary]) -> list[str]:
    """The metrics the zoo publishes for the runs' zoo models, in report order."""
    return sort_ap_keys(key for run in runs if run.zoo for key in run.zoo.ap)


def _number(value: float | None, digits: int) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    return str(round(value, digits)) if isinstance(value, float) else str(value)


def format_csv(runs: Sequence[RunSummary]) -> str:
    """One row per run: ``run``, ``depth``, ``params``, ``gflops``, the AP columns
    (``bbox/AP``, ...), for each ``<AP>_gain`` and ``<AP>_gain_rel``, then ``status``,
    ``iteration``, ``max_iter`` and ``run_dir``; empty cells for unknown or NaN values. When a
    run evaluated a model-zoo checkpoint, then ``zoo`` (the zoo's config name) and for each
    metric the zoo publishes ``<AP>_zoo`` (its figure) and ``<AP>_zoo_diff`` (ours minus it)."""
    columns = ap_columns(runs)
    gain_columns = [f"{c}{suffix}" for c in columns for suffix in ("_gain", "_gain_rel")]
    zoo = [f"{c}{suffix}" for c in zoo_columns(runs) for suffix in ("_zoo", "_zoo_diff")]
    header = ["run", "depth", "params", "gflops", *columns, *gain_columns]
    header += ["status", "iteration", "max_iter", "run_dir"]
    header += ["zoo", *zoo] if zoo else []
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for run in runs:
        values = {**run.ap, **run.gains, **run.zoo_values()}
        zoo_cells = [run.zoo.zoo if run.zoo else ""] + [_number(values.get(c), 4) for c in zoo]
        writer.writerow(
            [run.name, _number(run.depth, 0), _number(run.params, 0), _number(run.gflops, 4)]
            + [_number(values.get(c), 4) for c in columns + gain_columns]
            + [run.status, _number(run.iteration, 0), _number(run.max_iter, 0), str(run.path)]
            + (zoo_cells if zoo else [])
        )
    return buffer.getvalue()


def _gain_text(item: RunSummary | Reference, key: str, base: bool) -> str:
    if base:
        return "base"
    points, rel = item.gains.get(f"{key}_gain"), item.gains.get(f"{key}_gain_rel")
    if points is None or not math.isfinite(points):
        return ""
    return f"{points:+.1f}" + (f" ({rel:+.1f}%)" if rel is not None and math.isfinite(rel) else "")


def _ap_cells(item: RunSummary | Reference, keys: Sequence[str], base: bool) -> list[str]:
    """The values of ``keys`` (one decimal), each ``*/AP`` followed by its gain."""
    cells = []
    for key in keys:
        cells.append(_number(item.ap.get(key), 1))
        if key.endswith("/AP"):
            cells.append(_gain_text(item, key, base) if key in item.ap else "")
    return cells


def _zoo_cells(run: RunSummary, keys: Sequence[str]) -> list[str]:
    """For each of ``keys``: the zoo's published AP and ours minus it (one decimal)."""
    values = run.zoo_values()
    cells = []
    for key in keys:
        diff = values.get(f"{key}_zoo_diff")
        cells.append(_number(values.get(f"{key}_zoo"), 1))
        cells.append(f"{diff:+.1f}" if diff is not None and math.isfinite(diff) else "")
    return cells


def _ap_headers(keys: Sequence[str]) -> list[str]:
    names = [(TASKS.get(k.split("/")[0], k), k.split("/")[1]) for k in keys]
    return sum(([f"{t} {m}"] + ["gain"] * (m == "AP") for t, m in names), [])


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], right_from: int) -> list[str]:
    align = ["---" if i < right_from else "---:" for i in range(len(header))]
    return [f"| {' | '.join(line)} |" for line in (header, align, *rows)]


def format_markdown(
    runs: Sequence[RunSummary],
    base: RunSummary | None,
    references: Sequence[Reference],
    sources: Mapping[str, Mapping[str, str]],
) -> str:
    """The report as Markdown: the compared runs with their gains, the runs left out and why,
    the reference models with their gains within their group, the sources, the plots."""
    compared = [run for run in runs if run.compared]
    datasets = sorted({run.dataset for run in compared if run.dataset})
    lines = ["# Depth report", ""]
    lines += [
        f"Written {datetime.date.today().isoformat()} from {len(runs)} run directories. AP in "
        "percent (COCO AP@[.5:.95], AP50 at IoU .5); a gain is in points over the shallowest "
        "compared run of the same detector, design and schedule, and relative to it in "
        "percent.\n\n## Runs\n"
    ]
    if compared:
        keys = [f"{task}/AP" for task in TASKS if any(f"{task}/AP" in r.ap for r in compared)]
        zoo_keys = [k for k in zoo_columns(compared) if k.endswith("/AP")]
        header = ["Run", "Model", "Depth", "Params (M)", "GFLOPs", *_ap_headers(keys)]
        for key in zoo_keys:
            header += [f"zoo {TASKS[key.split('/')[0]]} AP", "ours - zoo"]
        rows = [
            [f"`{r.name}`", r.label, str(r.depth), f"{r.params / 1e6:.1f}", f"{r.gflops:.2f}"]
            + _ap_cells(r, keys, r.is_base)
            + _zoo_cells(r, zoo_keys)
            for r in compared
        ]
        lines += _table(header, rows, right_from=2) + [""]
        bases = [r for r in compared if r.is_base]
        if len(bases) == 1:
            based = f"base: `{bases[0].name}`"
        else:
            based = "bases: " + ", ".join(f"`{r.name}` ({r.group})" for r in bases)
        lines += [f"Evaluated on {', '.join(datasets) or 'DATASETS.TEST'}; {based}."]
        if zoo_keys:
            lines += _zoo_note(compared)
    else:
        lines += ["No run is finished and evaluated: nothing to compare."]
    left_out = [run for run in runs if not run.compared]
    if left_out:
        lines += ["", "Not compared (no gain, not plotted):", ""]
        lines += [f"- `{run.name}` ({run.path}): {run.reason}" for run in left_out]

    lines += [
        "\n## References\n\nPublished COCO val figures: the paper's VGG-16 -> ResNet-101 "
        "comparison and the model zoos' models of the runs' detector and design. A gain is over "
        "the shallowest model of the same source, detector, design and schedule. These APs are "
        "on COCO, not on the runs' data: compare the gains, not the APs.\n"
    ]
    keys = [k for k in ("bbox/AP", "bbox/AP50", "segm/AP") if any(k in m.ap for m in references)]
    numbers = {source: i + 1 for i, source in enumerate(sources)}
    rows = [
        [f"[{numbers[m.source]}]", m.label, str(m.depth), *_ap_cells(m, keys, m.is_base)]
        for m in references
    ]
    lines += _table(["Source", "Model", "Depth", *_ap_headers(keys)], rows, right_from=2)
    lines += ["", "Sources:", ""]
    lines += [f"{numbers[k]}. {s['name']}: <{s['url']}>" for k, s in sources.items()]
    lines += ["", "## Plots", "", f"![AP against depth]({FILES['depth']})", ""]
    lines += [f"![AP against GFLOPs]({FILES['gflops']})", ""]
    return "\n".join(lines)


def _zoo_note(runs: Sequence[RunSummary]) -> list[str]:
    lines = [
        "",
        "zoo: Detectron2's published AP of the model-zoo checkpoint a run evaluated "
        "(`MODEL.WEIGHTS`); ours - zoo in points. On COCO val2017 (`coco_2017_val`) the zoo's "
        "checkpoint through our backbone should match its published AP to about 0.1.",
    ]
    other = [r for r in runs if r.zoo and r.dataset != ZOO_DATASET]
    if other:
        names = ", ".join(f"`{r.name}` ({r.dataset or 'no DATASETS.TEST'})" for r in other)
        lines += [
            "",
            f"Not evaluated on `{ZOO_DATASET}`: {names}; their difference to the zoo is no "
            "measure of the backbone.",
        ]
    return lines


def write_depth_report(
    run_dirs: Sequence[str | os.PathLike],
    output_dir: str | os.PathLike,
    *,
    references_file: str | os.PathLike = REFERENCES_FILE,
) -> DepthReport:
    """Read the runs and write the report into ``output_dir``: ``depth_report.csv``
    (:func:`format_csv`), ``depth_report.md`` (:func:`format_markdown`),
    ``depth_report_ap_vs_depth.png`` and ``depth_report_ap_vs_gflops.png`` (:func:`plot_ap`).

    Args:
        run_dirs: Detectron2 output directories, in the order of the report's rows; runs are
            named by their folder, or by the path as given when two folders share a name.
        output_dir: created if needed.
        references_file: the published figures (:data:`REFERENCES_FILE` layout).

    Returns:
        the runs read, the base of the first run's gains (:func:`.runs.add_gains`), the
        references shown and the files written.
    """
    names = [Path(d).name for d in run_dirs]
    # Reading a run counts its detector's FLOPs: seconds each on a CPU.
    runs = []
    with Progress(len(run_dirs), what="reading runs", logger=logger, unit="runs") as progress:
        for d, name in zip(run_dirs, names):
            runs.append(read_run(d, name=str(d) if names.count(name) > 1 else name))
            progress.update()
    base = add_gains(runs)
    references = load_references(references_file)
    match_zoo(runs, references)
    shown = select_references(references, runs)
    sources = {k: v for k, v in references.sources.items() if any(m.source == k for m in shown)}
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    files = {key: output / name for key, name in FILES.items()}
    texts = {"csv": format_csv(runs), "markdown": format_markdown(runs, base, shown, sources)}
    for key, text in texts.items():
        atomic_write(files[key], lambda f, text=text: f.write(text.encode("utf-8")))
    for x in ("depth", "gflops"):
        plot_ap(runs, shown, files[x], x=x)
    return DepthReport(runs, base, shown, files)
