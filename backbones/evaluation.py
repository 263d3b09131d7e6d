"""COCO box and mask evaluation (Lin et al., 2014, "Microsoft COCO") of results files and models.

Two entry points compute the same numbers with faster-coco-eval's C++ ``COCOeval`` (pycocotools,
the official API, as a fallback or on request):

* :class:`FasterCOCOEvaluator`, Detectron2's ``COCOEvaluator`` for ``train_net.py``; it writes
  ``coco_instances_results.json`` and ``coco_metrics.json``;
* :func:`evaluate_results` for a results file in the standard COCO format (a JSON list of
  ``{"image_id", "category_id", "score", "bbox" | "segmentation"}``), checked entry by entry by
  :func:`validate_results`; :func:`write_report` and :func:`plot_pr_curves` save what it found.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import io
import json
import logging
import math
import os
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from numbers import Real
from pathlib import Path
from typing import Any

import numpy as np
import pycocotools.mask as mask_util
from detectron2.evaluation import COCOEvaluator
from detectron2.evaluation.coco_evaluation import _evaluate_predictions_on_coco
from detectron2.utils.file_io import PathManager
from pycocotools.coco import COCO as PyCOCO
from pycocotools.cocoeval import COCOeval as PyCOCOeval

try:
    from faster_coco_eval import COCO as FasterCOCO
    from faster_coco_eval import COCOeval_faster
except ImportError:  # pragma: no cover - faster-coco-eval is a declared dependency
    FasterCOCO = COCOeval_faster = None

__all__ = [
    "COCO_BACKENDS",
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

logger = logging.getLogger(__name__)

# COCO evaluation backends, in order of preference ("auto" takes the first importable one).
COCO_BACKENDS = ("faster_coco_eval", "pycocotools")
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
# (IoU, area, maxDets) of each of STAT_NAMES, as pycocotools' summarize() prints them.
_STAT_SETTINGS = [
    ("0.50:0.95", "all", 100),
    ("0.50", "all", 100),
    ("0.75", "all", 100),
    ("0.50:0.95", "small", 100),
    ("0.50:0.95", "medium", 100),
    ("0.50:0.95", "large", 100),
    ("0.50:0.95", "all", 1),
    ("0.50:0.95", "all", 10),
    ("0.50:0.95", "all", 100),
    ("0.50:0.95", "small", 100),
    ("0.50:0.95", "medium", 100),
    ("0.50:0.95", "large", 100),
]
PER_CATEGORY_METRICS = ("AP", "AP50", "AP75")
METRICS_FILE = "coco_eval_metrics.json"
PER_CATEGORY_FILE = "coco_eval_per_category.csv"
MAX_DETS = 100  # COCO rates the 100 highest-scoring detections of each image


# ---------------------------------------------------------------------------------------------
# Backends and Detectron2's evaluator


def _coco_backend(backend: str) -> str:
    if backend == "auto":
        return COCO_BACKENDS[0] if COCOeval_faster is not None else COCO_BACKENDS[1]
    if backend not in COCO_BACKENDS:
        raise ValueError(f"Unknown COCO backend {backend!r}; options: auto, {COCO_BACKENDS}")
    if backend == "faster_coco_eval" and COCOeval_faster is None:
        raise ImportError("COCO backend 'faster_coco_eval' needs `pip install faster-coco-eval`")
    return backend


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
        backend: str = "auto",
    ) -> None:
        """
        Args:
            backend: "faster_coco_eval", "pycocotools" (the official API), or "auto" (the first
                importable of these two).
            Others: as in ``detectron2.evaluation.COCOEvaluator``.
        """
        super().__init__(
            dataset_name,
            tasks=tuple(tasks) if tasks is not None else None,
            distributed=distributed,
            output_dir=output_dir,
            max_dets_per_image=max_dets_per_image,
            use_fast_impl=False,
            kpt_oks_sigmas=kpt_oks_sigmas,
            allow_cached_coco=allow_cached_coco,
        )
        self._backend = _coco_backend(backend)
        if self._backend == "faster_coco_eval" and self._max_dets_per_image[2] != 100:
            # Detectron2 evaluates a custom maxDets with COCOevalMaxDets, a pycocotools class.
            logger.info("max_dets_per_image=%s: using pycocotools", self._max_dets_per_image[2])
            self._backend = "pycocotools"
        if self._backend == "faster_coco_eval":
            self._coco_api = FasterCOCO(PathManager.get_local_path(self._metadata.json_file))
            # print: the COCO summary goes to stdout, as pycocotools prints it.
            self._cocoeval_fn = partial(COCOeval_faster, print_function=print)
        else:
            self._cocoeval_fn = PyCOCOeval
        logger.info("COCO evaluation of %s with %s", dataset_name, self._backend)

    @property
    def backend(self) -> str:
        """The COCO API that computes the metrics: "faster_coco_eval" or "pycocotools"."""
        return self._backend

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
        for task in sorted(self._tasks or self._tasks_from_predictions(results)):
            if results:
                coco_eval = _evaluate_predictions_on_coco(
                    self._coco_api,
                    results,
                    task,
                    kpt_oks_sigmas=self._kpt_oks_sigmas,
                    cocoeval_fn=self._cocoeval_fn,
                    img_ids=img_ids,
                    max_dets_per_image=self._max_dets_per_image,
                )
            else:
                # No detections at all: Detectron2 reports NaN; we report what pycocotools gives
                # for an empty detection set (0 where there is ground truth), as coco_eval.py.
                logger.warning("No predictions on %s: every AP is 0", self._metadata.name)
                coco_eval = _run_cocoeval(self._coco_api.dataset, [], task, self._backend)
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
    gt_json: str | os.PathLike, results: list[dict], iou_type: str, backend: str
) -> np.ndarray:
    """The 12 COCO summary numbers (AP, AP50, ..., ARl) of ``results`` against ``gt_json``.

    Evaluated by Detectron2's ``_evaluate_predictions_on_coco`` with the given backend, as
    :class:`FasterCOCOEvaluator` does; the backends should agree to float precision.
    """
    backend = _coco_backend(backend)
    if backend == "faster_coco_eval":
        coco_gt, cocoeval_fn = FasterCOCO(str(gt_json)), COCOeval_faster
    else:
        coco_gt, cocoeval_fn = PyCOCO(str(gt_json)), PyCOCOeval
    coco_eval = _evaluate_predictions_on_coco(
        coco_gt, [dict(r) for r in results], iou_type, cocoeval_fn=cocoeval_fn
    )
    return np.asarray(coco_eval.stats[:12], dtype=np.float64)


# ---------------------------------------------------------------------------------------------
# Reading and checking results files


class COCOFormatError(ValueError):
    """A ground-truth or results file (or entry) that is not in the COCO format."""


class COCOResultsWarning(UserWarning):
    """Results that are valid but probably not what was meant (none at all, too many)."""


def _read_json(path: str | os.PathLike, expected: str) -> Any:
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise COCOFormatError(f"{path}: cannot read: {e}") from None
    if not text.strip():
        raise COCOFormatError(f"{path}: the file is empty; expected {expected}")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise COCOFormatError(
            f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}"
        ) from None


def load_results_file(path: str | os.PathLike) -> list:
    """The entries of a COCO results file (a JSON list), unchecked (see :func:`validate_results`).

    Raises:
        COCOFormatError: naming ``path``: unreadable or empty file, invalid JSON, not a list.
    """
    data = _read_json(path, "a JSON list of results")
    if not isinstance(data, list):
        raise COCOFormatError(
            f"{path}: expected a JSON list of results, got a JSON {_json_type(data)}"
        )
    return data


def load_gt_file(path: str | os.PathLike) -> dict:
    """A COCO ground-truth file: an object with "images", "annotations" and "categories".

    Raises:
        COCOFormatError: naming ``path``: unreadable or empty file, invalid JSON, a missing
            list, an image without id / height / width, a category without id / name.
    """
    data = _read_json(path, "a COCO ground-truth object")
    _check_gt(data, str(path))
    return data


def _json_type(value: Any) -> str:
    return {dict: "object", list: "list", str: "string"}.get(type(value), type(value).__name__)


def _check_gt(gt: Any, source: str) -> None:
    if not isinstance(gt, dict):
        raise COCOFormatError(f"{source}: expected a COCO object, got a JSON {_json_type(gt)}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(gt.get(key), list):
            raise COCOFormatError(f"{source}: {key!r} must be a list of COCO {key}")
    for key, needed in (("images", ("id", "height", "width")), ("categories", ("id", "name"))):
        for i, item in enumerate(gt[key]):
            missing = [k for k in needed if not isinstance(item, dict) or k not in item]
            if missing:
                raise COCOFormatError(f"{source}: {key}[{i}] has no {', '.join(missing)}")


def _is_number(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _rle_counts(counts: str) -> np.ndarray:
    """Run lengths of a COCO compressed RLE string.

    The format of pycocotools' ``maskApi.c``: each number in chunks of 5 bits, a character
    each (offset by 48), bit 0x20 set on all but the last chunk, bit 0x10 of the last chunk
    the sign; from the fourth run on, numbers are differences to the run two before.

    Raises:
        ValueError: for a character outside '0'..'o', a truncated or oversized number.
    """
    try:
        chars = np.frombuffer(counts.encode("ascii"), dtype=np.uint8).astype(np.int64) - 48
    except UnicodeEncodeError:
        raise ValueError("counts has non-ASCII characters") from None
    if chars.size == 0:
        return chars
    bad = np.flatnonzero((chars < 0) | (chars > 63))
    if bad.size:
        raise ValueError(f"counts has an invalid character {counts[bad[0]]!r} at {bad[0]}")
    more = (chars & 0x20) != 0
    if more[-1]:
        raise ValueError("counts ends inside a number")
    ends = np.flatnonzero(~more)
    starts = np.concatenate([[0], ends[:-1] + 1])
    lengths = ends - starts + 1
    if lengths.max() > 12:  # more than 60 bits: no image has that many pixels
        raise ValueError("counts holds a number too large for a run length")
    shift = 5 * (np.arange(chars.size) - np.repeat(starts, lengths))
    values = np.add.reduceat((chars & 0x1F) << shift, starts)
    values -= ((chars[ends] & 0x10) != 0).astype(np.int64) << (5 * lengths)
    runs = values.copy()
    runs[3::2] = np.cumsum(values[1::2])[1:]
    runs[4::2] = np.cumsum(values[2::2])[1:]
    return runs


def _check_rle(rle: dict, height: int, width: int) -> dict:
    """A compressed RLE with str counts, from a compressed or uncompressed one."""
    size, counts = rle.get("size"), rle.get("counts")
    if size is None or counts is None:
        raise ValueError("an RLE needs 'size' and 'counts'")
    if not isinstance(size, (list, tuple)) or list(size) != [height, width]:
        raise ValueError(f"RLE size {size!r} is not the image's [height, width] {[height, width]}")
    if isinstance(counts, (bytes, bytearray)):
        counts = counts.decode("ascii", errors="replace")
    if isinstance(counts, str):
        try:
            runs = _rle_counts(counts)
        except ValueError as e:
            raise ValueError(f"RLE {e}") from None
    elif isinstance(counts, list) and all(map(_is_int, counts)):
        runs = np.asarray(counts, dtype=np.int64)
    else:
        raise ValueError("RLE counts must be a string (compressed) or a list of integers")
    if (runs < 0).any():
        raise ValueError("RLE counts has a negative run length")
    if int(runs.sum()) != height * width:
        raise ValueError(
            f"RLE counts cover {int(runs.sum())} pixels, not height * width = {height * width}"
        )
    if isinstance(counts, list):
        counts = mask_util.frPyObjects({"size": [height, width], "counts": counts}, height, width)
        counts = counts["counts"].decode("ascii")
    return {"size": [height, width], "counts": counts}


def _check_segmentation(segmentation: Any, height: int, width: int) -> dict:
    """A compressed RLE with str counts from an RLE or a list of polygons."""
    if isinstance(segmentation, dict):
        return _check_rle(segmentation, height, width)
    if not isinstance(segmentation, list) or not segmentation:
        raise ValueError("must be an RLE object or a non-empty list of polygons")
    for i, polygon in enumerate(segmentation):
        if not isinstance(polygon, list) or not all(_is_number(v) for v in polygon):
            raise ValueError(f"polygon {i} is not a list of finite numbers")
        if len(polygon) % 2 or len(polygon) < 6:
            raise ValueError(
                f"polygon {i} has {len(polygon)} coordinates; needs an even number, at least 6"
            )
    rle = mask_util.merge(mask_util.frPyObjects(segmentation, height, width))
    return {"size": [height, width], "counts": rle["counts"].decode("ascii")}


def validate_results(
    results: Sequence[Any],
    gt: Mapping[str, Any],
    iou_types: Sequence[str] = ("bbox",),
    *,
    source: str = "results",
) -> list[dict]:
    """Check results entry by entry and return them in the form both COCO APIs take.

    Args:
        results: COCO results: ``{"image_id", "category_id", "score", "bbox": [x, y, w, h]}``
            for "bbox"; for "segm" a ``"segmentation"``: an RLE (compressed or not, ``size``
            the image's ``[height, width]``) or polygons ``[[x1, y1, x2, y2, ...], ...]``.
        gt: the ground truth, a COCO dataset dict.
        iou_types: what will be evaluated ("bbox", "segm"); decides which keys are required.
        source: how errors name the results (e.g. the file).

    Returns:
        new dicts with only ``image_id``, ``category_id``, ``score``, ``bbox`` (floats) and
        ``segmentation`` (a compressed RLE with str counts), each as far as given.

    Raises:
        COCOFormatError: for the first bad entry, naming its index, image_id and category_id:
            a missing key, an image or category id not in ``gt``, a box not of 4 finite numbers
            or with negative width or height, a score that is not a finite number, an RLE whose
            size is not the image's or whose counts are malformed or do not cover the image, a
            polygon with an odd number or fewer than 6 coordinates.

    Warns:
        COCOResultsWarning: no results at all; more than 100 results on an image.
    """
    for iou_type in iou_types:
        if iou_type not in IOU_TYPES:
            raise ValueError(f"Unknown IoU type {iou_type!r}; options: {IOU_TYPES}")
    _check_gt(gt, "ground truth")
    image_sizes = {img["id"]: (img["height"], img["width"]) for img in gt["images"]}
    category_ids = {cat["id"] for cat in gt["categories"]}
    required = ("image_id", "category_id", "score") + tuple(
        {"bbox": "bbox", "segm": "segmentation"}[t] for t in iou_types
    )
    checked = []
    for index, entry in enumerate(results):
        if not isinstance(entry, dict):
            raise COCOFormatError(
                f"{source}: entry {index} is a JSON {_json_type(entry)}, not an object"
            )
        where = (
            f"{source}: entry {index} (image_id={entry.get('image_id')!r}, "
            f"category_id={entry.get('category_id')!r})"
        )
        try:
            checked.append(_check_entry(entry, required, image_sizes, category_ids))
        except ValueError as e:
            raise COCOFormatError(f"{where}: {e}") from None

    if not checked:
        warnings.warn(
            f"{source}: no results; every AP and AR is 0 (-1 where the ground truth has no "
            "object), as pycocotools rates an empty set of detections",
            COCOResultsWarning,
            stacklevel=2,
        )
    per_image = Counter(r["image_id"] for r in checked)
    crowded = sorted(image_id for image_id, n in per_image.items() if n > MAX_DETS)
    if crowded:
        warnings.warn(
            f"{source}: {len(crowded)} images have more than {MAX_DETS} results (e.g. image_id="
            f"{crowded[0]}: {per_image[crowded[0]]}); COCO rates the {MAX_DETS} highest scores "
            "of each image only",
            COCOResultsWarning,
            stacklevel=2,
        )
    return checked


def _check_entry(
    entry: dict,
    required: Sequence[str],
    image_sizes: Mapping[int, tuple[int, int]],
    category_ids: set[int],
) -> dict:
    missing = [key for key in required if key not in entry]
    if missing:
        raise ValueError(f"missing {', '.join(repr(k) for k in missing)}")
    image_id, category_id, score = entry["image_id"], entry["category_id"], entry["score"]
    if not _is_int(image_id) or image_id not in image_sizes:
        raise ValueError(f"image_id {image_id!r} is not an image id of the ground truth")
    if not _is_int(category_id) or category_id not in category_ids:
        raise ValueError(f"category_id {category_id!r} is not a category id of the ground truth")
    if not _is_number(score):
        raise ValueError(f"score {score!r} is not a finite number")
    out = {"image_id": image_id, "category_id": category_id, "score": float(score)}
    if "bbox" in required:
        box = entry["bbox"]
        if not isinstance(box, (list, tuple)) or len(box) != 4 or not all(map(_is_number, box)):
            raise ValueError(f"bbox {box!r} is not 4 finite numbers [x, y, width, height]")
        if box[2] < 0 or box[3] < 0:
            raise ValueError(f"bbox {box!r} has a negative width or height")
        out["bbox"] = [float(v) for v in box]
    if "segmentation" in required:
        try:
            out["segmentation"] = _check_segmentation(entry["segmentation"], *image_sizes[image_id])
        except ValueError as e:
            raise ValueError(f"segmentation: {e}") from None
    return out


# ---------------------------------------------------------------------------------------------
# Evaluating results


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
    """What :func:`evaluate_results` found: the backend and the metrics by IoU type."""

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


def _run_cocoeval(gt: Mapping[str, Any], results: list[dict], iou_type: str, backend: str):
    """An evaluated, accumulated and summarised COCOeval of ``backend``."""
    if backend == "faster_coco_eval":
        coco_cls, cocoeval_fn = FasterCOCO, partial(COCOeval_faster, print_function=logger.debug)
    else:
        coco_cls, cocoeval_fn = PyCOCO, PyCOCOeval
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):  # pycocotools prints its progress
        # Fresh copies: loadRes and COCOeval write into annotations (segm: RLE replaces polygons).
        coco_gt = coco_cls()
        coco_gt.dataset = copy.deepcopy(dict(gt))
        coco_gt.createIndex()
        if results:
            coco_dt = coco_gt.loadRes(copy.deepcopy(results))
        else:
            # Neither loadRes of pycocotools nor that of older faster-coco-eval takes an empty
            # list; an index without annotations is what COCOeval sees for no detections.
            coco_dt = coco_cls()
            coco_dt.dataset = {
                "images": list(gt["images"]),
                "categories": list(gt["categories"]),
                "annotations": [],
            }
            coco_dt.createIndex()
        coco_eval = cocoeval_fn(coco_gt, coco_dt, iou_type)
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    logger.debug("%s (%s):\n%s", backend, iou_type, stdout.getvalue())
    return coco_eval


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
    backend: str = "auto",
) -> EvaluationReport:
    """Evaluate COCO results against COCO ground truth, as pycocotools' ``COCOeval`` does.

    For "segm", the area that sorts masks into small / medium / large is the mask's, and boxes
    given with the masks are ignored (Detectron2's ``COCOEvaluator`` does the same).

    Args:
        gt_json: ground-truth file (COCO instances format) or its loaded dict.
        results: results file or its loaded list (see :func:`validate_results`).
        iou_types: "bbox" and/or "segm".
        backend: "faster_coco_eval", "pycocotools" or "auto" (faster-coco-eval if importable).

    Returns:
        the metrics by IoU type and the backend that computed them.

    Raises:
        COCOFormatError: a bad file or entry (see :func:`load_gt_file`, :func:`validate_results`).
    """
    backend = _coco_backend(backend)
    if isinstance(gt_json, Mapping):
        gt = gt_json
        _check_gt(gt, "ground truth")
    else:
        gt = load_gt_file(gt_json)
    source = "results"
    if isinstance(results, (str, os.PathLike)):
        source, results = str(results), load_results_file(results)
    checked = validate_results(results, gt, iou_types, source=source)
    names = {cat["id"]: cat["name"] for cat in gt["categories"]}

    reports = {}
    for iou_type in dict.fromkeys(iou_types):
        key = "bbox" if iou_type == "bbox" else "segmentation"
        keep = ("image_id", "category_id", "score", key)
        typed = [{k: v for k, v in r.items() if k in keep} for r in checked]
        coco_eval = _run_cocoeval(gt, typed, iou_type, backend)
        precision = np.asarray(coco_eval.eval["precision"], dtype=np.float64)
        iou_thresholds = np.asarray(coco_eval.params.iouThrs, dtype=np.float64)
        per_category = [
            {"category_id": int(cat_id), "name": names[cat_id]}
            | _category_ap(precision, iou_thresholds, k)
            for k, cat_id in enumerate(coco_eval.params.catIds)
        ]
        stats = dict(zip(STAT_NAMES, map(float, coco_eval.stats[: len(STAT_NAMES)])))
        reports[iou_type] = IouTypeReport(stats, per_category, precision)
    return EvaluationReport(backend, len(gt["images"]), len(checked), reports)


# ---------------------------------------------------------------------------------------------
# Output


def _fmt(value: float) -> str:
    return "n/a" if value < 0 else f"{value:.4f}"


def format_report(report: EvaluationReport) -> str:
    """The 12 numbers (as pycocotools prints them) and a per-category table by IoU type."""
    lines = [
        f"COCO evaluation with {report.backend}: "
        f"{report.num_results} results on {report.num_images} images"
    ]
    for iou_type, r in report.iou_types.items():
        lines += ["", f"{iou_type}:"]
        for name, (iou, area, max_dets) in zip(STAT_NAMES, _STAT_SETTINGS):
            kind = "Average Precision" if name.startswith("AP") else "Average Recall"
            lines.append(
                f"  {name:<6} {kind:<17} @[ IoU={iou:<9} | area={area:>6} | maxDets={max_dets:>3} ]"
                f" = {_fmt(r.stats[name])}"
            )
        width = max([len("category")] + [len(c["name"]) for c in r.per_category])
        lines += ["", f"  {'category':<{width}} {'id':>6} {'AP':>7} {'AP50':>7} {'AP75':>7}"]
        for c in r.per_category:
            values = " ".join(f"{_fmt(c[m]):>7}" for m in PER_CATEGORY_METRICS)
            lines.append(f"  {c['name']:<{width}} {c['category_id']:>6} {values}")
    lines.append("(n/a: no ground truth in that category or area range)")
    return "\n".join(lines)


def write_report(report: EvaluationReport, output_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write :data:`METRICS_FILE` (JSON) and :data:`PER_CATEGORY_FILE` (CSV) into ``output_dir``.

    Returns:
        ``(json file, csv file)``. Values keep pycocotools' scale: [0, 1], -1 where undefined.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    json_file, csv_file = output_dir / METRICS_FILE, output_dir / PER_CATEGORY_FILE
    json_file.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    with open(csv_file, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["iou_type", "category_id", "name", *PER_CATEGORY_METRICS])
        for iou_type, r in report.iou_types.items():
            for c in r.per_category:
                values = [repr(c[m]) for m in PER_CATEGORY_METRICS]  # repr: exact round trip
                writer.writerow([iou_type, c["category_id"], c["name"], *values])
    return json_file, csv_file


def read_report(path: str | os.PathLike) -> EvaluationReport:
    """A report written by :func:`write_report`, from its folder or its JSON file."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    return EvaluationReport.from_dict(json.loads(path.read_text()))


def read_per_category_csv(path: str | os.PathLike) -> dict[str, list[dict[str, Any]]]:
    """Per-category rows of a CSV written by :func:`write_report`, by IoU type."""
    path = Path(path)
    if path.is_dir():
        path = path / PER_CATEGORY_FILE
    out: dict[str, list[dict[str, Any]]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            out.setdefault(row["iou_type"], []).append(
                {"category_id": int(row["category_id"]), "name": row["name"]}
                | {m: float(row[m]) for m in PER_CATEGORY_METRICS}
            )
    return out


def pr_curves(result: IouTypeReport) -> np.ndarray:
    """Precision-recall curves, one per IoU threshold (.50:.05:.95).

    COCO's interpolated precision at each recall threshold (0:.01:1), averaged over the
    categories with ground truth (area all, maxDets 100): the mean of a curve is the AP at
    its IoU threshold (row 0: AP50), the mean of all is AP. -1 where no category has ground
    truth.

    Returns:
        ``(10 IoU thresholds, 101 recall thresholds)`` array.
    """
    if result.precision is None:
        raise ValueError("No precision array: this report was read from a file")
    p = result.precision[:, :, :, 0, -1]  # (iou, recall, category)
    valid = p > -1
    count = valid.sum(2)
    mean = np.where(valid, p, 0).sum(2) / np.maximum(count, 1)
    return np.where(count > 0, mean, -1.0)


def plot_pr_curves(report: EvaluationReport, output_dir: str | os.PathLike) -> list[Path]:
    """Plot :func:`pr_curves` into ``pr_curve_<iou type>.png`` in ``output_dir``.

    Returns:
        the written files, one per IoU type of ``report`` with a precision array.
    """
    # A figure on an Agg canvas: no pyplot, no global backend or figure state touched.
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    recall = np.linspace(0.0, 1.0, 101)  # COCOeval's recThrs
    iou_thresholds = np.linspace(0.5, 0.95, 10)  # COCOeval's iouThrs
    written = []
    for iou_type, r in report.iou_types.items():
        if r.precision is None:
            continue
        fig = Figure(figsize=(8.0, 4.8), layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        colours = matplotlib.colormaps["viridis"](np.linspace(0, 0.9, len(iou_thresholds)))
        for curve, iou, colour in zip(pr_curves(r), iou_thresholds, colours):
            if (curve >= 0).all():
                label = f"IoU {iou:.2f}: AP {curve.mean():.3f}"
                ax.plot(recall, curve, color=colour, lw=1.5, label=label)
        ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision")
        ax.set_title(f"{iou_type}: AP {_fmt(r.stats['AP'])} ({report.backend})")
        ax.grid(alpha=0.3)
        if ax.lines:
            fig.legend(fontsize="small", loc="outside right upper")
        path = output_dir / f"pr_curve_{iou_type}.png"
        fig.savefig(path, dpi=100)
        written.append(path)
    return written
