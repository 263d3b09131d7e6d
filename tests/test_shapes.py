"""Tests for the synthetic "shapes" dataset: content, COCO validity, Detectron2 registration."""

from __future__ import annotations

import contextlib
import io
import itertools
import json
from pathlib import Path

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import COCOEvaluator
from detectron2.structures import BoxMode
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from backbones.data import (
    SHAPES_CLASSES,
    default_root,
    ensure_generated,
    generate_shapes,
    register_shapes,
    render_shapes,
)

# pycocotools' mask.decode trips a NumPy 2 deprecation on every call; nothing of ours.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

NUM_IMAGES = 12
SIZE = 96


def _quiet_coco(json_file: Path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(json_file))


@pytest.fixture(scope="module")
def split(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("shapes")
    return generate_shapes(root, "train", num_images=NUM_IMAGES, image_size=SIZE, seed=3)


@pytest.fixture
def unregister():
    """Collects dataset-name prefixes and removes their registrations afterwards."""
    names: list[str] = []
    yield names
    for name, suffix in itertools.product(names, ("train", "val")):
        for catalog in (DatasetCatalog, MetadataCatalog):
            if f"{name}_{suffix}" in catalog:
                catalog.remove(f"{name}_{suffix}")


def _files(split_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(split_dir)): p.read_bytes() for p in split_dir.rglob("*.*")}


def test_generation_is_deterministic(tmp_path):
    kwargs = dict(num_images=6, image_size=64)
    generate_shapes(tmp_path / "a", "train", seed=1, **kwargs)
    generate_shapes(tmp_path / "b", "train", seed=1, **kwargs)
    generate_shapes(tmp_path / "c", "train", seed=2, **kwargs)
    generate_shapes(tmp_path / "a", "val", seed=1, **kwargs)
    a, b, c = (_files(tmp_path / x / "train") for x in "abc")
    assert len(a) == 6 + 2  # images, instances JSON, params
    assert a == b
    assert a.keys() == c.keys() and a["instances_train.json"] != c["instances_train.json"]
    val = _files(tmp_path / "a" / "val")
    assert all(val[f"images/{i:06d}.png"] != a[f"images/{i:06d}.png"] for i in range(1, 7))
    # Nothing half-written is left next to the splits.
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["train", "val"]


def test_coco_json_matches_drawn_masks(split):
    json_file, image_root = split
    coco = _quiet_coco(json_file)
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(SHAPES_CLASSES)
    assert sorted(coco.getImgIds()) == list(range(1, NUM_IMAGES + 1))
    drawn = render_shapes("train", num_images=NUM_IMAGES, image_size=SIZE, seed=3)
    for image_id, (image, labels, categories) in enumerate(drawn, start=1):
        info = coco.imgs[image_id]
        assert (info["height"], info["width"]) == (SIZE, SIZE)
        on_disk = cv2.imread(str(image_root / info["file_name"]), cv2.IMREAD_COLOR)
        np.testing.assert_array_equal(on_disk[..., ::-1], image)  # PNG is lossless; BGR on disk
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
        assert [a["category_id"] - 1 for a in anns] == categories
        for k, ann in enumerate(anns, start=1):
            visible = labels == k
            ys, xs = np.nonzero(visible)
            assert ann["iscrowd"] == 0 and ann["area"] == visible.sum()
            assert ann["bbox"] == [xs.min(), ys.min(), np.ptp(xs) + 1, np.ptp(ys) + 1]
            assert all(len(p) >= 6 and len(p) % 2 == 0 for p in ann["segmentation"])
            rle = mask_util.merge(mask_util.frPyObjects(ann["segmentation"], SIZE, SIZE))
            decoded = mask_util.decode(rle).astype(bool)
            iou = (decoded & visible).sum() / (decoded | visible).sum()
            assert iou >= 0.9, (image_id, k, iou)
            pts = np.concatenate([np.reshape(p, (-1, 2)) for p in ann["segmentation"]])
            x, y, w, h = ann["bbox"]
            assert pts.min() >= 0 and pts.max() <= SIZE
            np.testing.assert_allclose(pts.min(axis=0), [x, y], atol=1.0)
            np.testing.assert_allclose(pts.max(axis=0), [x + w, y + h], atol=1.0)


def test_annotations_are_visible_regions(split):
    """Occluded shapes are annotated by what is left of them: one image's masks are disjoint."""
    coco = _quiet_coco(split[0])
    overlapping_boxes = 0
    for image_id in coco.getImgIds():
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
        masks = [coco.annToMask(a).astype(bool) for a in anns]
        for (a, ma), (b, mb) in itertools.combinations(zip(anns, masks), 2):
            assert (ma & mb).sum() <= 0.05 * min(ma.sum(), mb.sum())
            (ax, ay, aw, ah), (bx, by, bw, bh) = a["bbox"], b["bbox"]
            overlapping_boxes += ax < bx + bw and bx < ax + aw and ay < by + bh and by < ay + ah
    assert overlapping_boxes > 0  # else the check above proves nothing


def test_ground_truth_as_detections_scores_ap_100(split):
    coco = _quiet_coco(split[0])
    results = []
    for ann in coco.dataset["annotations"]:
        rle = coco.annToRLE(ann)
        rle["counts"] = rle["counts"].decode("ascii")
        results.append(
            {
                "image_id": ann["image_id"],
                "category_id": ann["category_id"],
                "bbox": ann["bbox"],
                "segmentation": rle,
                "score": 1.0,
            }
        )
    with contextlib.redirect_stdout(io.StringIO()):
        detections = coco.loadRes(results)
        for iou_type in ("bbox", "segm"):
            evaluator = COCOeval(coco, detections, iou_type)
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
            assert evaluator.stats[0] == pytest.approx(1.0), iou_type


def test_register_is_lazy_and_loads(tmp_path, unregister):
    unregister.append("shapes_t")
    root = tmp_path / "shapes_t"
    names = register_shapes(root, name="shapes_t", num_train=8, num_val=4, image_size=64)
    assert names == ("shapes_t_train", "shapes_t_val")
    assert not root.exists()
    # Same arguments again: a no-op, not a duplicate-registration error.
    assert register_shapes(root, name="shapes_t", num_train=8, num_val=4, image_size=64) == names

    dicts = DatasetCatalog.get("shapes_t_train")
    assert len(dicts) == 8 and not (root / "val").exists()
    annotations = [a for d in dicts for a in d["annotations"]]
    assert annotations
    for ann in annotations:
        assert ann["bbox_mode"] == BoxMode.XYWH_ABS
        assert 0 <= ann["category_id"] < len(SHAPES_CLASSES)
        assert ann["segmentation"] and all(len(p) >= 6 for p in ann["segmentation"])
    assert all(Path(d["file_name"]).is_file() for d in dicts)
    meta = MetadataCatalog.get("shapes_t_train")
    assert meta.thing_classes == list(SHAPES_CLASSES)
    assert meta.evaluator_type == "coco"
    assert Path(meta.json_file) == root / "train" / "instances_train.json"


def test_coco_evaluator_on_fresh_root(tmp_path, unregister):
    unregister.append("shapes_t")
    register_shapes(tmp_path / "data", name="shapes_t", num_train=8, num_val=4, image_size=64)
    evaluator = COCOEvaluator("shapes_t_val", output_dir=str(tmp_path / "eval"))
    json_file = tmp_path / "data" / "val" / "instances_val.json"
    assert len(json.loads(json_file.read_text())["images"]) == 4
    assert not (tmp_path / "data" / "train").exists()
    assert evaluator._do_evaluation


def test_reregister_with_other_parameters_raises(tmp_path, unregister):
    unregister.append("shapes_t")
    register_shapes(tmp_path, name="shapes_t", num_train=8, num_val=4)
    with pytest.raises(ValueError, match=r"shapes_t_train.*num_train=8 \(now 9\)"):
        register_shapes(tmp_path, name="shapes_t", num_train=9, num_val=4)
    with pytest.raises(ValueError, match="seed"):
        register_shapes(tmp_path, name="shapes_t", num_train=8, num_val=4, seed=1)
    assert MetadataCatalog.get("shapes_t_train").shapes_config["num_train"] == 8


def test_regenerates_stale_or_incomplete_data(tmp_path, unregister):
    unregister.extend(["shapes_a", "shapes_b"])
    register_shapes(tmp_path, name="shapes_a", num_train=4, num_val=2, image_size=64)
    json_file, image_root = ensure_generated("shapes_a_val")
    (image_root / "000002.png").unlink()
    assert len(ensure_generated("shapes_a_val")) == 2 and (image_root / "000002.png").is_file()
    # Another registration of the same folder with other parameters regenerates it.
    register_shapes(tmp_path, name="shapes_b", num_train=4, num_val=3, image_size=64)
    assert len(DatasetCatalog.get("shapes_b_val")) == 3
    assert len(json.loads(json_file.read_text())["images"]) == 3


def test_never_replaces_foreign_folders(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "precious.txt").write_text("not ours")
    with pytest.raises(FileExistsError, match="Refusing"):
        generate_shapes(tmp_path, "train", num_images=1, image_size=64)
    assert (tmp_path / "train" / "precious.txt").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["train"]


def test_default_registration_is_cheap(tmp_path, monkeypatch, unregister):
    unregister.append("shapes_lazy")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DETECTRON2_DATASETS", raising=False)
    assert default_root("shapes_lazy") == "datasets/shapes_lazy"
    register_shapes(name="shapes_lazy")
    assert not (tmp_path / "datasets").exists()
    assert MetadataCatalog.get("shapes_lazy_val").image_root == str(
        tmp_path / "datasets" / "shapes_lazy" / "val" / "images"
    )
