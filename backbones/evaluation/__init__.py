"""COCO box and mask evaluation (Lin et al., 2014, "Microsoft COCO") with faster-coco-eval.

Modules, each importing only those before it:

* ``cocoeval``: faster-coco-eval's ``COCOeval`` run as pycocotools' is (the one place metrics
  are computed), the stat names and IoU types;
* ``results``: checking results against the ground truth (RLE, polygons, boxes); both files
  are read by :mod:`backbones.coco_json`;
* ``evaluator``: :class:`FasterCOCOEvaluator`, Detectron2's ``COCOEvaluator`` for
  ``train_net.py``, and :func:`coco_stats`;
* ``offline``: :func:`evaluate_results` of a results file, and the report dataclasses;
* ``report``: the report as text, JSON and CSV, and precision-recall curves.
"""

from .cocoeval import COCO_BACKEND, IOU_TYPES, STAT_NAMES
from .evaluator import FasterCOCOEvaluator, coco_stats
from .offline import EvaluationReport, IouTypeReport, evaluate_results
from .report import (
    METRICS_FILE,
    PER_CATEGORY_FILE,
    format_report,
    plot_pr_curves,
    pr_curves,
    read_per_category_csv,
    read_report,
    write_report,
)
from .results import (
    COCOFormatError,
    COCOResultsWarning,
    load_gt_file,
    load_results_file,
    validate_results,
)

__all__ = [
    "COCO_BACKEND",
    "IOU_TYPES",
    "METRICS_FILE",
    "PER_CATEGORY_FILE",
    "STAT_NAMES",
    "COCOFormatError",
    "COCOResultsWarning",
    "EvaluationReport",
    "FasterCOCOEvaluator",
    "IouTypeReport",
    "coco_stats",
    "evaluate_results",
    "format_report",
    "load_gt_file",
    "load_results_file",
    "plot_pr_curves",
    "pr_curves",
    "read_per_category_csv",
    "read_report",
    "validate_results",
    "write_report",
]
