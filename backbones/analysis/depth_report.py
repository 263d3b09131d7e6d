"""The depth report: COCO AP, parameters and GFLOPs of Detectron2 runs by ResNet depth, and the
gain of each over the shallowest, beside He et al. (2015)'s Table 8 and the model zoos' figures.

A run is a Detectron2 ``OUTPUT_DIR`` as the trainer leaves it: ``config.yaml`` (the depth, the
detector, ``SOLVER.MAX_ITER``; parameters and GFLOPs from :func:`detector_complexity`),
``metrics.json`` (the last evaluation's ``bbox/AP``, ``segm/AP50``, ... and the last training
iteration; ``inference/<DATASETS.TEST[0]>/coco_metrics.json`` when it has no evaluation) and
``model_final.pth``. Runs that did not finish, have no evaluation or no readable config are
listed with the reason, never dropped, and left out of the gains and the plots.
"""

from __future__ import annotations

import csv
import datetime
import io
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from detectron2.config import CfgNode

from ..engine import load_cfg, load_metrics
from ..weights.formats import atomic_write
from .complexity import detector_complexity

REFERENCES_FILE = Path(__file__).with_name("references.yaml")
# The ResNet paper's rows, shown in every report (its key in REFERENCES_FILE's sources).
PAPER_SOURCE = "he2015"
# Detectron2's COCOEvaluator tasks and summary metrics, in report order; per-class APs
# (bbox/AP-circle) are left out.
TASKS = {"bbox": "box", "segm": "mask", "keypoints": "keypoint"}
AP_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
# What read_run says of a run: only FINISHED runs (finished and evaluated) are compared.
FINISHED, UNFINISHED = "finished", "unfinished"
NO_EVALUATION, NO_CONFIG = "no evaluation", "no config"
# load_cfg options for a config.yaml left by a run: MODEL.WEIGHTS may be gone, and so may the
# files of the COCO datasets it registered; the config dump already holds the input settings.
READ_OPTS = ["BACKBONES.INPUT_FROM_WEIGHTS", "off", "MODEL.DEVICE", "cpu"]
READ_OPTS += ["BACKBONES.COCO_DATASETS", "[]"]
FILES = {
    "csv": "depth_report.csv",
    "markdown": "depth_report.md",
    "depth": "depth_report_ap_vs_depth.png",
    "gflops": "depth_report_ap_vs_gflops.png",
}


@dataclass
class RunSummary:
    """One run directory as the report sees it.

    ``ap`` maps Detectron2's metric names (``bbox/AP``, ``segm/AP50``, ...) to the last
    evaluation's values; ``gains`` maps ``<metric>_gain`` (points) and ``<metric>_gain_rel``
    (percent) to the gain over the shallowest finished run (:func:`add_gains`).
    """

    name: str
    path: Path
    status: str = NO_CONFIG
    reason: str = ""  # why the run is not compared
    depth: int | None = None
    detector: str = ""  # "Faster R-CNN", "Mask R-CNN", "RetinaNet"
    design: str = ""  # "FPN", "C4", "DC5"
    params: int | None = None
    gflops: float | None = None
    iteration: int | None = None  # the last training iteration in metrics.json
    max_iter: int | None = None
    dataset: str = ""  # DATASETS.TEST[0]
    ap: dict[str, float] = field(default_factory=dict)
    gains: dict[str, float] = field(default_factory=dict)

    @property
    def compared(self) -> bool:
        return self.status == FINISHED


@dataclass
class Reference:
    """One published model of :data:`REFERENCES_FILE` (see its header for the fields)."""

    source: str
    detector: str
    design: str
    backbone: str
    depth: int
    schedule: str
    group: str  # models of one source and group are compared (default: detector design schedule)
    ap: dict[str, float]
    gains: dict[str, float] = field(default_factory=dict)  # over the group's shallowest
    is_base: bool = False  # the group's shallowest, in a group of two or more

    @property
    def label(self) -> str:
        return f"{self.detector} {self.backbone}-{self.design} {self.schedule}".strip()


@dataclass
class References:
    """:data:`REFERENCES_FILE` read: ``sources`` (key -> ``{"name", "url"}``) and ``models``."""

    sources: dict[str, dict[str, str]]
    models: list[Reference]


@dataclass
class DepthReport:
    """What :func:`depth_report` read and wrote: ``files`` maps ``csv``, ``markdown``,
    ``depth`` and ``gflops`` (the plots) to their paths."""

    runs: list[RunSummary]
    base: RunSummary | None
    references: list[Reference]
    files: dict[str, Path]


def ap_values(record: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The summary APs of a metrics record (``bbox/AP``, ``segm/AP50``, ...); with ``prefix``,
    those under ``<prefix>/`` (Detectron2's names with several test sets), prefix removed."""
    found = {}
    for key, value in record.items():
        if prefix:
            if not key.startswith(prefix + "/"):
                continue
            key = key[len(prefix) + 1 :]
        _, slash, metric = key.partition("/")
        if slash and metric in AP_METRICS:
            found[key] = float(value)
    return found


def detector_kind(cfg: CfgNode) -> tuple[str, str]:
    """The detector and design of a config, as :data:`REFERENCES_FILE` names them."""
    if cfg.MODEL.META_ARCHITECTURE == "RetinaNet":
        return "RetinaNet", "FPN"
    detector = "Mask R-CNN" if cfg.MODEL.MASK_ON else "Faster R-CNN"
    if cfg.MODEL.META_ARCHITECTURE != "GeneralizedRCNN":
        detector = cfg.MODEL.META_ARCHITECTURE
    if "fpn" in cfg.MODEL.BACKBONE.NAME:
        return detector, "FPN"
    return detector, "DC5" if cfg.MODEL.RESNETS.RES5_DILATION == 2 else "C4"


_COMPLEXITY: dict[str, dict[str, Any]] = {}  # by config dump: runs of one config count once


def _complexity(cfg: CfgNode) -> dict[str, Any]:
    key = cfg.dump()
    if key not in _COMPLEXITY:
        _COMPLEXITY[key] = detector_complexity(cfg)
    return _COMPLEXITY[key]


def _coco_metrics_ap(path: Path, dataset: str) -> dict[str, float]:
    """APs of ``inference/<dataset>/coco_metrics.json`` (FasterCOCOEvaluator's file)."""
    file = path / "inference" / dataset / "coco_metrics.json"
    if not dataset or not file.is_file():
        return {}
    results = json.loads(file.read_text())  # {"bbox": {"AP": ...}, "segm": {...}}
    return ap_values({f"{t}/{m}": v for t, ms in results.items() for m, v in ms.items()})


def read_run(run_dir: str | os.PathLike, *, name: str | None = None) -> RunSummary:
    """Read one run directory (see the module docstring); never raises for a broken run.

    A run is finished when ``model_final.pth`` exists or its last training iteration is
    ``SOLVER.MAX_ITER - 1``; its APs are those of the last evaluation record in
    ``metrics.json``.

    Args:
        run_dir: a Detectron2 ``OUTPUT_DIR``.
        name: the run's name in the report; default the folder's name.
    """
    path = Path(run_dir)
    run = RunSummary(name or path.name, path)
    config_file = path / "config.yaml"
    if not config_file.is_file():
        run.reason = f"no config.yaml in {path}"
        return run
    try:
        cfg = load_cfg(str(config_file), READ_OPTS)
    except Exception as e:  # another plugin's keys, a damaged file: listed, not fatal
        run.reason = f"config.yaml not readable: {type(e).__name__}: {e}"
        return run
    run.depth, run.max_iter = cfg.MODEL.RESNETS.DEPTH, cfg.SOLVER.MAX_ITER
    run.detector, run.design = detector_kind(cfg)
    run.dataset = cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else ""
    complexity = _complexity(cfg)
    run.params, run.gflops = complexity["params"], complexity["gflops"]

    metrics_file = path / "metrics.json"
    records = load_metrics(metrics_file) if metrics_file.is_file() else []
    evaluations = [ap_values(r) or ap_values(r, run.dataset) for r in records]
    training = [r["iteration"] for r, ap in zip(records, evaluations) if not ap]
    run.iteration = max(training, default=None)
    run.ap = next((ap for ap in reversed(evaluations) if ap), None)
    run.ap = run.ap or _coco_metrics_ap(path, run.dataset)
    final = (path / "model_final.pth").is_file()
    if not final and (run.iteration is None or run.iteration < run.max_iter - 1):
        run.status = UNFINISHED
        done = "no training iteration" if run.iteration is None else f"iteration {run.iteration}"
        run.reason = f"unfinished: {done} of SOLVER.MAX_ITER {run.max_iter}, no model_final.pth"
    elif not run.ap:
        run.status = NO_EVALUATION
        run.reason = "finished, no evaluation: no bbox/AP, segm/AP, ... in metrics.json"
    else:
        run.status = FINISHED
    return run


def gains(ap: Mapping[str, float], base: Mapping[str, float]) -> dict[str, float]:
    """``<metric>_gain`` (``ap - base``, points) and ``<metric>_gain_rel``
    (``100 * (ap / base - 1)``, percent) for every metric of ``ap``; NaN where ``base`` lacks it
    (or is 0, for the relative gain)."""
    out = {}
    for key, value in ap.items():
        ref = base.get(key, math.nan)
        out[f"{key}_gain"] = value - ref
        out[f"{key}_gain_rel"] = 100 * (value / ref - 1) if ref else math.nan
    return out


def add_gains(runs: Sequence[RunSummary]) -> RunSummary | None:
    """Fill ``gains`` of the compared runs, over the shallowest of them (the first given among
    equal depths). Returns that base run, or None when no run is compared."""
    compared = [run for run in runs if run.compared]
    if not compared:
        return None
    base = min(compared, key=lambda run: run.depth)  # min keeps the first of equals
    for run in compared:
        run.gains = gains(run.ap, base.ap)
    return base


def load_references(path: str | os.PathLike = REFERENCES_FILE) -> References:
    """Read the reference figures (:data:`REFERENCES_FILE` layout), with each model's gains over
    the shallowest model of its group (same ``source`` and ``group``, by default the same
    detector, design and schedule), where the group has two models or more.

    Raises:
        ValueError: a model naming an unknown source, or lacking a field (naming the entry).
    """
    data = yaml.safe_load(Path(path).read_text())
    sources, models = data["sources"], []
    fields = ("source", "detector", "design", "backbone", "depth", "schedule")
    for index, entry in enumerate(data["models"]):
        missing = [f for f in fields if f not in entry]
        if missing or entry["source"] not in sources:
            raise ValueError(
                f"{path}: models[{index}]: missing {missing} or unknown source "
                f"{entry.get('source')!r} (sources: {', '.join(sources)})"
            )
        group = entry.get("group") or "{detector} {design} {schedule}".format(**entry)
        ap = {k: float(v) for k, v in entry.items() if ap_values({k: v})}
        models.append(Reference(**{f: entry[f] for f in fields}, group=group, ap=ap))
    for group in _groups(models):
        if len(group) > 1:
            base = min(group, key=lambda m: m.depth)
            base.is_base = True
            for model in group:
                model.gains = gains(model.ap, base.ap)
    return References(sources, models)


def _groups(models: Iterable[Reference]) -> list[list[Reference]]:
    groups: dict[tuple[str, str], list[Reference]] = {}
    for model in models:
        groups.setdefault((model.source, model.group), []).append(model)
    return list(groups.values())


def select_references(references: References, runs: Sequence[RunSummary]) -> list[Reference]:
    """The paper's rows, then the zoo models of the runs' detector and design (of their
    detector when none has that design; all when none has that detector)."""
    kinds = {(run.detector, run.design) for run in runs if run.detector}
    zoo = [m for m in references.models if m.source != PAPER_SOURCE]
    chosen = [m for m in zoo if (m.detector, m.design) in kinds]
    chosen = chosen or [m for m in zoo if m.detector in {d for d, _ in kinds}] or zoo
    return [m for m in references.models if m.source == PAPER_SOURCE] + chosen


def ap_columns(runs: Iterable[RunSummary]) -> list[str]:
    """The AP metrics of the runs, in report order (box before mask, AP before AP50)."""

    def order(key: str) -> tuple:
        task, metric = key.split("/")
        return (*TASKS, task).index(task), task, AP_METRICS.index(metric)

    return sorted({key for run in runs for key in run.ap}, key=order)


def _number(value: float | None, digits: int) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    return str(round(value, digits)) if isinstance(value, float) else str(value)


def format_csv(runs: Sequence[RunSummary]) -> str:
    """One row per run: ``run``, ``depth``, ``params``, ``gflops``, the AP columns
    (``bbox/AP``, ...), for each ``<AP>_gain`` and ``<AP>_gain_rel``, then ``status``,
    ``iteration``, ``max_iter`` and ``run_dir``; empty cells for unknown or NaN values."""
    columns = ap_columns(runs)
    gain_columns = [f"{c}{suffix}" for c in columns for suffix in ("_gain", "_gain_rel")]
    header = ["run", "depth", "params", "gflops", *columns, *gain_columns]
    header += ["status", "iteration", "max_iter", "run_dir"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for run in runs:
        values = {**run.ap, **run.gains}
        writer.writerow(
            [run.name, _number(run.depth, 0), _number(run.params, 0), _number(run.gflops, 4)]
            + [_number(values.get(c), 4) for c in columns + gain_columns]
            + [run.status, _number(run.iteration, 0), _number(run.max_iter, 0), str(run.path)]
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
        "finished and evaluated run, and relative to it in percent.\n\n## Runs\n"
    ]
    if compared:
        keys = [f"{task}/AP" for task in TASKS if any(f"{task}/AP" in r.ap for r in compared)]
        header = ["Run", "Model", "Depth", "Params (M)", "GFLOPs", *_ap_headers(keys)]
        rows = [
            [f"`{r.name}`", f"{r.detector} R-{r.depth}-{r.design}", str(r.depth)]
            + [f"{r.params / 1e6:.1f}", f"{r.gflops:.2f}", *_ap_cells(r, keys, r is base)]
            for r in compared
        ]
        lines += _table(header, rows, right_from=2) + [""]
        lines += [f"Evaluated on {', '.join(datasets) or 'DATASETS.TEST'}; base: `{base.name}`."]
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
    for i, (task, label) in enumerate(TASKS.items()):
        key = f"{task}/AP"
        points = [(getattr(r, x), r.ap[key], r.depth) for r in compared if key in r.ap]
        points = [p for p in points if math.isfinite(p[1])]
        if points:
            xs, ys, _ = zip(*points)
            ax.plot(xs, ys, marker="o", lw=1.8, color=f"C{i}", label=f"runs: {label} AP")
        for xv, yv, depth in points:
            ax.annotate(f"R-{depth}", (xv, yv), xytext=(4, 4), **small)

    for g, group in enumerate(_groups(references)):
        style = dict(color=f"C{g + 3}", ls=":", lw=0.8)
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
        the runs read, the base of the gains, the references shown and the files written.
    """
    names = [Path(d).name for d in run_dirs]
    runs = [
        read_run(d, name=str(d) if names.count(name) > 1 else name)
        for d, name in zip(run_dirs, names)
    ]
    base = add_gains(runs)
    references = load_references(references_file)
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
