"""Data faults in a user's COCO file (``backbones.data.coco_faults``): each kind named with its
file, image id and annotation id, fatal or counted; fatal ones stop ``tools/train_net.py``
before anything is built, counted ones are logged; ``datasets/prepare_coco.py`` lists them all."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from backbones.data import check_coco_dataset
from backbones.data.coco_faults import (
    COUNTED,
    FATAL,
    FAULT_KINDS,
    DataFaultError,
    find_coco_faults,
    scan_coco_file,
)
from backbones.engine import load_cfg
from backbones.engine.cli import DatasetFilesError, check_datasets, describe_error

from helpers import load_script, write_coco_split

ROOT = Path(__file__).resolve().parents[1]
SHAPES = "configs/mrcnn_r18_shapes.yaml"
WIDTH, HEIGHT = 24, 16


def write_dataset(folder: Path, edit=None) -> tuple[Path, Path]:
    """``folder/images``: three 24x16 PNGs, ids 1-3; ``folder/train.json``: one box and polygon
    on each (annotation ids 11-13, category ids 5, 7), changed by ``edit(coco)`` first."""
    image_root, json_file = folder / "images", folder / "train.json"
    write_coco_split(image_root, json_file, polygons=True, edit=edit)
    return json_file, image_root


def _set(index: int, **values):
    """An edit: update annotation ``index`` (ids 11, 12, 13 for 0, 1, 2) with ``values``."""
    return lambda coco: coco["annotations"][index].update(values)


def _drop(index: int, key: str):
    return lambda coco: coco["annotations"][index].pop(key)


# case: (edit, kind, image id, annotation id, text in the message)
JSON_FAULTS = {
    "zero width":
        (_set(1, bbox=[10, 10, 0, 5]), "empty_box", 2, 12, "box [10, 10, 0, 5] has zero width"),
    "zero height":
        (_set(0, bbox=[2, 2, 8, 0]), "empty_box", 1, 11, "has zero height"),
    "negative width":
        (_set(2, bbox=[10, 2, -4, 6]), "negative_box", 3, 13, "[10, 2, -4, 6] has negative width"),
    "partly outside":
        (_set(1, bbox=[20, 2, 10, 6]), "box_outside", 2, 12, "image (width x height): clipped"),
    "wholly outside":
        (_set(1, bbox=[30, 2, 4, 4]), "box_outside", 2, 12, "lies wholly outside the 24x16 image"),
    "two-point polygon":
        (_set(0, segmentation=[[2, 2, 10, 8]]), "bad_polygon", 1, 11, "2 points; a polygon needs"),
    "odd coordinates":
        (_set(0, segmentation=[[2, 2, 10, 2, 10]]), "bad_polygon", 1, 11, "5 coordinates, an odd"),
    "unknown category id":
        (_set(1, category_id=6), "unknown_category", 2, 12, "6 is not in categories (5, 7)"),
    "unknown image id":
        (_set(1, image_id=99), "unknown_image", 99, 12, "its image id is not in images"),
    "no bbox":
        (_drop(2, "bbox"), "bad_box", 3, 13, "bbox None is not 4 finite numbers"),
    "no category id":
        (_drop(2, "category_id"), "malformed", 3, 13, "an object with image_id and category_id"),
}  # fmt: skip


def test_every_kind_is_tested_and_has_a_severity():
    kinds = {case[1] for case in JSON_FAULTS.values()} | {"unreadable_image", "image_size"}
    assert kinds == set(FAULT_KINDS)
    assert {k.severity for k in FAULT_KINDS.values()} == {FATAL, COUNTED}
    counted = {k.name for k in FAULT_KINDS.values() if k.severity == COUNTED}
    assert counted == {"empty_box", "box_outside"}


def test_a_clean_file_has_no_faults(tmp_path):
    json_file, image_root = write_dataset(tmp_path)
    report = scan_coco_file(json_file, image_root)
    assert report.findings == [] and report.ok
    assert (report.num_images, report.num_annotations) == (3, 3)


@pytest.mark.parametrize("case", JSON_FAULTS)
def test_json_fault_names_file_image_and_annotation(tmp_path, case):
    edit, kind, image_id, annotation_id, text = JSON_FAULTS[case]
    json_file, _ = write_dataset(tmp_path, edit)
    report = scan_coco_file(json_file)
    assert [f.kind for f in report.findings] == [kind], report.format()
    (finding,) = report.findings
    assert (finding.image_id, finding.annotation_id) == (image_id, annotation_id)
    assert finding.message.startswith(f"train.json: image {image_id}, annotation {annotation_id}: ")
    assert text in finding.message
    assert finding.severity == FAULT_KINDS[kind].severity
    assert report.ok == (finding.severity == COUNTED)
    # The same from the parsed dict, as check_coco_dataset calls it.
    assert find_coco_faults(json.loads(json_file.read_text()), json_file).findings == [finding]


def _garbage(path: Path) -> None:
    path.write_bytes(b"not an image")


def _truncated(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _taller(path: Path) -> None:
    Image.fromarray(np.zeros((HEIGHT + 4, WIDTH, 3), np.uint8)).save(path)


@pytest.mark.parametrize(
    "spoil, kind, text",
    [
        (_garbage, "unreadable_image", "0002.png cannot be decoded as an image"),
        (_truncated, "unreadable_image", "0002.png cannot be decoded as an image"),
        (_taller, "image_size", "0002.png is 24x20 (width x height, as Detectron2 reads it) "
         "but 24x16 in the JSON"),
    ],
    ids=["garbage", "truncated", "size mismatch"],
)  # fmt: skip
def test_image_fault_names_file_and_image(tmp_path, spoil, kind, text):
    json_file, image_root = write_dataset(tmp_path)
    spoil(image_root / "0002.png")
    assert scan_coco_file(json_file).ok  # the JSON alone: images are not opened
    report = scan_coco_file(json_file, image_root)
    assert [(f.kind, f.image_id, f.annotation_id) for f in report.findings] == [(kind, 2, None)]
    assert report.findings[0].message.startswith(f"train.json: image 2: {text}")
    assert report.findings[0].severity == FATAL and not report.ok


def test_image_size_follows_exif_orientation(tmp_path):
    """A JPEG stored 24x16 and turned by EXIF is 16x24 to Detectron2's read_image."""

    def portrait(coco):
        coco["images"][0].update(file_name="turned.jpg", width=HEIGHT, height=WIDTH)

    json_file, image_root = write_dataset(tmp_path, portrait)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    Image.fromarray(np.zeros((HEIGHT, WIDTH, 3), np.uint8)).save(
        image_root / "turned.jpg", exif=exif
    )
    assert scan_coco_file(json_file, image_root).findings == []


def test_report_summary_counts_and_quotes_a_few(tmp_path):
    def many(coco):
        for annotation in coco["annotations"]:
            annotation["bbox"] = [2, 2, 0, 6]
        coco["annotations"][0]["category_id"] = 6

    report = scan_coco_file(write_dataset(tmp_path, many)[0])
    assert report.counts == {"empty_box": 3, "unknown_category": 1}
    summary = report.summary(COUNTED, examples=2)
    assert summary.startswith("3 counted data faults (empty_box 3): train.json: image 1, ")
    assert summary.endswith("; and 1 more") and summary.count("train.json") == 2
    assert report.summary(FATAL).startswith("1 fatal data fault (unknown_category 1): ")
    lines = report.format(limit=1)
    assert lines[:2] == [
        "1 fatal data fault (unknown_category 1)",
        "3 counted data faults (empty_box 3)",
    ]
    assert len(lines) == 4 and len(report.format()) == 6


def test_not_coco(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataFaultError, match=f"{bad}: not valid JSON at line 1, column 2"):
        scan_coco_file(bad)
    bad.write_text('{"images": []}')
    with pytest.raises(DataFaultError, match="no list 'annotations', 'categories'"):
        scan_coco_file(bad)
    assert describe_error(DataFaultError("x")) == ("x", 1)


def test_check_coco_dataset_with_faults(tmp_path):
    json_file, image_root = write_dataset(tmp_path, _set(1, category_id=6, bbox=[2, 2, 0, 6]))
    _garbage(image_root / "0003.png")
    report = check_coco_dataset(json_file, image_root, faults=True, check_images=True)
    assert not report.ok and report.inconsistent == []  # the ids are findings, named one by one
    assert [f.kind for f in report.faults.findings] == [
        "unknown_category",
        "empty_box",
        "unreadable_image",
    ]
    text = report.format()
    assert "fatal unknown_category: train.json: image 2, annotation 12: category id 6" in text
    assert "counted empty_box: train.json: image 2, annotation 12: box [2, 2, 0, 6]" in text
    assert "fatal unreadable_image: train.json: image 3: 0003.png cannot be decoded" in text
    # Without faults: as before, one summary line per problem.
    assert check_coco_dataset(json_file, image_root).inconsistent == [
        f"annotations {json_file}: 1 annotations with an unknown category_id (annotation ids 12)"
    ]
    counted_only = write_dataset(tmp_path / "b", _set(0, bbox=[30, 2, 4, 4]))
    assert check_coco_dataset(*counted_only, faults=True).ok


# ---------------------------------------------------------------------------------------------
# Before a training


@pytest.fixture
def name():
    """A fresh dataset name, out of Detectron2's catalogs after."""
    name = f"test_faults_{uuid.uuid4().hex[:8]}"
    yield name
    for catalog in (DatasetCatalog, MetadataCatalog):
        if name in catalog.keys():
            catalog.remove(name)


def _cfg(name: str, json_file: Path, image_root: Path):
    train = ["DATASETS.TRAIN", f"('{name}',)"]
    return load_cfg(SHAPES, train, datasets=[[name, str(json_file), str(image_root)]])


def test_check_datasets_stops_on_fatal_faults(tmp_path, name):
    json_file, image_root = write_dataset(tmp_path, _set(1, category_id=6))
    with pytest.raises(DataFaultError) as error:
        check_datasets(_cfg(name, json_file, image_root))
    message = str(error.value)
    assert message.startswith(
        f"DATASETS.TRAIN: dataset {name}: {json_file} has 1 fatal data fault (unknown_category "
        "1): train.json: image 2, annotation 12: category id 6 is not in categories (5, 7). "
        "Fix the JSON"
    )
    assert f"python datasets/prepare_coco.py --dataset {json_file} {image_root}" in message
    check_datasets(_cfg(name, json_file, image_root), train=False)  # DATASETS.TEST: shapes


def test_check_datasets_warns_on_counted_faults(tmp_path, name, caplog):
    json_file, image_root = write_dataset(tmp_path, _set(0, bbox=[2, 2, 0, 6]))
    cfg = _cfg(name, json_file, image_root)
    cfg.defrost()
    cfg.DATASETS.TEST = (name,)  # the same file twice: scanned and said once
    with caplog.at_level(logging.WARNING, logger="backbones.engine.cli"):
        check_datasets(cfg)
    (record,) = caplog.records
    assert record.getMessage().startswith(
        f"DATASETS.TRAIN: dataset {name}: {json_file} has 1 counted data fault (empty_box 1): "
        "train.json: image 1, annotation 11: box [2, 2, 0, 6] has zero width. Detectron2 drops"
    )


def test_check_datasets_names_an_unreadable_json(tmp_path, name):
    json_file, image_root = write_dataset(tmp_path)
    cfg = _cfg(name, json_file, image_root)
    json_file.write_text("[")
    with pytest.raises(DataFaultError, match=f"DATASETS.TRAIN: dataset {name}: {json_file}: not"):
        check_datasets(cfg)


def test_check_datasets_finds_missing_images_before_the_first_iteration(tmp_path, name):
    json_file, image_root = write_dataset(tmp_path)
    wrong = tmp_path / "elsewhere"
    wrong.mkdir()
    (wrong / "0001.png").write_bytes((image_root / "0001.png").read_bytes())
    with pytest.raises(DatasetFilesError) as error:
        check_datasets(_cfg(name, json_file, wrong))
    message = str(error.value)
    listed = len(json.loads(json_file.read_text())["images"])
    assert message.startswith(
        f"DATASETS.TRAIN: dataset {name}: {listed - 1} of {listed} images listed in {json_file} "
        f"are not in {wrong} (0002.png"
    )
    assert "--dataset NAME JSON IMAGE_ROOT" in message and "prepare_coco.py" in message


def test_train_net_stops_before_building_anything(tmp_path):
    json_file, image_root = write_dataset(
        tmp_path, lambda c: c["annotations"][2].update(segmentation=[[1, 1, 5, 5]])
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "TORCHELASTIC_"))}
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    env["DETECTRON2_DATASETS"] = str(tmp_path / "datasets")
    data = ["--dataset", "my_train", str(json_file), str(image_root)]
    proc = subprocess.run(
        [sys.executable, "tools/train_net.py", "--config-file", SHAPES, *data,
         "DATASETS.TRAIN", '("my_train",)', "OUTPUT_DIR", str(tmp_path / "out")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith(
        f"error: DATASETS.TRAIN: dataset my_train: {json_file} has 1 fatal data fault "
        "(bad_polygon 1): train.json: image 3, annotation 13: polygon 0 of 1 has 2 points"
    )
    assert "GeneralizedRCNN" not in proc.stdout + proc.stderr  # no model was built


def test_train_net_names_missing_images_before_building_anything(tmp_path):
    json_file, _ = write_dataset(tmp_path)
    (tmp_path / "empty").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "TORCHELASTIC_"))}
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    data = ["--dataset", "my_train", str(json_file), str(tmp_path / "empty")]
    proc = subprocess.run(
        [sys.executable, "tools/train_net.py", "--config-file", SHAPES, *data,
         "DATASETS.TRAIN", '("my_train",)', "OUTPUT_DIR", str(tmp_path / "out")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode != 0 and "Traceback" not in proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert lines == [
        f"error: DATASETS.TRAIN: dataset my_train: 3 of 3 images listed in {json_file} are not in "
        f"{tmp_path / 'empty'} (0001.png, 0002.png, 0003.png); give the folder that holds them "
        f"(--dataset NAME JSON IMAGE_ROOT), or list them with python datasets/prepare_coco.py "
        f"--dataset {json_file} {tmp_path / 'empty'}"
    ], proc.stderr[-3000:]


# ---------------------------------------------------------------------------------------------
# datasets/prepare_coco.py


def _prepare_coco():
    return load_script(ROOT / "datasets/prepare_coco.py", "prepare_coco")


def test_prepare_coco_lists_every_fault(tmp_path, capsys):
    def faulty(coco):
        coco["annotations"][0].update(bbox=[2, 2, -1, 6])
        coco["annotations"][1].update(segmentation=[[1, 1, 5, 5]], category_id=9)
        coco["annotations"][2].update(bbox=[20, 2, 10, 6])

    json_file, image_root = write_dataset(tmp_path, faulty)
    _taller(image_root / "0001.png")
    prepare = _prepare_coco()
    args = ["--dataset", str(json_file), str(image_root)]
    assert prepare.main([*args, "--check-images"]) == 1
    out = capsys.readouterr().out
    assert out.startswith("train.json: INCOMPLETE\n")
    for line in (
        "4 fatal data faults (negative_box 1, unknown_category 1, bad_polygon 1, image_size 1)",
        "1 counted data fault (box_outside 1)",
        "fatal negative_box: train.json: image 1, annotation 11: box [2, 2, -1, 6] has negative",
        "fatal unknown_category: train.json: image 2, annotation 12: category id 9 is not",
        "fatal bad_polygon: train.json: image 2, annotation 12: polygon 0 of 1 has 2 points",
        "counted box_outside: train.json: image 3, annotation 13: box [20, 2, 10, 6] extends",
        "fatal image_size: train.json: image 1: 0001.png is 24x20",
    ):
        assert f"  {line}" in out, out
    # Counted faults alone: reported, status 0.
    json_file, image_root = write_dataset(tmp_path / "b", _set(2, bbox=[20, 2, 10, 6]))
    assert prepare.main(["--dataset", str(json_file), str(image_root)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("train.json: OK\n") and "counted box_outside: train.json" in out
