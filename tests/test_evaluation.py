"""Tests for ``backbones.evaluation`` and ``tools/coco_eval.py``: parity with pycocotools on
generated COCO sets, bad inputs, the report files, and agreement with ``train_net --eval-only``."""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util
import pytest
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from backbones.evaluation import (
    STAT_NAMES,
    COCOFormatError,
    COCOResultsWarning,
    evaluate_results,
    plot_pr_curves,
    pr_curves,
    read_per_category_csv,
    read_report,
    validate_results,
    write_report,
)
from backbones.evaluation.results import _rle_counts

ROOT = Path(__file__).resolve().parents[1]

HEIGHT, WIDTH = 240, 320
IMAGE_IDS = (10, 11, 12, 13, 14, 15)  # 15 has no annotations
# "triangle" has ground truth but no detections; "star" has detections but no ground truth.
CATEGORIES = {1: "circle", 2: "square", 5: "triangle", 8: "star"}
CROWD_RLE_IMAGE, CROWD_POLYGON_IMAGE = 11, 12


def _diamond(x: float, y: float, w: float, h: float) -> list[float]:
    """A polygon inside a box, so that masks and boxes give different IoUs."""
    return [x + w / 2, y, x + w, y + h / 2, x + w / 2, y + h, x, y + h / 2]


def _rle(polygons: list[list[float]]) -> dict:
    return mask_util.merge(mask_util.frPyObjects(polygons, HEIGHT, WIDTH))


def _uncompressed(rle: dict) -> dict:
    """Run lengths of a compressed RLE, from its decoded mask (column-major)."""
    flat = mask_util.decode(rle).flatten(order="F")
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
    runs = np.diff(bounds).tolist()
    return {"size": [HEIGHT, WIDTH], "counts": ([0] if flat[0] else []) + runs}


def make_gt(rng: np.random.Generator) -> dict:
    """Objects of all COCO area ranges on 5 images; crowd regions as RLE and as polygon."""
    annotations = []

    def add(image_id, category_id, box, iscrowd=0, rle_segmentation=False):
        poly = _diamond(*box)
        rle = _rle([poly])
        segmentation = _uncompressed(rle) if rle_segmentation else [poly]
        annotations.append(
            {
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": category_id,
                "bbox": list(box),
                "segmentation": segmentation,
                "area": float(mask_util.area(rle)),
                "iscrowd": iscrowd,
            }
        )

    for image_id in IMAGE_IDS[:-1]:
        for k in range(int(rng.integers(3, 6))):
            # Sides log-uniform in 5..220 px, the first object large: all COCO area ranges.
            w, h = np.exp(rng.uniform(np.log(150 if k == 0 else 5), np.log(220), size=2))
            box = (rng.uniform(0, WIDTH - w), rng.uniform(0, HEIGHT - h), w, h)
            add(image_id, int(rng.choice([1, 2, 5])), box)
    add(CROWD_RLE_IMAGE, 1, (5.0, 60.0, 70.0, 50.0), iscrowd=1, rle_segmentation=True)
    add(CROWD_POLYGON_IMAGE, 2, (80.0, 10.0, 60.0, 40.0), iscrowd=1)
    images = [
        {"id": i, "file_name": f"{i}.png", "height": HEIGHT, "width": WIDTH} for i in IMAGE_IDS
    ]
    categories = [{"id": i, "name": n, "supercategory": "shape"} for i, n in CATEGORIES.items()]
    return {"images": images, "annotations": annotations, "categories": categories}


def make_results(gt: dict, rng: np.random.Generator) -> tuple[list[dict], list[list[float]]]:
    """Noisy copies of most objects (crowds too), false positives on every image, "star"
    detections; boxes and compressed-RLE masks. Also returns each result's polygon."""
    results, polygons = [], []

    def add(image_id, category_id, box, score):
        poly = _diamond(*box)
        rle = _rle([poly])
        rle["counts"] = rle["counts"].decode("ascii")
        results.append(
            {
                "image_id": image_id,
                "category_id": category_id,
                "bbox": [float(v) for v in box],
                "score": score,
                "segmentation": rle,
            }
        )
        polygons.append(poly)

    for ann in gt["annotations"]:
        if rng.random() < 0.85:
            x, y, w, h = ann["bbox"]
            dx, dy, dw, dh = rng.normal(0, 0.1, size=4) * [w, h, w, h]
            category = {5: 1}.get(ann["category_id"], ann["category_id"])
            if rng.random() < 0.15:
                category = 3 - category  # the other of circle and square
            box = (x + dx, y + dy, max(w + dw, 2.0), max(h + dh, 2.0))
            add(ann["image_id"], category, box, float(rng.random()))
    for ann in gt["annotations"]:
        if ann["iscrowd"]:
            add(ann["image_id"], ann["category_id"], ann["bbox"], 0.9)
    for image_id in IMAGE_IDS:
        for category in (1, 2, 8):
            w, h = rng.uniform(4, 60, size=2)
            box = (rng.uniform(0, WIDTH - w), rng.uniform(0, HEIGHT - h), w, h)
            add(image_id, category, box, float(rng.random() * 0.6))
    return results, polygons


@pytest.fixture(scope="module")
def case(tmp_path_factory) -> tuple[Path, dict, list[dict], list[list[float]]]:
    """(ground-truth file, its dict, results, each result's polygon)."""
    rng = np.random.default_rng(0)
    gt = make_gt(rng)
    results, polygons = make_results(gt, rng)
    path = tmp_path_factory.mktemp("coco") / "instances.json"
    path.write_text(json.dumps(gt))
    return path, gt, results, polygons


def pycocotools_eval(
    gt_file: Path, results: list[dict], iou_type: str, cat_ids: list[int] | None = None
) -> COCOeval:
    """pycocotools' summarised COCOeval (the oracle), run directly; masks rated by their own
    area (no bbox)."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(gt_file))
        results = copy.deepcopy(results)
        if iou_type == "segm":
            for r in results:
                r.pop("bbox", None)
        if results:
            coco_dt = coco_gt.loadRes(results)
        else:  # pycocotools' loadRes fails on []: an index without detections
            coco_dt = COCO()
            coco_dt.dataset = {k: coco_gt.dataset[k] for k in ("images", "categories")}
            coco_dt.dataset["annotations"] = []
            coco_dt.createIndex()
        coco_eval = COCOeval(coco_gt, coco_dt, iou_type)
        if cat_ids is not None:
            coco_eval.params.catIds = cat_ids
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return coco_eval


def pycocotools_stats(
    gt_file: Path, results: list[dict], iou_type: str, cat_ids: list[int] | None = None
) -> np.ndarray:
    """pycocotools' 12 numbers, run directly (see :func:`pycocotools_eval`)."""
    coco_eval = pycocotools_eval(gt_file, results, iou_type, cat_ids)
    return np.asarray(coco_eval.stats[:12], dtype=np.float64)


# ---------------------------------------------------------------------------------------------
# Parity with pycocotools


def test_generated_set_covers_the_cases(case):
    _, gt, results, _ = case
    crowds = [a for a in gt["annotations"] if a["iscrowd"]]
    assert {type(a["segmentation"]) for a in crowds} == {dict, list}  # RLE and polygon crowds
    for crowd in crowds:  # a detection on each crowd region, which COCO ignores
        dets = [r["bbox"] for r in results if r["image_id"] == crowd["image_id"]]
        assert mask_util.iou(dets, [crowd["bbox"]], [1]).max() > 0.9
    annotated = {a["image_id"] for a in gt["annotations"]}
    assert IMAGE_IDS[-1] not in annotated and IMAGE_IDS[-1] in {r["image_id"] for r in results}
    assert 5 in {a["category_id"] for a in gt["annotations"]}
    assert 5 not in {r["category_id"] for r in results}
    assert 8 in {r["category_id"] for r in results}
    assert 8 not in {a["category_id"] for a in gt["annotations"]}


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_matches_pycocotools(case, iou_type):
    gt_file, _, results, _ = case
    report = evaluate_results(gt_file, results, [iou_type])
    assert report.backend == "faster_coco_eval"
    assert (report.num_images, report.num_results) == (len(IMAGE_IDS), len(results))
    got = report.iou_types[iou_type]
    expected = pycocotools_stats(gt_file, results, iou_type)
    # Not a vacuous comparison: partial precision and recall, every area range rated.
    assert 0.05 < expected[0] < 0.95 and (expected[3:6] > -1).all()
    assert list(got.stats) == list(STAT_NAMES)
    np.testing.assert_allclose(list(got.stats.values()), expected, rtol=0, atol=1e-9)

    assert [c["category_id"] for c in got.per_category] == sorted(CATEGORIES)
    for c in got.per_category:
        assert c["name"] == CATEGORIES[c["category_id"]]
        per_cat = pycocotools_stats(gt_file, results, iou_type, cat_ids=[c["category_id"]])
        np.testing.assert_allclose([c["AP"], c["AP50"], c["AP75"]], per_cat[:3], atol=1e-9)
    by_name = {c["name"]: c for c in got.per_category}
    assert by_name["triangle"]["AP"] == 0  # ground truth, never detected
    assert by_name["star"]["AP"] == -1  # detected, no ground truth
    assert 0 < by_name["circle"]["AP"] < 1
    assert got.precision.shape == (10, 101, len(CATEGORIES), 4, 3)


def test_both_iou_types_in_one_run_match_pycocotools(case):
    gt_file, gt, results, _ = case
    report = evaluate_results(gt, results, ("bbox", "segm"))
    for iou_type in ("bbox", "segm"):
        got, official = report.iou_types[iou_type], pycocotools_eval(gt_file, results, iou_type)
        np.testing.assert_allclose(list(got.stats.values()), official.stats[:12], atol=1e-9)
        np.testing.assert_allclose(got.precision, official.eval["precision"], atol=1e-9)
        for c in got.per_category:
            per_cat = pycocotools_stats(gt_file, results, iou_type, cat_ids=[c["category_id"]])
            np.testing.assert_allclose([c["AP"], c["AP50"], c["AP75"]], per_cat[:3], atol=1e-9)
    # Masks are not boxes: the two IoU types give different numbers.
    assert report.iou_types["bbox"].stats["AP"] != report.iou_types["segm"].stats["AP"]


def test_empty_results_give_pycocotools_numbers(case):
    gt_file, gt, _, _ = case
    with pytest.warns(COCOResultsWarning, match="no results"):
        report = evaluate_results(gt_file, [], ("bbox", "segm"))
    # No detection: 0 where some non-crowd object falls in the area range, else -1 (undefined).
    areas = [a["area"] for a in gt["annotations"] if not a["iscrowd"]]
    in_range = {
        "s": any(a <= 32**2 for a in areas),
        "m": any(32**2 <= a <= 96**2 for a in areas),
        "l": any(a >= 96**2 for a in areas),
    }
    assert all(in_range.values())
    for iou_type, r in report.iou_types.items():
        expected = pycocotools_stats(gt_file, [], iou_type)
        np.testing.assert_array_equal(list(r.stats.values()), expected)
        assert set(r.stats.values()) == {0.0}
        ap = {c["name"]: c["AP"] for c in r.per_category}
        assert ap == {"circle": 0.0, "square": 0.0, "triangle": 0.0, "star": -1.0}


def test_images_without_annotations_count_their_false_positives(case):
    """High-scoring detections on the image without objects lower AP, as in pycocotools."""
    gt_file, _, results, _ = case
    empty_image = IMAGE_IDS[-1]
    boosted = [r | {"score": 0.99} if r["image_id"] == empty_image else r for r in results]
    without = [r for r in results if r["image_id"] != empty_image]
    for dets in (boosted, without):
        got = evaluate_results(gt_file, dets, ["bbox", "segm"])
        for iou_type, r in got.iou_types.items():
            expected = pycocotools_stats(gt_file, dets, iou_type)
            np.testing.assert_allclose(list(r.stats.values()), expected, rtol=0, atol=1e-9)
    ap = [evaluate_results(gt_file, d).iou_types["bbox"].stats["AP"] for d in (boosted, without)]
    assert ap[0] < ap[1]


def test_polygon_and_uncompressed_rle_results_equal_compressed(case):
    gt_file, _, results, polygons = case
    as_polygons = [r | {"segmentation": [p]} for r, p in zip(results, polygons)]
    as_runs = [r | {"segmentation": _uncompressed(r["segmentation"])} for r in results]
    expected = evaluate_results(gt_file, results, ["segm"]).to_dict()
    assert evaluate_results(gt_file, as_polygons, ["segm"]).to_dict() == expected
    assert evaluate_results(gt_file, as_runs, ["segm"]).to_dict() == expected


def test_rle_counts_decoder_matches_pycocotools():
    rng = np.random.default_rng(1)
    for _ in range(50):
        h, w = (int(n) for n in rng.integers(1, 300, size=2))
        mask = (rng.random((h, w)) < rng.random()).astype(np.uint8)
        rle = mask_util.encode(np.asfortranarray(mask))
        runs = _rle_counts(rle["counts"].decode("ascii"))
        assert runs.tolist() == _uncompressed(rle)["counts"]


# ---------------------------------------------------------------------------------------------
# Bad inputs


def _set(key, value):
    return lambda r: r.__setitem__(key, value)


def _set_segmentation(key, value):
    return lambda r: r["segmentation"].__setitem__(key, value)


BAD_ENTRIES = {
    "unknown image": (_set("image_id", 999), r"image_id 999 is not an image id"),
    "unknown category": (_set("category_id", 3), r"category_id 3 is not a category id"),
    "image id not int": (_set("image_id", "10"), r"image_id '10' is not an image id"),
    "missing score": (lambda r: r.pop("score"), r"missing 'score'"),
    "score NaN": (_set("score", float("nan")), r"score nan is not a finite number"),
    "box of 3": (_set("bbox", [1, 2, 3]), r"bbox \[1, 2, 3\] is not 4 finite numbers"),
    "box inf": (_set("bbox", [1, 2, math.inf, 4]), r"bbox \[1, 2, inf, 4\] is not 4 finite"),
    "box string": (_set("bbox", "1 2 3 4"), r"bbox '1 2 3 4' is not 4 finite"),
    "box negative": (_set("bbox", [1, 2, -3, 4]), r"bbox \[1, 2, -3, 4\] has a negative width"),
    "missing box": (lambda r: r.pop("bbox"), r"missing 'bbox'"),
    "missing mask": (lambda r: r.pop("segmentation"), r"missing 'segmentation'"),
    "RLE size": (
        _set_segmentation("size", [60, 80]),
        r"segmentation: RLE size \[60, 80\] is not the image's \[height, width\] \[240, 320\]",
    ),
    "RLE character": (
        _set_segmentation("counts", "0{0"),
        r"segmentation: RLE counts has an invalid character '\{' at 1",
    ),
    "RLE truncated": (
        _set_segmentation("counts", "0P"),
        r"segmentation: RLE counts ends inside a number",
    ),
    "RLE too short": (
        _set_segmentation("counts", "V1"),
        r"segmentation: RLE counts cover 38 pixels, not height \* width = 76800",
    ),
    "RLE negative": (
        _set_segmentation("counts", [76801, -1]),
        r"segmentation: RLE counts has a negative run length",
    ),
    "RLE counts type": (
        _set_segmentation("counts", 5),
        r"segmentation: RLE counts must be a string \(compressed\) or a list of int",
    ),
    "polygon odd": (
        _set("segmentation", [[1, 2, 3, 4, 5, 6, 7]]),
        r"segmentation: polygon 0 has 7 coord",
    ),
    "polygon short": (
        _set("segmentation", [[1, 2, 3, 4, 5, 6], [1, 2, 3, 4]]),
        r"segmentation: polygon 1 has 4 coordinates; needs an even number, at least 6",
    ),
    "RLE size type": (_set_segmentation("size", 240), r"segmentation: RLE size 240 is not the"),
    "mask a string": (_set("segmentation", "abc"), r"segmentation: must be an RLE object or a"),
    "polygon NaN": (
        _set("segmentation", [[1, 2, 3, 4, 5, None]]),
        r"segmentation: polygon 0 is not a list",
    ),
}


@pytest.mark.parametrize("name", BAD_ENTRIES)
def test_bad_entry_is_named(case, name):
    _, gt, results, _ = case
    mutate, message = BAD_ENTRIES[name]
    results = copy.deepcopy(results[:6])
    mutate(results[3])
    image_id, category_id = results[3].get("image_id"), results[3].get("category_id")
    where = rf"dt.json: entry 3 \(image_id={image_id!r}, category_id={category_id}\): "
    with pytest.raises(COCOFormatError, match=where + message):
        validate_results(results, gt, ("bbox", "segm"), source="dt.json")


def test_entry_not_an_object(case):
    _, gt, results, _ = case
    with pytest.raises(COCOFormatError, match=r"results: entry 1 is a JSON list, not an object"):
        validate_results([results[0], [1, 2]], gt)


def test_box_only_evaluation_needs_no_mask(case):
    _, gt, results, _ = case
    boxes = [{k: r[k] for k in ("image_id", "category_id", "bbox", "score")} for r in results]
    assert validate_results(boxes, gt, ("bbox",)) == boxes
    with pytest.raises(COCOFormatError, match="entry 0 .*missing 'segmentation'"):
        validate_results(boxes, gt, ("segm",))


def test_more_than_100_results_per_image_warn(case):
    _, gt, results, _ = case
    many = [results[0] | {"score": i / 200} for i in range(101)]
    with pytest.warns(COCOResultsWarning, match=r"image_id=10: 101\); COCO rates the 100"):
        validate_results(many, gt)


@pytest.mark.parametrize(
    "text, message",
    [
        ("", r"dt.json: the file is empty"),
        ("  \n", r"dt.json: the file is empty"),
        ('{"image_id": 1}', r"dt.json: expected a JSON list of results, got a JSON object"),
        ("[{]", r"dt.json: not valid JSON at line 1, column 3"),
    ],
)
def test_bad_results_file(case, tmp_path, text, message):
    gt_file = case[0]
    dt = tmp_path / "dt.json"
    dt.write_text(text)
    with pytest.raises(COCOFormatError, match=message):
        evaluate_results(gt_file, dt)


def test_missing_files_and_bad_ground_truth(case, tmp_path):
    gt_file, gt, results, _ = case
    with pytest.raises(COCOFormatError, match=r"nothere.json: cannot read"):
        evaluate_results(gt_file, tmp_path / "nothere.json")
    bad_gt = tmp_path / "gt.json"
    bad_gt.write_text(json.dumps({k: v for k, v in gt.items() if k != "categories"}))
    message = r"gt.json: not COCO instances \(no list 'categories'\); see docs/data.md"
    with pytest.raises(COCOFormatError, match=message):
        evaluate_results(bad_gt, results)
    bad_gt.write_text(json.dumps(gt | {"images": gt["images"][:2] + [{"id": 12}]}))
    with pytest.raises(COCOFormatError, match=r"gt.json: images\[2\] has no height, width"):
        evaluate_results(bad_gt, results)


# ---------------------------------------------------------------------------------------------
# Report files and plots


def test_report_round_trip(case, tmp_path):
    gt_file, _, results, _ = case
    report = evaluate_results(gt_file, results, ("bbox", "segm"))
    json_file, csv_file = write_report(report, tmp_path / "out")
    # Strict JSON: no NaN or Infinity.
    json.loads(json_file.read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert read_report(tmp_path / "out") == report
    assert read_report(json_file).to_dict() == report.to_dict()
    per_category = read_per_category_csv(csv_file)
    assert per_category == {k: r.per_category for k, r in report.iou_types.items()}
    assert csv_file.read_text().splitlines()[0] == "iou_type,category_id,name,AP,AP50,AP75"


def test_read_report_names_a_bad_file(case, tmp_path):
    gt_file, _, results, _ = case
    json_file, _ = write_report(evaluate_results(gt_file, results[:5]), tmp_path)
    json_file.write_text('{"backend": "faster_coco_eval"')
    with pytest.raises(ValueError, match=rf"{json_file}: invalid JSON at line 1"):
        read_report(tmp_path)
    json_file.write_text('{"backend": "faster_coco_eval"}')
    with pytest.raises(ValueError, match=rf"{json_file}: not a report .*'num_images'"):
        read_report(json_file)


def test_pr_curves_average_to_ap(case, tmp_path):
    gt_file, _, results, _ = case
    report = evaluate_results(gt_file, results, ("bbox", "segm"))
    for iou_type, r in report.iou_types.items():
        curves = pr_curves(r)
        assert curves.shape == (10, 101)
        assert curves[0].mean() == pytest.approx(r.stats["AP50"], abs=1e-12)
        assert curves[5].mean() == pytest.approx(r.stats["AP75"], abs=1e-12)
        assert curves.mean() == pytest.approx(r.stats["AP"], abs=1e-12)
        assert (np.diff(curves, axis=1) <= 0).all()  # interpolated: non-increasing in recall
    files = plot_pr_curves(report, tmp_path)
    assert files == [tmp_path / "pr_curve_bbox.png", tmp_path / "pr_curve_segm.png"]
    for path in files:
        image = np.asarray(Image.open(path).convert("L"))
        assert image.shape == (480, 800) and image.std() > 10
    with pytest.raises(ValueError, match="read from a file"):
        pr_curves(read_report(write_report(report, tmp_path)[0]).iou_types["bbox"])


# ---------------------------------------------------------------------------------------------
# Command line


def _load_tool():
    spec = importlib.util.spec_from_file_location("coco_eval_tool", ROOT / "tools" / "coco_eval.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_writes_files_next_to_results(case, tmp_path, capsys):
    gt_file, gt, results, _ = case
    tool = _load_tool()
    dt = tmp_path / "results.json"
    dt.write_text(json.dumps(results))
    argv = ["--gt", str(gt_file), "--dt", str(dt), "--iou-type", "bbox", "segm", "--plot"]
    assert tool.main(argv) == 0
    out = capsys.readouterr().out
    assert f"COCO evaluation with faster_coco_eval: {len(results)} results on 6 images" in out
    assert "AP50" in out and "triangle" in out
    names = ["coco_eval_metrics.json", "coco_eval_per_category.csv"]
    names += ["pr_curve_bbox.png", "pr_curve_segm.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names + ["results.json"])
    assert all(f"wrote {tmp_path / name}" in out for name in names)
    expected = evaluate_results(gt, results, ("bbox", "segm")).to_dict()
    assert read_report(tmp_path).to_dict() == expected
    # The printed AP matches the file, to the printed precision.
    ap = expected["iou_types"]["segm"]["stats"]["AP"]
    assert f"maxDets=100 ] = {ap:.4f}" in out


@pytest.mark.slow
def test_cli_in_a_fresh_process(case, tmp_path):
    """As a user runs it: files written with --output, exit status 2 and no traceback."""
    gt_file, _, results, _ = case
    dt = tmp_path / "results.json"
    command = [sys.executable, str(ROOT / "tools" / "coco_eval.py"), "--gt", str(gt_file)]
    command += ["--dt", str(dt), "--output", str(tmp_path / "out")]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    dt.write_text(json.dumps(results))
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "COCO evaluation with faster_coco_eval" in proc.stdout
    assert (tmp_path / "out" / "coco_eval_metrics.json").is_file()
    assert (tmp_path / "out" / "coco_eval_per_category.csv").is_file()

    dt.write_text(json.dumps(results[:2] + [results[2] | {"bbox": [1, 2, 3]}]))
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"coco_eval.py: error: {dt}: entry 2 (image_id={results[2]['image_id']}, "
        f"category_id={results[2]['category_id']}): "
        "bbox [1, 2, 3] is not 4 finite numbers [x, y, width, height]"
    )


def test_cli_bad_input_exits_2_with_one_line(case, tmp_path, capsys):
    gt_file, _, results, _ = case
    tool = _load_tool()
    dt = tmp_path / "dt.json"
    dt.write_text(json.dumps(results[:3] + [results[3] | {"category_id": 4}]))
    assert tool.main(["--gt", str(gt_file), "--dt", str(dt), "--output", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err
    assert err.startswith(f"coco_eval.py: error: {dt}: entry 3 (image_id=")
    assert "category_id 4 is not a category id of the ground truth" in err
    assert not (tmp_path / "coco_eval_metrics.json").exists()


def test_cli_empty_results_warn(case, tmp_path, capsys):
    gt_file = case[0]
    tool = _load_tool()
    dt = tmp_path / "dt.json"
    dt.write_text("[]")
    assert tool.main(["--gt", str(gt_file), "--dt", str(dt)]) == 0
    out, err = capsys.readouterr()
    assert "COCO evaluation with faster_coco_eval: 0 results on 6 images" in out
    assert err.startswith(f"coco_eval.py: warning: {dt}: no results")
    assert read_report(tmp_path).iou_types["bbox"].stats["AP"] == 0


# ---------------------------------------------------------------------------------------------
# train_net --eval-only and coco_eval agree

# Registers a 4-image shapes split as "tiny_shapes_val" and, with $AGREE_GT, a COCO json on its
# images as "agree_val"; then runs tools/train_net.py.
_WRAPPER = """
import os
import sys

sys.path.insert(0, {tools!r})
from backbones.data import register_shapes
from detectron2.data.datasets import register_coco_instances

register_shapes(name="tiny_shapes", num_train=8, num_val=4)
if os.environ.get("AGREE_GT"):
    register_coco_instances("agree_val", {{}}, os.environ["AGREE_GT"], os.environ["AGREE_IMAGES"])

if __name__ == "__main__":
    import train_net

    sys.argv = ["train_net.py"] + sys.argv[1:]
    train_net.invoke_main()
"""

# An untrained (seeded) tiny Mask R-CNN keeping every detection.
TINY_EVAL_OPTS = [
    "MODEL.WEIGHTS", "",
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
    "DATASETS.TRAIN", '("tiny_shapes_train",)',
    "MODEL.FPN.OUT_CHANNELS", "64",
    "MODEL.RPN.PRE_NMS_TOPK_TEST", "200",
    "MODEL.RPN.POST_NMS_TOPK_TEST", "100",
    "MODEL.ROI_BOX_HEAD.FC_DIM", "128",
    "MODEL.ROI_MASK_HEAD.CONV_DIM", "64",
]  # fmt: skip


def _eval_only(tmp_path: Path, dataset: str, env: dict) -> Path:
    """Run ``train_net.py --eval-only`` on ``dataset``; returns its inference folder."""
    wrapper = tmp_path / "run_train_net.py"
    wrapper.write_text(_WRAPPER.format(tools=str(ROOT / "tools")))
    output_dir = tmp_path / f"output_{dataset}"
    proc = subprocess.run(
        [sys.executable, str(wrapper), "--config-file", str(ROOT / "configs/mrcnn_r18_shapes.yaml")]
        + ["--eval-only", *TINY_EVAL_OPTS, "DATASETS.TEST", f'("{dataset}",)']
        + ["OUTPUT_DIR", str(output_dir)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=900,
    )
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return output_dir / "inference" / dataset


def _ground_truth_from(results: list[dict], shapes_gt: dict, ranks=(0, 4, 19)) -> dict:
    """Ground truth on the shapes images: each image's detections at ``ranks`` by score, so
    that the same model rates well but not perfectly on it."""
    annotations = []
    for image in shapes_gt["images"]:
        dets = sorted(
            (
                r
                for r in results
                if r["image_id"] == image["id"] and mask_util.area(r["segmentation"])
            ),
            key=lambda r: -r["score"],
        )
        for rank in ranks:
            r = dets[rank]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image["id"],
                    "category_id": r["category_id"],
                    "bbox": r["bbox"],
                    "segmentation": r["segmentation"],
                    "area": float(mask_util.area(r["segmentation"])),
                    "iscrowd": 0,
                }
            )
    return shapes_gt | {"annotations": annotations}


@pytest.mark.slow
def test_eval_only_and_coco_eval_agree(tmp_path):
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path / "datasets"), OMP_NUM_THREADS="1")
    # An untrained model rates 0 on the shapes; ground truth made from its detections gives
    # numbers between 0 and 1 (the seeded model predicts the same in both runs).
    first = _eval_only(tmp_path, "tiny_shapes_val", env)
    shapes_dir = tmp_path / "datasets" / "tiny_shapes" / "val"
    shapes_gt = json.loads((shapes_dir / "instances_val.json").read_text())
    results = json.loads((first / "coco_instances_results.json").read_text())
    gt_file = tmp_path / "agree_val.json"
    gt_file.write_text(json.dumps(_ground_truth_from(results, shapes_gt)))
    env |= {"AGREE_GT": str(gt_file), "AGREE_IMAGES": str(shapes_dir / "images")}
    inference = _eval_only(tmp_path, "agree_val", env)

    results_file = inference / "coco_instances_results.json"
    results = json.loads(results_file.read_text())
    assert len(results) > 10 and {"bbox", "segmentation", "score"} <= set(results[0])
    detectron2_metrics = json.loads((inference / "coco_metrics.json").read_text())
    tool = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "coco_eval.py"), "--gt", str(gt_file)]
        + ["--dt", str(results_file), "--iou-type", "bbox", "segm"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert tool.returncode == 0, tool.stderr
    report = read_report(inference)
    assert set(detectron2_metrics) == set(report.iou_types) == {"bbox", "segm"}
    for iou_type, r in report.iou_types.items():
        print(
            f"{iou_type}: AP {r.stats['AP']:.4f}, Detectron2 {detectron2_metrics[iou_type]['AP']}"
        )
        assert 0.05 < r.stats["AP"] < 0.95, iou_type
        # Detectron2: percent, NaN where pycocotools gives -1.
        ours = {name: r.stats[name] for name in ("AP", "AP50", "AP75", "APs", "APm", "APl")}
        ours |= {f"AP-{c['name']}": c["AP"] for c in r.per_category}
        assert set(ours) == set(detectron2_metrics[iou_type])
        for name, value in ours.items():
            theirs = detectron2_metrics[iou_type][name]
            if value < 0:
                assert math.isnan(theirs), name
            else:
                assert value * 100 == pytest.approx(theirs, abs=1e-6), f"{iou_type} {name}"


def test_detectron2_evaluator_rates_no_predictions_as_coco_eval_does(tmp_path):
    """--eval-only (FasterCOCOEvaluator) and tools/coco_eval.py agree on an empty result set."""
    from detectron2.data import MetadataCatalog
    from detectron2.data.datasets import register_coco_instances

    from backbones.evaluation import FasterCOCOEvaluator, evaluate_results

    gt = make_gt(np.random.default_rng(0))
    gt_path = tmp_path / "gt.json"
    gt_path.write_text(json.dumps(gt))
    name = "empty_predictions_gt"
    if name not in MetadataCatalog.list():
        register_coco_instances(name, {}, str(gt_path), str(tmp_path))
    evaluator = FasterCOCOEvaluator(name, tasks=("bbox",), distributed=False)
    evaluator.reset()
    evaluator._predictions = [{"image_id": i["id"], "instances": []} for i in gt["images"]]
    got = evaluator.evaluate()["bbox"]
    with pytest.warns(COCOResultsWarning, match="no results"):
        expected = evaluate_results(str(gt_path), [], ("bbox",)).iou_types["bbox"].stats
    assert got["AP"] == pytest.approx(expected["AP"] * 100) == 0.0
    assert got["APs"] == pytest.approx(expected["APs"] * 100)
