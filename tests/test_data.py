"""COCO layout check, custom COCO-format datasets (function, config key, ``--dataset`` flag)."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import cv2
import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from backbones.data import (
    check_coco_dataset,
    check_coco_layout,
    coco_root,
    link_coco,
    register_coco_dataset,
    register_datasets_from_cfg,
)
from backbones.engine import load_cfg

from helpers import load_script, write_coco_split

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "mrcnn_r18_shapes.yaml"
NUM_IMAGES = 3


def write_split(image_dir: Path, json_file: Path, num_images: int = NUM_IMAGES) -> dict:
    """``num_images`` 16x24 PNGs with one box each, and their COCO JSON (category ids 5, 7)."""
    return write_coco_split(image_dir, json_file, num_images)


@pytest.fixture
def coco(tmp_path) -> Path:
    """A complete COCO folder with ``train2017`` and ``val2017``."""
    root = tmp_path / "coco"
    for split in ("train2017", "val2017"):
        write_split(root / split, root / "annotations" / f"instances_{split}.json")
    return root


@pytest.fixture
def name():
    """A fresh dataset name; it and names starting with it leave Detectron2's catalogs after."""
    prefix = f"test_data_{uuid.uuid4().hex[:8]}"
    yield prefix
    for catalog in (DatasetCatalog, MetadataCatalog):
        for n in [n for n in list(catalog.keys()) if n.startswith(prefix)]:
            catalog.remove(n)


def test_complete_layout_is_ok(coco):
    report = check_coco_layout(coco)
    assert report.ok, report.format()
    assert [s.split for s in report.splits] == ["train2017", "val2017"]
    for split in report.splits:
        assert (split.num_images, split.num_annotations, split.num_categories) == (3, 3, 2)
        assert split.num_checked == NUM_IMAGES and split.num_missing_images == 0
        assert not split.missing and not split.inconsistent
    text = str(report)
    assert text.startswith(f"COCO layout at {coco}: OK")
    assert "3 images, 3 annotations, 2 categories" in text


def _edit_json(path: Path, edit) -> None:
    coco = json.loads(path.read_text())
    edit(coco)
    path.write_text(json.dumps(coco))


def _set(entry: dict, **values) -> None:
    entry.update(values)


BROKEN = {
    "no COCO folder": (lambda root, js: shutil.rmtree(root), "missing", "COCO folder"),
    "no images folder": (
        lambda root, js: shutil.rmtree(root / "val2017"),
        "missing",
        "images folder",
    ),
    "no JSON": (lambda root, js: js.unlink(), "missing", "instances_val2017.json"),
    "invalid JSON": (lambda root, js: js.write_text("{not json"), "inconsistent", "not valid JSON"),
    "not COCO": (
        lambda root, js: js.write_text('{"images": []}'),
        "inconsistent",
        "not COCO instances (no list 'annotations', 'categories')",
    ),
    "unknown image id": (
        lambda root, js: _edit_json(js, lambda c: _set(c["annotations"][1], image_id=99)),
        "inconsistent",
        "1 annotations with an unknown image_id (annotation ids 12)",
    ),
    "unknown category id": (
        lambda root, js: _edit_json(js, lambda c: _set(c["annotations"][0], category_id=6)),
        "inconsistent",
        "1 annotations with an unknown category_id (annotation ids 11)",
    ),
    "duplicate image id": (
        lambda root, js: _edit_json(js, lambda c: _set(c["images"][2], id=1)),
        "inconsistent",
        "1 duplicate images ids (1)",
    ),
    "image file absent": (
        lambda root, js: (root / "val2017" / "0002.png").unlink(),
        "missing",
        "1 of 3 listed in instances_val2017.json are not in",
    ),
}


@pytest.mark.parametrize("case", BROKEN)
def test_broken_layout_reports_what_is_wrong(coco, case):
    breaks, kind, message = BROKEN[case]
    breaks(coco, coco / "annotations" / "instances_val2017.json")
    report = check_coco_layout(coco)
    assert not report.ok
    train, val = report.splits
    assert not val.ok
    assert any(message in item for item in getattr(val, kind)), val.format()
    assert any(message in item for item in getattr(report, kind))
    assert message in str(report)
    assert train.ok == (case != "no COCO folder")
    if case == "image file absent":
        assert val.num_missing_images == 1 and "0002.png" in str(report)


def test_check_images_opens_every_image(coco):
    image_dir = coco / "val2017"
    (image_dir / "0001.png").write_bytes(b"not an image")
    cv2.imwrite(str(image_dir / "0003.png"), np.zeros((20, 24, 3), np.uint8))
    assert check_coco_layout(coco).ok  # present: only names are compared
    val = check_coco_layout(coco, ["val2017"], check_images=True).splits[0]
    assert not val.ok
    assert val.inconsistent == [
        "images: 1 of 3 cannot be read as images (0001.png)",
        "images: 1 of 3 differ in size from their JSON width/height (0003.png)",
    ]


def test_coco_root_follows_detectron2_datasets(monkeypatch, tmp_path):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    assert coco_root() == str(tmp_path / "coco")
    monkeypatch.delenv("DETECTRON2_DATASETS")
    assert coco_root() == "datasets/coco"


def test_link_coco(coco, tmp_path):
    root = tmp_path / "d2" / "coco"
    assert link_coco(coco, root) == root
    assert root.is_symlink() and check_coco_layout(root).ok
    link_coco(coco, root)  # the same link again: kept
    with pytest.raises(FileExistsError, match="already exists"):
        link_coco(tmp_path, root)
    with pytest.raises(FileNotFoundError, match="no such folder"):
        link_coco(tmp_path / "absent", tmp_path / "other")


def test_prepare_coco_cli(coco, tmp_path, capsys):
    prepare = load_script(ROOT / "datasets" / "prepare_coco.py", "prepare_coco")
    root = tmp_path / "linked"
    assert prepare.main(["--root", str(root), "--link", str(coco), "--check-images"]) == 0
    assert f"COCO layout at {root}: OK" in capsys.readouterr().out
    (coco / "annotations" / "instances_train2017.json").unlink()
    assert prepare.main(["--root", str(root)]) == 1
    out = capsys.readouterr().out
    assert "train2017: INCOMPLETE" in out and "instances_train2017.json" in out
    assert prepare.main(["--root", str(root), "--link", str(tmp_path)]) == 1


def test_check_own_dataset(coco, tmp_path, capsys):
    json_file, image_root = coco / "annotations" / "instances_val2017.json", coco / "val2017"
    report = check_coco_dataset(json_file, image_root, check_images=True)
    assert report.ok and report.split == "instances_val2017.json" and report.num_checked == 3
    report = check_coco_dataset(json_file, tmp_path / "absent", name="pets")
    assert report.missing == [f"images folder {tmp_path / 'absent'}"]
    assert report.format().startswith("pets: INCOMPLETE")

    prepare = load_script(ROOT / "datasets" / "prepare_coco.py", "prepare_coco")
    assert prepare.main(["--dataset", str(json_file), str(image_root)]) == 0
    assert "instances_val2017.json: OK" in capsys.readouterr().out
    (image_root / "0003.png").unlink()
    assert prepare.main(["--dataset", str(json_file), str(image_root)]) == 1
    assert "1 of 3 listed in instances_val2017.json" in capsys.readouterr().out


def test_register_and_load(coco, name):
    json_file = coco / "annotations" / "instances_val2017.json"
    assert register_coco_dataset(name, json_file, coco / "val2017") == name
    records = DatasetCatalog.get(name)
    assert [Path(r["file_name"]).name for r in records] == ["0001.png", "0002.png", "0003.png"]
    metadata = MetadataCatalog.get(name)
    assert metadata.thing_classes == ["cat", "dog"]
    assert metadata.thing_dataset_id_to_contiguous_id == {5: 0, 7: 1}
    assert metadata.evaluator_type == "coco" and metadata.json_file == str(json_file)
    # The same files again (a relative spelling included): a no-op.
    assert register_coco_dataset(name, str(json_file), coco / "val2017" / ".") == name


def test_register_errors(coco, name, tmp_path):
    json_file = coco / "annotations" / "instances_val2017.json"
    with pytest.raises(FileNotFoundError, match=f"annotation file {tmp_path}/absent.json"):
        register_coco_dataset(name, tmp_path / "absent.json", coco / "val2017")
    with pytest.raises(FileNotFoundError, match=f"image folder {tmp_path}/absent does not"):
        register_coco_dataset(name, json_file, tmp_path / "absent")
    with pytest.raises(ValueError, match="non-empty string"):
        register_coco_dataset("", json_file, coco / "val2017")
    assert name not in DatasetCatalog
    register_coco_dataset(name, json_file, coco / "val2017")
    other = coco / "annotations" / "instances_train2017.json"
    with pytest.raises(ValueError, match=f"{name!r} is already registered with json_file="):
        register_coco_dataset(name, other, coco / "train2017")
    with pytest.raises(ValueError, match="already registered"):
        register_coco_dataset("shapes_val", json_file, coco / "val2017")  # a builtin of ours


def test_register_from_cfg_opts_and_yaml(coco, name, tmp_path):
    entry = [name, str(coco / "annotations" / "instances_val2017.json"), str(coco / "val2017")]
    cfg = load_cfg(str(CONFIG), ["BACKBONES.COCO_DATASETS", repr([entry])])
    assert cfg.BACKBONES.COCO_DATASETS == [entry]
    assert name in DatasetCatalog and MetadataCatalog.get(name).image_root == entry[2]
    assert register_datasets_from_cfg(cfg) == [name]  # again: a no-op

    second = name + "_yaml"
    yaml = tmp_path / "custom.yaml"
    yaml.write_text(
        f"_BASE_: {CONFIG}\n"
        f"BACKBONES:\n  COCO_DATASETS: [[{second}, {entry[1]}, {entry[2]}]]\n"
        f"DATASETS:\n  TEST: ('{second}',)\n"
    )
    cfg = load_cfg(str(yaml))
    assert cfg.DATASETS.TEST == (second,) and second in DatasetCatalog
    assert len(DatasetCatalog.get(second)) == NUM_IMAGES


@pytest.mark.parametrize(
    "entries, error, message",
    [
        ([["two", "items"]], ValueError, r"BACKBONES.COCO_DATASETS\[0\]=\['two', 'items'\]"),
        ([["n", 1, "x"]], ValueError, "three strings"),
        ([["n", "absent.json", "."]], FileNotFoundError, r"COCO_DATASETS\[0\]: .*absent.json"),
    ],
)
def test_register_from_cfg_errors(entries, error, message):
    with pytest.raises(error, match=message):
        load_cfg(str(CONFIG), ["BACKBONES.COCO_DATASETS", repr(entries)])


def test_train_net_dataset_flag(coco, name, tmp_path):
    train_net = load_script(ROOT / "tools" / "train_net.py", "train_net")
    val = [str(coco / "annotations" / "instances_val2017.json"), str(coco / "val2017")]
    train = [str(coco / "annotations" / "instances_train2017.json"), str(coco / "train2017")]
    yaml = tmp_path / "custom.yaml"
    yaml.write_text(
        f"_BASE_: {CONFIG}\nBACKBONES:\n  COCO_DATASETS: [[{name}_val, {', '.join(val)}]]\n"
    )
    args = train_net.parse_args(
        ["--config-file", str(yaml), "--dataset", f"{name}_train", *train,
         "--dataset", f"{name}_train2", *train, "DATASETS.TRAIN", f"('{name}_train',)"]
    )  # fmt: skip
    assert args.dataset == [[f"{name}_train", *train], [f"{name}_train2", *train]]
    cfg = load_cfg(args.config_file, args.opts, datasets=args.dataset)
    # The YAML's dataset is kept; the flag's are appended.
    names = [f"{name}_val", f"{name}_train", f"{name}_train2"]
    assert [e[0] for e in cfg.BACKBONES.COCO_DATASETS] == names
    assert cfg.DATASETS.TRAIN == (f"{name}_train",)
    assert set(names) <= set(DatasetCatalog.keys())
    assert len(DatasetCatalog.get(f"{name}_train")) == NUM_IMAGES
    # The flag's datasets are not config overrides: opts are passed through untouched.
    assert args.opts == ["DATASETS.TRAIN", f"('{name}_train',)"]
