"""``tools/demo.py`` and ``backbones.inference``: drawn predictions and predictions.json on CPU."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import uuid
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import DefaultPredictor
from detectron2.modeling import build_model
from PIL import Image
from pycocotools.coco import COCO

from backbones import load_cfg
from backbones.data import generate_shapes, register_coco_dataset
from backbones.inference import Predictor, find_inputs

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "mrcnn_r18_shapes.yaml"
# Random init (a few detections survive NMS even so), slim heads, few detections to draw.
TINY_OPTS = [
    "MODEL.WEIGHTS", "",
    "MODEL.FPN.OUT_CHANNELS", "32",
    "MODEL.ROI_BOX_HEAD.FC_DIM", "64",
    "MODEL.ROI_MASK_HEAD.CONV_DIM", "16",
    "TEST.DETECTIONS_PER_IMAGE", "4",
]  # fmt: skip
NUM_IMAGES = 3

spec = importlib.util.spec_from_file_location("demo", ROOT / "tools" / "demo.py")
demo = importlib.util.module_from_spec(spec)
spec.loader.exec_module(demo)


def run_demo(inputs, output: Path, *args: str, opts=()) -> None:
    inputs = [inputs] if isinstance(inputs, (str, Path)) else inputs
    demo.main(
        ["--config-file", str(CONFIG), "--input", *map(str, inputs), "--output", str(output),
         "--confidence-threshold", "0", "--no-progress", *args, *TINY_OPTS, *opts]
    )  # fmt: skip


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> tuple[Path, Path]:
    """``(json_file, image_root)`` of 3 generated 64 px shapes images."""
    root = tmp_path_factory.mktemp("shapes")
    return generate_shapes(root, "val", num_images=NUM_IMAGES, image_size=64)


def write_video(path: Path, num_frames: int, fourcc: str = "MJPG") -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 5, (80, 64))
    assert writer.isOpened()
    for i in range(num_frames):
        frame = np.full((64, 80, 3), 30, np.uint8)
        cv2.circle(frame, (20 + 8 * i, 32), 12, (0, 200, 255), -1)
        writer.write(frame)
    writer.release()
    return path


def test_image_folder(shapes, tmp_path):
    json_file, image_root = shapes
    run_demo(image_root, tmp_path / "out")
    names = [f"{i:06d}" for i in range(1, NUM_IMAGES + 1)]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        *(f"{n}.png" for n in names),
        "predictions.json",
    ]
    # 64 px images are drawn at 512 px, so that the labels stay legible.
    assert Image.open(tmp_path / "out" / "000001.png").size == (512, 512)

    predictions = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert [
        (i["id"], Path(i["file_name"]).name, i["visualization"]) for i in predictions["images"]
    ] == [(k, f"{n}.png", f"{n}.png") for k, n in enumerate(names, start=1)]
    # shapes_val (DATASETS.TEST) gives names and dataset ids 1-4.
    assert predictions["categories"] == [
        {"id": 1, "name": "circle"},
        {"id": 2, "name": "square"},
        {"id": 3, "name": "triangle"},
        {"id": 4, "name": "star"},
    ]
    anns = predictions["annotations"]
    assert 0 < len(anns) <= 4 * NUM_IMAGES
    for ann in anns:
        assert {"image_id", "category_id", "bbox", "score", "segmentation"} <= set(ann)
        assert ann["category_id"] in (1, 2, 3, 4) and 0 <= ann["score"] <= 1
        assert set(ann["segmentation"]) == {"size", "counts"} and ann["segmentation"]["size"] == [
            64,
            64,
        ]
    # A results file for the ground truth of the same images, and a COCO file by itself.
    gt = COCO(str(json_file))
    dt = gt.loadRes([{k: a[k] for k in ("image_id", "category_id", "bbox", "score")} for a in anns])
    assert len(dt.anns) == len(anns)
    dt = gt.loadRes(anns)
    assert set(dt.getImgIds()) <= set(gt.getImgIds())
    assert len(COCO(str(tmp_path / "out" / "predictions.json")).anns) == len(anns)


def test_video_frames_glob_and_jpeg(shapes, tmp_path):
    _, image_root = shapes
    video = write_video(tmp_path / "clip.avi", num_frames=5)
    run_demo(
        [video, f"{image_root}/00000[12].png", image_root / "000001.png"],
        tmp_path / "out",
        "--every", "2", "--image-format", "jpg",
    )  # fmt: skip
    names = ["clip_000000.jpg", "clip_000002.jpg", "clip_000004.jpg", "000001.jpg", "000002.jpg"]
    predictions = json.loads((tmp_path / "out" / "predictions.json").read_text())
    # The image named twice (glob and file) is predicted once.
    assert [i["visualization"] for i in predictions["images"]] == names
    assert [i.get("frame") for i in predictions["images"]] == [0, 2, 4, None, None]
    assert [(i["height"], i["width"]) for i in predictions["images"][:3]] == [(64, 80)] * 3
    for name in names:
        with Image.open(tmp_path / "out" / name) as image:
            assert image.format == "JPEG"


def test_dataset_category_ids(tmp_path):
    """Predictions carry the test dataset's category ids and names (here 5 and 7)."""
    image_dir = tmp_path / "images"
    image_dir.mkdir()
    cv2.imwrite(str(image_dir / "a.png"), np.full((48, 48, 3), 90, np.uint8))
    coco = {
        "images": [{"id": 1, "file_name": "a.png", "height": 48, "width": 48}],
        "annotations": [],
        "categories": [{"id": 5, "name": "cat"}, {"id": 7, "name": "dog"}],
    }
    (tmp_path / "gt.json").write_text(json.dumps(coco))
    name = f"test_demo_{uuid.uuid4().hex[:8]}"
    register_coco_dataset(name, tmp_path / "gt.json", image_dir)
    try:
        opts = ("DATASETS.TEST", f"('{name}',)", "MODEL.ROI_HEADS.NUM_CLASSES", "2")
        run_demo(image_dir, tmp_path / "out", opts=opts)
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    predictions = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert predictions["categories"] == [{"id": 5, "name": "cat"}, {"id": 7, "name": "dog"}]
    assert predictions["annotations"]
    assert {a["category_id"] for a in predictions["annotations"]} <= {5, 7}


def test_predictor_is_a_default_predictor(tmp_path):
    """Same weights, same image: ``Predictor`` returns what Detectron2's ``DefaultPredictor``
    returns, and ``instances`` the same for the RGB image, on the CPU."""
    cfg = load_cfg(str(CONFIG), [*TINY_OPTS, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"])
    torch.manual_seed(0)
    weights = tmp_path / "model.pth"
    torch.save({"model": build_model(cfg).state_dict()}, weights)
    cfg.defrost()
    cfg.MODEL.WEIGHTS = str(weights)
    image_bgr = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)

    ours, theirs = Predictor(cfg), DefaultPredictor(cfg)
    assert isinstance(ours, DefaultPredictor)
    assert vars(ours).keys() == vars(theirs).keys()  # the attributes its __call__ reads
    assert ours.metadata is theirs.metadata  # DATASETS.TEST[0]'s
    expected = theirs(image_bgr)["instances"]
    got = ours(image_bgr)
    assert set(got) == {"instances"} and 0 < len(got["instances"]) <= 4
    for instances in (got["instances"], ours.instances(image_bgr[:, :, ::-1].copy())):
        assert instances.image_size == (48, 64)
        assert torch.equal(instances.pred_classes, expected.pred_classes)
        torch.testing.assert_close(instances.scores, expected.scores)
        torch.testing.assert_close(instances.pred_boxes.tensor, expected.pred_boxes.tensor)
        assert torch.equal(instances.pred_masks, expected.pred_masks)


def _bad_file(tmp_path: Path, name: str) -> Path:
    (tmp_path / name).write_bytes(b"\x00 not media")
    return tmp_path / name


@pytest.mark.parametrize(
    "make_input, args, message",
    [
        (lambda t: t / "absent.png", (), "absent.png does not exist"),
        (lambda t: f"{t}/*.jpg", (), "No image or video files match"),
        (lambda t: t, (), "No image or video files (.bmp"),
        (lambda t: _bad_file(t, "broken.png"), (), "Cannot read image"),
        (lambda t: _bad_file(t, "broken.mp4"), (), "Cannot read video"),
        (None, ("--every", "0"), "every must be >= 1"),
        (None, ("--confidence-threshold", "1.5"), "confidence threshold must be in [0, 1]"),
        (None, ("MODEL.WEIGHTS", "absent.pth"), ("MODEL.WEIGHTS", "absent.pth")),
        (None, ("MODEL.NO_SUCH_KEY", "1"), "Non-existent key: MODEL.NO_SUCH_KEY"),
    ],
)
def test_bad_inputs(shapes, tmp_path, make_input, args, message):
    inputs = shapes[1] if make_input is None else make_input(tmp_path)
    argv = ["--config-file", str(CONFIG), "--input", str(inputs), "--output", str(tmp_path / "o")]
    with pytest.raises(SystemExit) as excinfo:
        demo.main(argv + ["--confidence-threshold", "0.5", *args])
    for part in (message,) if isinstance(message, str) else message:
        assert part in str(excinfo.value)
    assert not (tmp_path / "o" / "predictions.json").exists()


def test_unknown_config_and_format(shapes, tmp_path, capsys):
    argv = ["--input", str(shapes[1]), "--output", str(tmp_path / "o")]
    with pytest.raises(SystemExit, match="config file absent.yaml does not exist"):
        demo.main(["--config-file", "absent.yaml", *argv])
    with pytest.raises(SystemExit) as excinfo:
        demo.main(["--config-file", str(CONFIG), *argv, "--image-format", "gif"])
    assert excinfo.value.code == 2 and "invalid choice: 'gif'" in capsys.readouterr().err


def test_find_inputs_kinds(shapes, tmp_path):
    video = write_video(tmp_path / "clip.avi", num_frames=3)
    items = find_inputs([str(video), str(shapes[1])])
    assert [(i.kind, i.path.name) for i in items] == [
        ("video", "clip.avi"),
        *(("image", f"{k:06d}.png") for k in range(1, NUM_IMAGES + 1)),
    ]
    assert (items[0].num_frames, items[0].height, items[0].width) == (3, 64, 80)


@pytest.mark.slow
def test_cli_exit_status(tmp_path):
    """The script as a user runs it: status 1 and the reason on stderr."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "demo.py"), "--config-file", str(CONFIG),
         "--input", str(tmp_path / "*.png"), "--output", str(tmp_path / "o")],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 1
    assert f"error: No image or video files match '{tmp_path}/*.png'" in proc.stderr


def test_a_batch_predicts_what_one_at_a_time_does(shapes, tmp_path):
    """Predictor.batch on images of one size equals one image at a time; the demo's
    --batch-size (frames of a video, then images of another size) writes the same predictions."""
    _, image_root = shapes
    cfg = load_cfg(str(CONFIG), TINY_OPTS + ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"])
    torch.manual_seed(0)
    predictor = Predictor(cfg)
    images = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(image_root.glob("*.png"))]
    together = predictor.instances_batch(images)
    for image, batched in zip(images, together):
        alone = predictor.instances(image)
        assert len(alone) == len(batched) > 0
        # Equal up to the float rounding of batched matrix products.
        assert torch.equal(alone.pred_classes, batched.pred_classes)
        assert torch.allclose(alone.scores, batched.scores, atol=1e-5)
        assert torch.allclose(alone.pred_boxes.tensor, batched.pred_boxes.tensor, atol=1e-3)
        assert (alone.pred_masks != batched.pred_masks).float().mean() < 1e-3
    assert predictor.batch([]) == []

    video = write_video(tmp_path / "clip.avi", num_frames=5)
    results = []
    for batch_size in ("1", "3"):
        torch.manual_seed(0)  # the same random weights in both runs
        output = tmp_path / f"out{batch_size}"
        run_demo([video, image_root], output, "--batch-size", batch_size)
        results.append(json.loads((output / "predictions.json").read_text()))
    assert results[0]["images"] == results[1]["images"] and len(results[0]["images"]) == 8
    one, batched = results[0]["annotations"], results[1]["annotations"]
    assert [(a["image_id"], a["category_id"]) for a in one] == [
        (a["image_id"], a["category_id"]) for a in batched
    ]
    assert np.allclose([a["bbox"] for a in one], [a["bbox"] for a in batched], atol=1e-3)
    assert np.allclose([a["score"] for a in one], [a["score"] for a in batched], atol=1e-5)
