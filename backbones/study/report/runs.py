"""Training runs and published figures as the depth report reads them.

A run is a Detectron2 ``OUTPUT_DIR`` as the trainer leaves it: ``config.yaml`` (the depth, the
detector, ``SOLVER.MAX_ITER``; parameters and GFLOPs from :func:`detector_complexity`),
``metrics.json`` (the last evaluation's ``bbox/AP``, ``segm/AP50``, ... and the last training
iteration; ``inference/<DATASETS.TEST[0]>/coco_metrics.json`` when it has no evaluation) and
``model_final.pth``. Runs that did not finish, have no evaluation or no readable config are
listed with the reason, never dropped, and left out of the gains and the plots. The published
figures are those of :data:`REFERENCES_FILE`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from detectron2.config import CfgNode

from ...engine import load_cfg, load_metrics
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
    for group in reference_groups(models):
        if len(group) > 1:
            base = min(group, key=lambda m: m.depth)
            base.is_base = True
            for model in group:
                model.gains = gains(model.ap, base.ap)
    return References(sources, models)


def reference_groups(models: Iterable[Reference]) -> list[list[Reference]]:
    """The models by (source, group), in file order: each group's gains are over its shallowest."""
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
