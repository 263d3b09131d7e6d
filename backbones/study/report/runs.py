"""Training runs and published figures as the depth report reads them.

A run is a Detectron2 ``OUTPUT_DIR`` as the trainer leaves it: ``config.yaml`` (the depth, the
detector, ``SOLVER.MAX_ITER``; parameters and GFLOPs from :func:`detector_complexity`),
``metrics.json`` (the last evaluation's ``bbox/AP``, ``segm/AP50``, ... and the last training
iteration; ``inference/<DATASETS.TEST[0]>/coco_metrics.json`` when it has no evaluation) and
``model_final.pth``. A run with an evaluation and no training iteration is an evaluation of
``MODEL.WEIGHTS`` (``train_net.py --eval-only``, ``tools/zoo_eval.py``). Runs that did not
finish, have no evaluation or no readable config are listed with the reason, never dropped, and
left out of the gains and the plots. The published figures are those of :data:`REFERENCES_FILE`;
a run that evaluated a Detectron2 model-zoo checkpoint is matched to that model's figures.
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
# What read_run says of a run: only FINISHED runs (trained to the end and evaluated) and EVALUATED
# ones (an evaluation of MODEL.WEIGHTS, nothing trained) are compared.
FINISHED, EVALUATED, UNFINISHED = "finished", "evaluated", "unfinished"
NO_EVALUATION, NO_CONFIG = "no evaluation", "no config"
COMPARED = (FINISHED, EVALUATED)
# Detectron2's 1x schedule: 90k iterations at batch 16; "3x" is three times as many images.
SCHEDULE_1X_IMAGES = 90_000 * 16
# load_cfg options for a config.yaml left by a run: MODEL.WEIGHTS may be gone, and so may the
# files of the COCO datasets it registered; the config dump already holds the input settings.
READ_OPTS = ["BACKBONES.INPUT_FROM_WEIGHTS", "off", "MODEL.DEVICE", "cpu"]
READ_OPTS += ["BACKBONES.COCO_DATASETS", "[]"]


@dataclass
class RunSummary:
    """One run directory as the report sees it.

    ``ap`` maps Detectron2's metric names (``bbox/AP``, ``segm/AP50``, ...) to the last
    evaluation's values; ``gains`` maps ``<metric>_gain`` (points) and ``<metric>_gain_rel``
    (percent) to the gain over the shallowest compared run of its :attr:`group`
    (:func:`add_gains`); ``zoo`` is the model-zoo model whose checkpoint ``weights`` names
    (:func:`match_zoo`).
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
    backbone: str = ""  # "R-50", "X-101-32x8d"
    schedule: str = ""  # "1x", "3x" (multiples of 90k iterations at batch 16), "100 iterations"
    weights: str = ""  # MODEL.WEIGHTS
    zoo: Reference | None = None  # the zoo model whose checkpoint ``weights`` is
    is_base: bool = False  # the shallowest compared run of its group: the base of its gains

    @property
    def compared(self) -> bool:
        return self.status in COMPARED

    @property
    def group(self) -> str:
        """Runs compared with each other, gains and plots: one detector, design and schedule."""
        return " ".join(part for part in (self.detector, self.design, self.schedule) if part)

    @property
    def label(self) -> str:
        """``Mask R-CNN R-50-FPN``, ``Faster R-CNN X-101-32x8d-FPN 3x`` (a zoo schedule)."""
        backbone = self.backbone or f"R-{self.depth}"
        schedule = f" {self.schedule}" if self.schedule.endswith("x") else ""
        return f"{self.detector} {backbone}-{self.design}{schedule}"

    def zoo_values(self) -> dict[str, float]:
        """``<metric>_zoo`` (the zoo's published AP) and ``<metric>_zoo_diff`` (ours minus
        published, points; NaN where the run lacks it) for each metric the zoo publishes; empty
        without a zoo model."""
        out = {}
        for key, published in self.zoo.ap.items() if self.zoo else ():
            out[f"{key}_zoo"] = published
            out[f"{key}_zoo_diff"] = self.ap.get(key, math.nan) - published
        return out


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
    zoo: str = ""  # Detectron2's model-zoo config name, e.g. COCO-Detection/..._3x.yaml

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


def backbone_name(cfg: CfgNode) -> str:
    """``R-<depth>``, or ``X-<depth>-<groups>x<width>d`` for a ResNeXt."""
    resnets = cfg.MODEL.RESNETS
    if resnets.NUM_GROUPS > 1:
        return f"X-{resnets.DEPTH}-{resnets.NUM_GROUPS}x{resnets.WIDTH_PER_GROUP}d"
    return f"R-{resnets.DEPTH}"


def schedule_name(max_iter: int, ims_per_batch: int) -> str:
    """``"1x"``, ``"3x"``, ... for whole multiples of Detectron2's 1x schedule (90k iterations
    at batch 16, in images: batch 2 for 720k iterations is 1x too), else ``"<max_iter>
    iterations"``."""
    times, rest = divmod(max_iter * ims_per_batch, SCHEDULE_1X_IMAGES)
    return f"{times}x" if times and not rest else f"{max_iter} iterations"


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
    run.backbone, run.weights = backbone_name(cfg), cfg.MODEL.WEIGHTS
    run.schedule = schedule_name(cfg.SOLVER.MAX_ITER, cfg.SOLVER.IMS_PER_BATCH)
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
    if not final and run.iteration is None and run.ap:
        run.status = EVALUATED  # train_net.py --eval-only: MODEL.WEIGHTS, nothing trained here
    elif not final and (run.iteration is None or run.iteration < run.max_iter - 1):
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
    """Fill ``gains`` of the compared runs, each over the shallowest compared run of its
    :attr:`~RunSummary.group` (same detector, design and schedule; the first given among equal
    depths), and set ``is_base`` on those bases.

    Returns:
        the base of the first run's group, or None when no run is compared.
    """
    groups: dict[str, list[RunSummary]] = {}
    for run in runs:
        if run.compared:
            groups.setdefault(run.group, []).append(run)
    bases = []
    for members in groups.values():
        base = min(members, key=lambda run: run.depth)  # min keeps the first of equals
        base.is_base = True
        for run in members:
            run.gains = gains(run.ap, base.ap)
        bases.append(base)
    return bases[0] if bases else None


def zoo_checkpoint(name: str) -> str:
    """The address of a model-zoo checkpoint below Detectron2's store, as every spelling of it
    ends (``https://dl.fbaipublicfiles.com/detectron2/``, ``detectron2://``, a cached copy):
    ``COCO-Detection/faster_rcnn_R_50_FPN_1x/137257794/model_final_b275ba.pkl``.

    Raises:
        RuntimeError: ``name`` has no checkpoint in Detectron2's model zoo.
    """
    from detectron2 import model_zoo

    url = model_zoo.get_checkpoint_url(name)
    stem = name.rsplit(".", 1)[0]
    return url[url.rindex(stem) :]


def match_zoo(runs: Iterable[RunSummary], references: References) -> None:
    """Set ``zoo`` of each run whose ``MODEL.WEIGHTS`` is the checkpoint of a reference model
    with a ``zoo`` name (under any spelling of its address, or a local copy of that path)."""
    checkpoints = {zoo_checkpoint(m.zoo): m for m in references.models if m.zoo}
    for run in runs:
        matches = (m for c, m in checkpoints.items() if f"/{run.weights}".endswith(f"/{c}"))
        run.zoo = next(matches, None)


def load_references(path: str | os.PathLike = REFERENCES_FILE) -> References:
    """Read the reference figures (:data:`REFERENCES_FILE` layout), with each model's gains over
    the shallowest model of its group (same ``source`` and ``group``, by default the same
    detector, design and schedule), where the group has two models or more.

    Raises:
        ValueError: a model naming an unknown source, lacking a field, or naming a ``zoo``
            model without a checkpoint (naming the entry).
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
        zoo = entry.get("zoo", "")
        if zoo:
            try:
                zoo_checkpoint(zoo)
            except RuntimeError:
                raise ValueError(
                    f"{path}: models[{index}]: zoo {zoo!r} has no checkpoint in Detectron2's "
                    "model zoo (detectron2.model_zoo.get_checkpoint_url); give a config name "
                    "such as COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"
                ) from None
        group = entry.get("group") or "{detector} {design} {schedule}".format(**entry)
        ap = {k: float(v) for k, v in entry.items() if ap_values({k: v})}
        models.append(Reference(**{f: entry[f] for f in fields}, group=group, ap=ap, zoo=zoo))
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
