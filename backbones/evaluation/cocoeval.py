"""COCO's ``COCOeval`` (Lin et al., 2014, "Microsoft COCO") run with faster-coco-eval's C++ port.

The one place the package computes COCO metrics. faster-coco-eval gives pycocotools' numbers (the
official API) to float precision; pycocotools itself serves as the tests' oracle only.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from faster_coco_eval import COCO, COCOeval_faster

logger = logging.getLogger(__name__)

# What computes the metrics, as reports and logs name it.
COCO_BACKEND = "faster_coco_eval"
IOU_TYPES = ("bbox", "segm")
# COCOeval.stats, in its order; -1 where undefined (no ground truth in that area range).
STAT_NAMES = (
    "AP",
    "AP50",
    "AP75",
    "APs",
    "APm",
    "APl",
    "AR1",
    "AR10",
    "AR100",
    "ARs",
    "ARm",
    "ARl",
)
MAX_DETS = 100  # COCO rates the 100 highest-scoring detections of each image


def coco_index(dataset: Mapping[str, Any]) -> COCO:
    """A COCO API index over a deep copy of a dataset dict (COCOeval writes into annotations).

    Args:
        dataset: COCO ground truth, with "images", "annotations" and "categories".

    Returns:
        faster-coco-eval's ``COCO``, indexed.
    """
    coco = COCO()
    coco.dataset = copy.deepcopy(dict(dataset))
    coco.createIndex()
    return coco


def run_cocoeval(
    coco_gt: COCO,
    results: Sequence[Mapping[str, Any]],
    iou_type: str,
    *,
    max_dets: int = MAX_DETS,
    img_ids: Sequence[int] | None = None,
    kpt_oks_sigmas: Sequence[float] = (),
    print_function: Callable[[str], Any] = logger.debug,
) -> COCOeval_faster:
    """Evaluate, accumulate and summarise COCO results, as pycocotools' ``COCOeval`` does.

    The steps of Detectron2's ``_evaluate_predictions_on_coco``, which cannot serve here: it
    asserts on an empty result list and switches to ``COCOevalMaxDets``, a pycocotools class,
    for ``max_dets != 100``.

    Args:
        coco_gt: the ground truth; COCOeval converts its polygons to RLE in place.
        results: COCO results (``image_id``, ``category_id``, ``score``, ``bbox`` and/or
            ``segmentation`` or ``keypoints``); copied, never changed. Empty: every AP and AR
            is 0 where there is ground truth, -1 where there is none.
        iou_type: "bbox", "segm" or "keypoints".
        max_dets: how many detections of each image are rated, highest scores first (AP and
            the last AR), as Detectron2's ``max_dets_per_image``: maxDets ``[1, 10, max_dets]``,
            sorted by COCOeval, so that below 10 AP rates 10. Not for "keypoints" (COCO: 20).
        img_ids: the images to evaluate; default all.
        kpt_oks_sigmas: per-keypoint OKS sigmas for "keypoints"; default COCO's.
        print_function: where the summary goes, one line per call, as pycocotools prints it.

    Returns:
        the summarised ``COCOeval``: ``stats`` (for "bbox" and "segm" the 12 numbers of
        :data:`STAT_NAMES`), ``eval["precision"]`` and ``params``.
    """
    results = copy.deepcopy(list(results))  # loadRes writes ids and areas into the entries
    if iou_type == "segm":
        # Masks go into small / medium / large by their own area, not their box's (Detectron2).
        for r in results:
            r.pop("bbox", None)
    if results:
        coco_dt = coco_gt.loadRes(results)
    else:
        # loadRes of older faster-coco-eval fails on []; COCOeval sees this for no detections.
        coco_dt = COCO()
        coco_dt.dataset = {
            "images": list(coco_gt.dataset["images"]),
            "categories": list(coco_gt.dataset["categories"]),
            "annotations": [],
        }
        coco_dt.createIndex()
    coco_eval = COCOeval_faster(coco_gt, coco_dt, iou_type, print_function=print_function)
    if iou_type != "keypoints":
        coco_eval.params.maxDets = [1, 10, max_dets]
    if img_ids is not None:
        coco_eval.params.imgIds = list(img_ids)
    if kpt_oks_sigmas:
        coco_eval.params.kpt_oks_sigmas = np.asarray(kpt_oks_sigmas, dtype=np.float64)
    coco_eval.evaluate()
    coco_eval.accumulate()
    coco_eval.summarize()
    return coco_eval
