"""Tests for ``backbones.evaluation.evaluator``: ``FasterCOCOEvaluator`` and ``coco_stats`` against
Detectron2's official ``COCOEvaluator`` and pycocotools (the oracle), on a generated COCO set."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
from pathlib import Path

import faster_coco_eval
import numpy as np
import pycocotools.cocoeval
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2.data import DatasetCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.evaluation import COCOEvaluator
from detectron2.evaluation.coco_evaluation import (
    _evaluate_predictions_on_coco,
    instances_to_coco_json,
)
from detectron2.structures import Boxes, Instances
from pycocotools.coco import COCO

from backbones.evaluation import FasterCOCOEvaluator, coco_stats, evaluate_results

# Non-contiguous ids; "hexagon" has ground truth but is never predicted, "pentagon" has neither.
CATEGORIES = [(1, "circle"), (3, "square"), (7, "hexagon"), (9, "pentagon")]
PREDICTED_IDS = (1, 3)
HEIGHT, WIDTH = 320, 400
NUM_IMAGES = 6  # the last one has no annotations

# A detection: box [x, y, w, h], dataset category id, score.
Detection = tuple[list[float], int, float]


def _diamond(x: float, y: float, w: float, h: float) -> list[float]:
    """A polygon inside a box, so that masks and boxes give different IoUs."""
    return [x + w / 2, y, x + w, y + h / 2, x + w / 2, y + h, x, y + h / 2]


def _make_coco(rng: np.random.Generator) -> dict:
    images = [
        {"id": i, "file_name": f"{i:03d}.png", "height": HEIGHT, "width": WIDTH}
        for i in range(1, NUM_IMAGES + 1)
    ]
    annotations = []
    for image_id in range(1, NUM_IMAGES):
        for k in range(int(rng.integers(2, 6))):
            # Sides log-uniform in 6..300 px, the first object large: all COCO area ranges.
            w, h = np.exp(rng.uniform(np.log(150 if k == 0 else 6), np.log(300), size=2))
            x, y = rng.uniform(0, WIDTH - w), rng.uniform(0, HEIGHT - h)
            poly = _diamond(x, y, w, h)
            rle = mask_util.merge(mask_util.frPyObjects([poly], HEIGHT, WIDTH))
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(rng.choice([1, 3, 7])),
                    "bbox": [x, y, w, h],
                    "segmentation": [poly],
                    "area": float(mask_util.area(rle)),
                    "iscrowd": int(image_id == 2 and k == 1),
                }
            )
    categories = [{"id": i, "name": n, "supercategory": "shape"} for i, n in CATEGORIES]
    return {"images": images, "annotations": annotations, "categories": categories}


def _false_positive(rng: np.random.Generator, low: float, high: float) -> Detection:
    w, h = rng.uniform(5, 80, size=2)
    box = [rng.uniform(0, WIDTH - w), rng.uniform(0, HEIGHT - h), w, h]
    return box, int(rng.choice(PREDICTED_IDS)), float(low + (high - low) * rng.random())


def _detections(coco: dict, rng: np.random.Generator) -> dict[int, list[Detection]]:
    """Noisy copies of most ground-truth objects plus false positives, by image."""
    per_image: dict[int, list[Detection]] = {img["id"]: [] for img in coco["images"]}
    for ann in coco["annotations"]:
        if rng.random() < 0.8:
            x, y, w, h = ann["bbox"]
            dx, dy, dw, dh = rng.normal(0, 0.1, size=4) * [w, h, w, h]
            cat = ann["category_id"] if ann["category_id"] in PREDICTED_IDS else 1
            if rng.random() < 0.15:
                cat = 4 - cat  # the other predicted class
            box = [x + dx, y + dy, max(w + dw, 2.0), max(h + dh, 2.0)]
            per_image[ann["image_id"]].append((box, cat, float(rng.random())))
    for dets in per_image.values():
        dets += [_false_positive(rng, 0.0, 0.5) for _ in range(2)]
    return per_image


def _instances(dets: list[Detection]) -> Instances:
    """Detections as a model's output: contiguous classes, masks of the boxes' diamonds."""
    contiguous = {cat_id: i for i, (cat_id, _) in enumerate(CATEGORIES)}
    boxes = torch.tensor([[x, y, x + w, y + h] for (x, y, w, h), _, _ in dets])
    masks = [
        mask_util.decode(mask_util.merge(mask_util.frPyObjects([_diamond(*b)], HEIGHT, WIDTH)))
        for b, _, _ in dets
    ]
    instances = Instances((HEIGHT, WIDTH))
    instances.pred_boxes = Boxes(boxes.float())
    instances.scores = torch.tensor([s for _, _, s in dets])
    instances.pred_classes = torch.tensor([contiguous[c] for _, c, _ in dets])
    instances.pred_masks = torch.from_numpy(np.stack(masks)).bool()
    return instances


@pytest.fixture(scope="module")
def coco_case(tmp_path_factory) -> tuple[str, Path, dict[int, Instances]]:
    """A registered COCO dataset (name, json file) and model outputs for its images."""
    rng = np.random.default_rng(0)
    coco = _make_coco(rng)
    json_file = tmp_path_factory.mktemp("coco") / "instances.json"
    json_file.write_text(json.dumps(coco))
    name = "evaluator_test_coco"
    register_coco_instances(name, {}, str(json_file), str(json_file.parent))
    DatasetCatalog.get(name)  # sets thing_classes and the category id mapping
    outputs = {i: _instances(dets) for i, dets in _detections(coco, rng).items()}
    return name, json_file, outputs


@pytest.fixture(scope="module")
def crowded_outputs(coco_case) -> dict[int, Instances]:
    """The outputs with 16 more false positives per image, scores in [0, 1): how many
    detections of an image and category are rated (COCO's maxDets) then changes AP."""
    rng = np.random.default_rng(1)
    crowded = {}
    for image_id, instances in coco_case[2].items():
        extra = [_false_positive(rng, 0.0, 1.0) for _ in range(16)]
        crowded[image_id] = Instances.cat([instances, _instances(extra)])
    return crowded


def _run(evaluator, outputs: dict[int, Instances]) -> dict:
    evaluator.reset()
    for image_id, instances in outputs.items():
        evaluator.process([{"image_id": image_id}], [{"instances": instances}])
    return evaluator.evaluate()


def _coco_results(outputs: dict[int, Instances]) -> list[dict]:
    dataset_ids = [cat_id for cat_id, _ in CATEGORIES]
    results = [
        r for image_id, inst in outputs.items() for r in instances_to_coco_json(inst, image_id)
    ]
    for r in results:
        r["category_id"] = dataset_ids[r["category_id"]]
    return results


def _pycocotools_stats(
    json_file: Path, results: list[dict], iou_type: str, max_dets: int = 100
) -> np.ndarray:
    """The oracle: Detectron2's COCO evaluation run on pycocotools, the official API
    (``COCOevalMaxDets``, a pycocotools ``COCOeval``, for ``max_dets`` other than 100)."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco_eval = _evaluate_predictions_on_coco(
            COCO(str(json_file)),
            copy.deepcopy(results),
            iou_type,
            cocoeval_fn=pycocotools.cocoeval.COCOeval,
            max_dets_per_image=[1, 10, max_dets],
        )
    return np.asarray(coco_eval.stats[:12], dtype=np.float64)


def _assert_same_metrics(got: dict, expected: dict) -> None:
    assert set(got) == set(expected)
    for task in expected:
        assert set(got[task]) == set(expected[task])
        for metric, value in expected[task].items():
            assert got[task][metric] == pytest.approx(value, abs=1e-7, nan_ok=True), metric


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_coco_stats_match_pycocotools(coco_case, iou_type):
    _, json_file, outputs = coco_case
    results = _coco_results(outputs)
    faster = coco_stats(json_file, results, iou_type)
    official = _pycocotools_stats(json_file, results, iou_type)
    assert faster.shape == official.shape == (12,)
    # Not a vacuous comparison: real detections with partial precision and recall.
    assert 0.05 < official[0] < 0.95 and (official[3:6] > -1).all()
    np.testing.assert_allclose(faster, official, rtol=0, atol=1e-9)


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_coco_stats_with_custom_max_dets_match_pycocotools(coco_case, crowded_outputs, iou_type):
    """All 12 numbers, AR at 1, 10 and max_dets included; below 10 too (COCOeval sorts maxDets:
    AR1, AR5, AR10 and AP at 10)."""
    json_file = coco_case[1]
    results = _coco_results(crowded_outputs)
    per_image = np.bincount([r["image_id"] for r in results])
    assert per_image[1:].min() > 12  # every max_dets below but 100 and 300 cuts detections
    stats = {}
    for max_dets in (5, 10, 12, 100, 300):
        faster = coco_stats(json_file, results, iou_type, max_dets=max_dets)
        official = _pycocotools_stats(json_file, results, iou_type, max_dets)
        np.testing.assert_allclose(faster, official, rtol=0, atol=1e-9, err_msg=str(max_dets))
        stats[max_dets] = official
    # Not vacuous: the detections beyond max_dets count (AP, AR@max_dets).
    assert stats[10][0] < stats[100][0] and stats[10][8] < stats[100][8]
    np.testing.assert_array_equal(stats[100], stats[300])


def test_evaluator_matches_detectron2_official(coco_case, tmp_path):
    name, _, outputs = coco_case
    ours = FasterCOCOEvaluator(name, tasks=("bbox", "segm"), output_dir=str(tmp_path))
    official = COCOEvaluator(name, tasks=("bbox", "segm"), use_fast_impl=False)
    got, expected = _run(ours, outputs), _run(official, outputs)

    assert set(got) == set(expected) == {"bbox", "segm"}
    _assert_same_metrics(got, expected)
    # Never predicted: AP 0; no ground truth: NaN.
    assert got["bbox"]["AP-hexagon"] == 0 and math.isnan(got["bbox"]["AP-pentagon"])

    results = json.loads((tmp_path / "coco_instances_results.json").read_text())
    assert {r["category_id"] for r in results} == set(PREDICTED_IDS)
    assert {r["image_id"] for r in results} == set(range(1, NUM_IMAGES + 1))
    metrics = json.loads((tmp_path / "coco_metrics.json").read_text())
    assert metrics["bbox"]["AP"] == pytest.approx(got["bbox"]["AP"])


@pytest.mark.parametrize("max_dets", [5, 300])
def test_evaluator_with_custom_max_dets_matches_detectron2_official(
    coco_case, crowded_outputs, max_dets
):
    """Detectron2 evaluates these with COCOevalMaxDets (pycocotools); ours stays on
    faster-coco-eval and gives the same numbers."""
    name = coco_case[0]
    tasks = ("bbox", "segm")
    ours = FasterCOCOEvaluator(name, tasks=tasks, max_dets_per_image=max_dets)
    official = COCOEvaluator(name, tasks=tasks, max_dets_per_image=max_dets, use_fast_impl=False)
    _assert_same_metrics(_run(ours, crowded_outputs), _run(official, crowded_outputs))


@pytest.mark.parametrize("max_dets", [0, -5, 2.5, True, "100"])
def test_evaluator_rejects_a_bad_max_dets(coco_case, max_dets):
    with pytest.raises(ValueError, match=rf"max_dets_per_image={max_dets!r}: expected a positive"):
        FasterCOCOEvaluator(coco_case[0], max_dets_per_image=max_dets)


def test_metrics_come_from_faster_coco_eval_only(coco_case, monkeypatch):
    """pycocotools is the tests' oracle, never a code path of the package."""

    def fail(*args, **kwargs):
        raise AssertionError("pycocotools' COCOeval was used")

    monkeypatch.setattr(pycocotools.cocoeval.COCOeval, "__init__", fail)
    monkeypatch.setattr(COCO, "loadRes", fail)
    name, json_file, outputs = coco_case
    evaluator = FasterCOCOEvaluator(name, tasks=("bbox", "segm"))
    assert isinstance(evaluator._coco_api, faster_coco_eval.COCO)
    metrics = _run(evaluator, outputs)
    assert 0 < metrics["bbox"]["AP"] < 100 and 0 < metrics["segm"]["AP"] < 100
    results = _coco_results(outputs)
    assert 0 < coco_stats(json_file, results, "segm")[0] < 1
    report = evaluate_results(json_file, results, ("bbox", "segm"))
    assert report.backend == "faster_coco_eval"
    assert report.iou_types["bbox"].stats["AP"] == pytest.approx(metrics["bbox"]["AP"] / 100)
