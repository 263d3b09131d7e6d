"""Detectron2's model-zoo detectors evaluated through our backbone: each zoo checkpoint loaded into
the matching config of ``configs/`` (or the zoo's own YAML with our builder's name), evaluated
with ``tools/train_net.py --eval-only``, then the depth report with the zoo's published AP beside
ours: the zoo's R50 -> R101 -> X101 depth gains, reproduced through this backbone.

Each model ``<folder>/<name>.yaml`` is evaluated into ``<output_dir>/<folder>/<name>`` in a
subprocess whose output goes to ``zoo_eval.log`` there; the one seam for tests and other
launchers is :func:`~backbones.study.experiments.sweep.run_training`.
"""

from __future__ import annotations

import difflib
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import yaml

from ...config.input_settings import _KeysLoader
from ...data.coco import check_dataset_entry
from ...engine.config import CONFIGS_DIR
from ..report.depth_report import DepthReport, write_depth_report
from ..report.runs import TASKS
from .sweep import TRAIN_NET, LoggedRun, ended_line, run_training

DEFAULT_OUTPUT_DIR = "output/zoo_eval"
LOG_NAME = "zoo_eval.log"
REPORT_DIR = "report"

# Zoo model -> our config of the same recipe: equal key for key but the backbone builder's name
# (the pairs of tests/test_configs.py's ZOO, which checks that; tests/test_zoo_eval.py checks
# this table against it). Other zoo models run from the zoo's YAML with BUILDERS' name swapped.
ZOO_CONFIGS = {
    "COCO-Detection/faster_rcnn_R_50_C4_1x.yaml": "frcnn_r50_c4.yaml",
    "COCO-Detection/faster_rcnn_R_50_DC5_1x.yaml": "frcnn_r50_dc5.yaml",
    "COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml": "frcnn_r50.yaml",
    "COCO-Detection/faster_rcnn_R_50_C4_3x.yaml": "frcnn_r50_c4_3x.yaml",
    "COCO-Detection/faster_rcnn_R_50_DC5_3x.yaml": "frcnn_r50_dc5_3x.yaml",
    "COCO-Detection/faster_rcnn_R_50_FPN_3x.yaml": "frcnn_r50_3x.yaml",
    "COCO-Detection/faster_rcnn_R_101_C4_3x.yaml": "frcnn_r101_c4_3x.yaml",
    "COCO-Detection/faster_rcnn_R_101_DC5_3x.yaml": "frcnn_r101_dc5_3x.yaml",
    "COCO-Detection/faster_rcnn_R_101_FPN_3x.yaml": "frcnn_r101_3x.yaml",
    "COCO-Detection/faster_rcnn_X_101_32x8d_FPN_3x.yaml": "frcnn_x101_32x8d_3x.yaml",
    "COCO-Detection/retinanet_R_50_FPN_1x.yaml": "retinanet_r50.yaml",
    "COCO-Detection/retinanet_R_50_FPN_3x.yaml": "retinanet_r50_3x.yaml",
    "COCO-Detection/retinanet_R_101_FPN_3x.yaml": "retinanet_r101_3x.yaml",
    "COCO-InstanceSegmentation/mask_rcnn_R_50_C4_1x.yaml": "mrcnn_r50_c4.yaml",
    "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml": "mrcnn_r50.yaml",
    "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml": "mrcnn_r50_3x.yaml",
    "COCO-InstanceSegmentation/mask_rcnn_R_101_C4_3x.yaml": "mrcnn_r101_c4_3x.yaml",
    "COCO-InstanceSegmentation/mask_rcnn_R_101_FPN_3x.yaml": "mrcnn_r101_3x.yaml",
    "COCO-InstanceSegmentation/mask_rcnn_X_101_32x8d_FPN_3x.yaml": "mrcnn_x101_32x8d_3x.yaml",
}
# Detectron2's ResNet backbone builders -> ours (same config keys, same parameter names).
BUILDERS = {
    "build_resnet_backbone": "backbones_build_resnet_backbone",
    "build_resnet_fpn_backbone": "backbones_build_resnet_fpn_backbone",
    "build_retinanet_resnet_fpn_backbone": "backbones_build_retinanet_resnet_fpn_backbone",
}


class ZooNameError(ValueError):
    """A name that is not a ResNet model of Detectron2's model zoo with a checkpoint."""


@dataclass(frozen=True)
class ZooModel:
    """A zoo model as evaluated here: its ``name`` (Detectron2's config name), its trained
    ``checkpoint`` (URL), the ``config_file`` it runs with (ours, or the zoo's YAML) and the
    ``opts`` that go with it (our builder's name for a zoo YAML, none for ours)."""

    name: str
    checkpoint: str
    config_file: Path
    opts: tuple[str, ...] = ()

    @property
    def run_dir(self) -> str:
        """Its run folder below the output folder: ``COCO-Detection/faster_rcnn_R_50_FPN_1x``."""
        return self.name[: -len(".yaml")]


@dataclass
class ZooRun(LoggedRun):
    """One model's evaluation: where, the command, and once run its exit status, duration in
    seconds and, when it failed, the line of its log that says why."""

    model: ZooModel
    output_dir: Path
    command: list[str]
    returncode: int | None = None
    seconds: float | None = None
    error: str = ""
    log_name = LOG_NAME


@dataclass
class ZooEvalResult:
    """The evaluations in the order given and the depth report written after them."""

    runs: list[ZooRun]
    report: DepthReport

    @property
    def failed(self) -> list[ZooRun]:
        return [run for run in self.runs if run.failed]


def _zoo_dir() -> Path:
    from detectron2 import model_zoo

    return Path(model_zoo.get_config_file("Base-RCNN-FPN.yaml")).parent


def backbone_builder(config_file: str | os.PathLike) -> str:
    """``MODEL.BACKBONE.NAME`` of a zoo YAML, following ``_BASE_`` (Detectron2's default when
    none sets it), read without running the ``!!python`` tags of Base-RetinaNet.yaml."""
    path = Path(config_file)
    with open(path) as f:
        data = yaml.load(f, Loader=_KeysLoader) or {}
    name = ((data.get("MODEL") or {}).get("BACKBONE") or {}).get("NAME")
    if name:
        return name
    if data.get("_BASE_"):
        return backbone_builder(path.parent / data["_BASE_"])
    from detectron2.config import get_cfg

    return get_cfg().MODEL.BACKBONE.NAME


def zoo_resnet_models() -> list[str]:
    """The YAML models of Detectron2's model zoo with a trained checkpoint and a ResNet backbone
    (one of :data:`BUILDERS`): the names :func:`resolve_zoo_model` takes."""
    from detectron2 import model_zoo

    root, names = _zoo_dir(), []
    for path in sorted(root.rglob("*.yaml")):
        name = path.relative_to(root).as_posix()
        try:
            model_zoo.get_checkpoint_url(name)
        except RuntimeError:  # a base config, or a model the zoo keeps no checkpoint of
            continue
        if backbone_builder(path) in BUILDERS:
            names.append(name)
    return names


def _valid_names(name: str) -> str:
    valid = zoo_resnet_models()
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.8)
    hint = f"did you mean {close[0]}? " if close else ""
    ours = [n for n in valid if n in ZOO_CONFIGS]
    return (
        f"{hint}Valid names: the zoo's ResNet models, e.g. {', '.join(ours)} (those with a "
        f"config of configs/), and {len(valid) - len(ours)} more (tools/zoo_eval.py --list)"
    )


def resolve_zoo_model(name: str) -> ZooModel:
    """The model a zoo name (``COCO-Detection/faster_rcnn_R_101_FPN_3x.yaml``, ``.yaml``
    optional) runs as: our config of :data:`ZOO_CONFIGS` where there is one, else the zoo's
    YAML with the backbone builder swapped for ours.

    Raises:
        ZooNameError: a LazyConfig (``.py``), a name the zoo does not have (or has no
            checkpoint of), a model whose backbone is no ResNet (naming it, and valid names).
    """
    from detectron2 import model_zoo

    if name.endswith(".py"):
        raise ZooNameError(
            f"{name} is a LazyConfig (.py) of the model zoo; zoo_eval evaluates its YAML models. "
            + _valid_names(name)
        )
    name = name if name.endswith(".yaml") else f"{name}.yaml"
    try:
        zoo_config = Path(model_zoo.get_config_file(name))
    except RuntimeError:
        raise ZooNameError(
            f"{name} is not a config of Detectron2's model zoo. " + _valid_names(name)
        ) from None
    try:
        checkpoint = model_zoo.get_checkpoint_url(name)
    except RuntimeError:
        raise ZooNameError(
            f"{name} is a config of the model zoo with no checkpoint (a base config, or a "
            "model the zoo keeps none of). " + _valid_names(name)
        ) from None
    builder = backbone_builder(zoo_config)
    if builder not in BUILDERS:
        raise ZooNameError(
            f"{name}: its backbone is {builder}, not a ResNet ({', '.join(BUILDERS)}). "
            + _valid_names(name)
        )
    ours = CONFIGS_DIR / ZOO_CONFIGS.get(name, "")
    if name in ZOO_CONFIGS and ours.is_file():
        return ZooModel(name, checkpoint, ours)
    return ZooModel(name, checkpoint, zoo_config, ("MODEL.BACKBONE.NAME", BUILDERS[builder]))


def eval_command(
    model: ZooModel,
    output_dir: str | os.PathLike,
    *,
    num_gpus: int = 1,
    datasets: Sequence[Sequence[str]] = (),
    opts: Sequence[str] = (),
    train_net: str | os.PathLike = TRAIN_NET,
) -> list[str]:
    """``python tools/train_net.py --config-file F --eval-only --num-gpus N [--dataset NAME JSON
    IMAGES ...] MODEL.WEIGHTS <checkpoint> OUTPUT_DIR D [builder] [opts]``, with this
    process's Python."""
    command = [sys.executable, str(train_net), "--config-file", str(model.config_file)]
    command += ["--eval-only", "--num-gpus", str(num_gpus)]
    for entry in datasets:
        command += ["--dataset", *map(str, entry)]
    command += ["MODEL.WEIGHTS", model.checkpoint, "OUTPUT_DIR", str(output_dir)]
    return command + [*model.opts, *opts]


def failure_line(log: str | os.PathLike, start: int = 0) -> str:
    """Why a run failed, from its log past byte ``start``: the first ``error: ...`` line the
    tools print for a known mistake (an unreachable weights URL, missing data), else the last
    line (a traceback's exception)."""
    with open(log, "rb") as f:
        f.seek(start)
        lines = [line.strip() for line in f.read().decode(errors="replace").splitlines()]
    lines = [line for line in lines if line]
    errors = [line for line in lines if line.startswith("error:")]
    return errors[0] if errors else (lines[-1] if lines else "no output")


def plan_zoo_eval(
    names: Sequence[str],
    output_dir: str | os.PathLike = DEFAULT_OUTPUT_DIR,
    *,
    num_gpus: int = 1,
    datasets: Sequence[Sequence[str]] = (),
    opts: Sequence[str] = (),
    train_net: str | os.PathLike = TRAIN_NET,
) -> list[ZooRun]:
    """The evaluations of ``names``, in order, each with its command (see
    :func:`run_zoo_eval`); every name and ``--dataset`` entry is checked before anything runs.

    Raises:
        ZooNameError: a name that is no ResNet zoo model, or one given twice.
        ValueError, FileNotFoundError: a bad ``datasets`` entry (naming it).
    """
    if not names:
        raise ZooNameError("no model named; e.g. COCO-Detection/faster_rcnn_R_50_FPN_3x.yaml")
    models = [resolve_zoo_model(name) for name in names]
    seen = [model.name for model in models]
    twice = sorted({name for name in seen if seen.count(name) > 1})
    if twice:
        raise ZooNameError(f"named more than once: {', '.join(twice)}")
    for entry in datasets:
        name, json_file, image_root = check_dataset_entry("--dataset", entry)
        missing = [path for path in (json_file, image_root) if not os.path.exists(path)]
        if missing:
            raise FileNotFoundError(f"--dataset {name}: not found: {', '.join(missing)}")
    runs = []
    for model in models:
        run_dir = Path(output_dir) / model.run_dir
        command = eval_command(
            model, run_dir, num_gpus=num_gpus, datasets=datasets, opts=opts, train_net=train_net
        )
        runs.append(ZooRun(model, run_dir, command))
    return runs


def _summary(run: ZooRun, report: DepthReport) -> str:
    """``faster_rcnn_R_50_FPN_3x: box AP 40.2 (zoo 40.2, +0.0)``, or why it has none."""
    if run.failed:
        return f"{run.name}: FAILED (exit {run.returncode}): {run.error} (log {run.log})"
    summary = next(r for r in report.runs if Path(r.path) == run.output_dir)
    if not summary.compared:
        return f"{run.name}: {summary.reason or summary.status}"
    values, parts = summary.zoo_values(), []
    for task, label in TASKS.items():
        key = f"{task}/AP"
        if key in summary.ap:
            zoo = values.get(f"{key}_zoo")
            diff = values.get(f"{key}_zoo_diff")
            against = f" (zoo {zoo:.1f}, {diff:+.1f})" if zoo is not None else ""
            parts.append(f"{label} AP {summary.ap[key]:.1f}{against}")
    return f"{run.name}: {', '.join(parts) or 'no AP'}"


def run_zoo_eval(
    names: Sequence[str],
    output_dir: str | os.PathLike = DEFAULT_OUTPUT_DIR,
    *,
    num_gpus: int = 1,
    datasets: Sequence[Sequence[str]] = (),
    opts: Sequence[str] = (),
    train_net: str | os.PathLike = TRAIN_NET,
    out: TextIO | None = None,
) -> ZooEvalResult:
    """Evaluate each zoo model's checkpoint through our backbone, one after another, then write
    the depth report of all of them into ``<output_dir>/report``.

    ``out`` gets a line as each evaluation starts and one as it ends (its duration, the elapsed
    time and an ETA: the mean duration so far times the models left), then one line per model
    (its APs, the zoo's and the difference; or why it has none) and the files written. A failed
    evaluation is reported with the first ``error:`` line of its log (or its last line) and the
    others go on; the report lists it as not compared.

    Args:
        names: zoo config names (:func:`resolve_zoo_model`).
        output_dir: model ``<folder>/<name>.yaml`` is evaluated into
            ``<output_dir>/<folder>/<name>``.
        num_gpus: ``--num-gpus`` of each evaluation.
        datasets: ``[name, json_file, image_root]`` entries, ``--dataset`` of each evaluation.
        opts: ``KEY VALUE`` overrides of each evaluation, last (e.g. ``DATASETS.TEST``).
        train_net: the training script.
        out: default ``sys.stdout``.

    Returns:
        the evaluations (exit status, duration, error line) and the report.

    Raises:
        as :func:`plan_zoo_eval`, before anything runs.
    """
    out = out or sys.stdout
    runs = plan_zoo_eval(
        names, output_dir, num_gpus=num_gpus, datasets=datasets, opts=opts, train_net=train_net
    )
    start = time.perf_counter()
    for index, run in enumerate(runs, start=1):
        step = f"[{index}/{len(runs)}] {run.name}"
        print(
            f"{step}: evaluating {run.model.checkpoint} with {run.model.config_file}, log "
            f"{run.log}",
            file=out,
            flush=True,
        )
        offset = run.log.stat().st_size if run.log.is_file() else 0
        begin = time.perf_counter()
        run.returncode = run_training(run.command, run.log)
        run.seconds = time.perf_counter() - begin
        if run.failed:
            run.error = failure_line(run.log, offset)
        status = f"FAILED (exit {run.returncode})" if run.failed else "done"
        print(ended_line(step, status, runs, index, start), file=out, flush=True)
        if run.failed:
            print(f"{step}: {run.error}", file=out, flush=True)
    report = write_depth_report([run.output_dir for run in runs], Path(output_dir) / REPORT_DIR)
    print("", file=out)
    for run in runs:
        print(_summary(run, report), file=out)
    for path in report.files.values():
        print(f"wrote {path}", file=out)
    failed = [run for run in runs if run.failed]
    if failed:
        print(f"{len(failed)} of {len(runs)} evaluations failed", file=out, flush=True)
    return ZooEvalResult(runs, report)
