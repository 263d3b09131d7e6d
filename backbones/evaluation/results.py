"""Checking COCO results against their ground truth (Lin et al., 2014, "Microsoft COCO").

A results file is a JSON list of ``{"image_id", "category_id", "score", "bbox" | "segmentation"}``;
masks are compressed RLE (pycocotools' ``maskApi.c`` format), uncompressed RLE or polygons. Both
files are read by the one COCO reader, :mod:`backbones.coco_json`.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from numbers import Real
from typing import Any

import numpy as np
import pycocotools.mask as mask_util

from ..coco_json import (
    COCOFormatError,
    check_coco_instances,
    json_type,
    read_coco_json,
    read_coco_results,
)
from ..progress import Progress
from .cocoeval import IOU_TYPES, MAX_DETS

__all__ = [
    "COCOFormatError",
    "COCOResultsWarning",
    "load_gt_file",
    "load_results_file",
    "validate_results",
]

logger = logging.getLogger(__name__)
# The evaluation's names for the one reader: the ground truth (an instances file), the results.
load_gt_file = read_coco_json
load_results_file = read_coco_results


class COCOResultsWarning(UserWarning):
    """Results that are valid but probably not what was meant (none at all, too many)."""


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
    """Check results entry by entry and return them in the form COCOeval takes.

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
    check_coco_instances(gt, "ground truth")
    image_sizes = {img["id"]: (img["height"], img["width"]) for img in gt["images"]}
    category_ids = {cat["id"] for cat in gt["categories"]}
    required = ("image_id", "category_id", "score") + tuple(
        {"bbox": "bbox", "segm": "segmentation"}[t] for t in iou_types
    )
    checked = []
    # Python-side work per entry (a polygon or an RLE decoded): the longest step before COCOeval.
    progress = Progress(len(results), what=f"checking {source}", logger=logger, unit="results")
    for index, entry in enumerate(results):
        if not isinstance(entry, dict):
            raise COCOFormatError(
                f"{source}: entry {index} is a JSON {json_type(entry)}, not an object"
            )
        where = (
            f"{source}: entry {index} (image_id={entry.get('image_id')!r}, "
            f"category_id={entry.get('category_id')!r})"
        )
        try:
            checked.append(_check_entry(entry, required, image_sizes, category_ids))
        except ValueError as e:
            raise COCOFormatError(f"{where}: {e}") from None
        progress.update()

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
