"""Detectron2's COCO evaluator (Lin et al., 2014, "Microsoft COCO") on faster-coco-eval."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from numbers import Integral
from typing import Any

import numpy as np
from detectron2.evaluation import COCOEvaluator
from detectron2.utils.file_io import PathManager
from faster_coco_eval import COCO

from .cocoeval import COCO_BACKEND, MAX_DETS, run_cocoeval

logger = logging.getLogger(__name__)


class FasterCOCOEvaluator(COCOEvaluator):
    """Detectron2's ``COCOEvaluator`` computing AP with faster-coco-eval's C++ ``COCOeval``.

    Same predictions, files (``coco_instances_results.json``, ``instances_predictions.pth``)
    and metric names as ``COCOEvaluator``; never imports ``detectron2._C``. Also writes the
    metrics to ``coco_metrics.json`` in ``output_dir``.
    """

    def __init__(
        self,
        dataset_name: str,
        tasks: Iterable[str] | None = None,
        distributed: bool = True,
        output_dir: str | None = None,
        *,
        max_dets_per_image: int | None = None,
        kpt_oks_sigmas: Sequence[float] = (),
        allow_cached_coco: bool = True,
    ) -> None:
        """
        Args:
            max_dets_per_image: how many detections of each image are rated, highest scores
                first; default COCO's 100. Below 10, AP rates 10 (COCOeval's maxDets are
                ``[1, 10, max_dets_per_image]``, sorted), as in Detectron2.
            Others: as in ``detectron2.evaluation.COCOEvaluator``, whose ``use_fast_impl`` has
                no use here: faster-coco-eval gives the official API's numbers.

        Raises:
            ValueError: ``max_dets_per_image`` is not a positive integer.
        """
        if max_dets_per_image is not None and (
            not isinstance(max_dets_per_image, Integral)
            or isinstance(max_dets_per_image, bool)
            or max_dets_per_image < 1
        ):
            raise ValueError(
                f"max_dets_per_image={max_dets_per_image!r}: expected a positive integer "
                "(None: COCO's 100)"
            )
        super().__init__(
            dataset_name,
            tasks=tuple(tasks) if tasks is not None else None,
            distributed=distributed,
            output_dir=output_dir,
            max_dets_per_image=None if max_dets_per_image is None else int(max_dets_per_image),
            use_fast_impl=False,
            kpt_oks_sigmas=kpt_oks_sigmas,
            allow_cached_coco=allow_cached_coco,
        )
        self._coco_api = COCO(PathManager.get_local_path(self._metadata.json_file))
        logger.info("COCO evaluation of %s with %s", dataset_name, COCO_BACKEND)

    def evaluate(self, img_ids: Sequence[int] | None = None) -> dict[str, dict[str, float]]:
        """Metrics by task ("bbox", "segm", ...) on the main process, ``{}`` on the others."""
        results = super().evaluate(img_ids)
        if results and self._output_dir:
            with PathManager.open(os.path.join(self._output_dir, "coco_metrics.json"), "w") as f:
                json.dump(results, f, indent=2)
        return results

    def _eval_predictions(
        self, predictions: list[dict], img_ids: Sequence[int] | None = None
    ) -> None:
        results = [ann for p in predictions for ann in p["instances"]]
        self._to_dataset_category_ids(results)
        if self._output_dir:
            path = os.path.join(self._output_dir, "coco_instances_results.json")
            logger.info("Saving results to %s", path)
            with PathManager.open(path, "w") as f:
                json.dump(results, f)
        if not self._do_evaluation:
            logger.info("Annotations are not available for evaluation.")
            return
        if not results:
            # Detectron2 reports NaN; we report what COCOeval gives for an empty detection set
            # (0 where there is ground truth), as tools/coco_eval.py does.
            logger.warning("No predictions on %s: every AP is 0", self._metadata.name)
        for task in sorted(self._tasks or self._tasks_from_predictions(results)):
            coco_eval = run_cocoeval(
                self._coco_api,
                results,
                task,
                max_dets=self._max_dets_per_image[2],
                img_ids=img_ids,
                kpt_oks_sigmas=self._kpt_oks_sigmas,
                print_function=print,  # the summary goes to stdout, as in COCOEvaluator
            )
            self._results[task] = self._derive_coco_results(
                coco_eval, task, class_names=self._metadata.get("thing_classes")
            )

    def _to_dataset_category_ids(self, results: list[dict]) -> None:
        """Map contiguous ``category_id`` (0..K-1) back to the dataset's ids, in place."""
        id_map = self._metadata.get("thing_dataset_id_to_contiguous_id")
        if id_map is None:
            return
        to_dataset = {contiguous: dataset_id for dataset_id, contiguous in id_map.items()}
        for ann in results:
            if ann["category_id"] not in to_dataset:
                raise ValueError(
                    f"Predicted class {ann['category_id']} is not in [0, {len(to_dataset) - 1}]"
                )
            ann["category_id"] = to_dataset[ann["category_id"]]


def coco_stats(
    gt_json: str | os.PathLike,
    results: Sequence[Mapping[str, Any]],
    iou_type: str,
    *,
    max_dets: int = MAX_DETS,
) -> np.ndarray:
    """The 12 COCO summary numbers of results against a ground-truth file.

    Computed as :class:`FasterCOCOEvaluator` computes them (masks rated by their own area).

    Args:
        gt_json: ground-truth file, COCO instances format.
        results: COCO results with dataset category ids; not changed.
        iou_type: "bbox" or "segm".
        max_dets: as ``max_dets_per_image`` of :class:`FasterCOCOEvaluator`; the third AR
            (AR100 in ``STAT_NAMES``) is then the AR at ``max_dets``.

    Returns:
        ``(12,)`` float64 array, in the order of ``STAT_NAMES`` (AP, AP50, ..., ARl); [0, 1],
        -1 where undefined.
    """
    coco_eval = run_cocoeval(COCO(str(gt_json)), results, iou_type, max_dets=max_dets)
    return np.asarray(coco_eval.stats[:12], dtype=np.float64)
