"""Offline COCO evaluation (Lin et al., 2014, "Microsoft COCO") of a results file or list.

:func:`evaluate_results` checks the results entry by entry, rates them as pycocotools'
``COCOeval`` does and returns an :class:`EvaluationReport`; ``report.py`` writes and plots it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..coco_json import check_coco_instances
from ..progress import Progress
from .cocoeval import COCO_BACKEND, STAT_NAMES, coco_index, run_cocoeval
from .results import load_gt_file, load_results_file, validate_results

logger = logging.getLogger(__name__)
# From this many results on, COCOeval is announced before it starts: a second or more per IoU
# type (200,000 results on one core: boxes 5 s, masks 8 s, copies and index included).
_ANNOUNCE_RESULTS = 20_000

# What IouTypeReport.per_category holds for each category, besides its id and name.
PER_CATEGORY_METRICS = ("AP", "AP50", "AP75")


@dataclass
class IouTypeReport:
    """COCO metrics of one IoU type.

    Attributes:
        stats: :data:`STAT_NAMES` -> value in [0, 1], -1 where undefined (pycocotools' stats).
        per_category: ``{"category_id", "name", "AP", "AP50", "AP75"}`` by category id, area
            all, maxDets 100; -1 for a category without ground truth.
        precision: COCOeval's ``eval["precision"]``, ``(iou thresholds 10, recall thresholds
            101, categories, areas all/small/medium/large, maxDets 1/10/100)``; ``None`` when
            read from a file.
    """

    stats: dict[str, float]
    per_category: list[dict[str, Any]]
    precision: np.ndarray | None = field(default=None, repr=False, compare=False)


@dataclass
class EvaluationReport:
    """What :func:`evaluate_results` found: the metrics by IoU type.

    Attributes:
        backend: what computed the metrics (:data:`COCO_BACKEND`; older reports may name
            "pycocotools").
        num_images: images in the ground truth.
        num_results: entries in the results, each rated for every IoU type.
        iou_types: "bbox" and/or "segm" -> their metrics.
    """

    backend: str
    num_images: int
    num_results: int
    iou_types: dict[str, IouTypeReport]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (without the precision arrays)."""
        return {
            "backend": self.backend,
            "num_images": self.num_images,
            "num_results": self.num_results,
            "iou_types": {
                name: {"stats": r.stats, "per_category": r.per_category}
                for name, r in self.iou_types.items()
            },
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "EvaluationReport":
        """The inverse of :meth:`to_dict`."""
        return cls(
            backend=data["backend"],
            num_images=data["num_images"],
            num_results=data["num_results"],
            iou_types={
                name: IouTypeReport(dict(r["stats"]), [dict(c) for c in r["per_category"]])
                for name, r in data["iou_types"].items()
            },
        )


def _category_ap(precision: np.ndarray, iou_thresholds: np.ndarray, k: int) -> dict[str, float]:
    """AP, AP50, AP75 of category index ``k``: mean precision (area all, maxDets 100) over the
    recall thresholds and the IoU thresholds, or at IoU .50 / .75 (pycocotools' summarize)."""
    out = {}
    for name, iou in (("AP", None), ("AP50", 0.5), ("AP75", 0.75)):
        p = precision[:, :, k, 0, -1]
        if iou is not None:
            p = p[np.isclose(iou_thresholds, iou)]
        p = p[p > -1]
        out[name] = float(np.mean(p)) if p.size else -1.0
    return out


def evaluate_results(
    gt_json: str | os.PathLike | Mapping[str, Any],
    results: str | os.PathLike | Sequence[Any],
    iou_types: Sequence[str] = ("bbox",),
) -> EvaluationReport:
    """Evaluate COCO results against COCO ground truth, as pycocotools' ``COCOeval`` does.

    For "segm", the area that sorts masks into small / medium / large is the mask's, and boxes
    given with the masks are ignored (Detectron2's ``COCOEvaluator`` does the same).

    Args:
        gt_json: ground-truth file (COCO instances format) or its loaded dict.
        results: results file or its loaded list (see :func:`validate_results`).
        iou_types: "bbox" and/or "segm".

    Returns:
        the metrics by IoU type, with the precision arrays.

    Raises:
        COCOFormatError: a bad file or entry (see :func:`load_gt_file`, :func:`validate_results`).
    """
    if isinstance(gt_json, Mapping):
        gt = gt_json
        check_coco_instances(gt, "ground truth")
    else:
        gt = load_gt_file(gt_json)
    source = "results"
    if isinstance(results, (str, os.PathLike)):
        source, results = str(results), load_results_file(results)
    checked = validate_results(results, gt, iou_types, source=source)
    names = {cat["id"]: cat["name"] for cat in gt["categories"]}

    reports = {}
    types = list(dict.fromkeys(iou_types))
    if len(checked) >= _ANNOUNCE_RESULTS:
        logger.info(
            f"COCOeval {', '.join(types)}: {len(checked)} results on {len(gt['images'])} images"
        )
    # COCOeval runs in C++ without a callback: progress counts the IoU types done.
    progress = Progress(
        len(types), what=f"COCOeval {', '.join(types)}", logger=logger, unit="IoU types"
    )
    for iou_type in types:
        key = "bbox" if iou_type == "bbox" else "segmentation"
        keep = ("image_id", "category_id", "score", key)
        typed = [{k: v for k, v in r.items() if k in keep} for r in checked]
        # A fresh index each time: COCOeval writes into the annotations (segm: RLE for polygons).
        coco_eval = run_cocoeval(coco_index(gt), typed, iou_type)
        precision = np.asarray(coco_eval.eval["precision"], dtype=np.float64)
        iou_thresholds = np.asarray(coco_eval.params.iouThrs, dtype=np.float64)
        per_category = [
            {"category_id": int(cat_id), "name": names[cat_id]}
            | _category_ap(precision, iou_thresholds, k)
            for k, cat_id in enumerate(coco_eval.params.catIds)
        ]
        stats = dict(zip(STAT_NAMES, map(float, coco_eval.stats[: len(STAT_NAMES)])))
        reports[iou_type] = IouTypeReport(stats, per_category, precision)
        progress.update()
    progress.close()
    return EvaluationReport(COCO_BACKEND, len(gt["images"]), len(checked), reports)
