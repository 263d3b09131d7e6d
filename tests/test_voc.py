"""PASCAL VOC (the paper's Table 7) on a tiny generated VOC tree: Detectron2's ``pascal_voc``
evaluator through our trainer (perfect, shifted and missing boxes, difficult objects, the 2007
11-point metric), the dataset check before a run, and a short training with evaluation by
``tools/train_net.py`` on Detectron2's builtin VOC datasets."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_pascal_voc
from detectron2.evaluation import PascalVOCDetectionEvaluator
from detectron2.structures import Boxes, Instances
from torch import nn

from backbones import Trainer, load_cfg
from backbones.engine.cli import DatasetFilesError, check_datasets

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("cat", "dog")
WIDTH, HEIGHT = 96, 64
# Each image's objects: (class, (xmin, ymin, xmax, ymax) in VOC's 1-based inclusive pixels,
# difficult). Every box is 40 x 40 pixels; image 000003's second cat is "difficult".
OBJECTS = {
    "000001": [("cat", (5, 5, 44, 44), 0), ("dog", (51, 15, 90, 54), 0)],
    "000002": [("dog", (11, 11, 50, 50), 0)],
    "000003": [("cat", (41, 21, 80, 60), 0), ("cat", (2, 2, 41, 41), 1)],
}
COLORS = {"cat": (40, 40, 220), "dog": (220, 120, 40)}  # BGR


def write_voc(dirname: Path, splits: dict[str, list[str]]) -> Path:
    """A VOC20xx folder: ``JPEGImages/<id>.jpg`` (a filled box per object),
    ``Annotations/<id>.xml`` and ``ImageSets/Main/<split>.txt`` for each of ``splits``."""
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (dirname / sub).mkdir(parents=True, exist_ok=True)
    for image_id, objects in OBJECTS.items():
        image = np.full((HEIGHT, WIDTH, 3), 128, np.uint8)
        xml = [f"<annotation><filename>{image_id}.jpg</filename>"]
        xml.append(f"<size><width>{WIDTH}</width><height>{HEIGHT}</height><depth>3</depth></size>")
        for name, (x0, y0, x1, y1), difficult in objects:
            cv2.rectangle(image, (x0 - 1, y0 - 1), (x1 - 1, y1 - 1), COLORS[name], -1)
            xml.append(
                f"<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated>"
                f"<difficult>{difficult}</difficult><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
                f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
            )
        cv2.imwrite(str(dirname / "JPEGImages" / f"{image_id}.jpg"), image)
        (dirname / "Annotations" / f"{image_id}.xml").write_text("".join(xml) + "</annotation>")
    for split, image_ids in splits.items():
        (dirname / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(image_ids) + "\n")
    return dirname


@pytest.fixture
def voc(tmp_path) -> Iterator[Callable[..., str]]:
    """``register(year=2007, split="test")``: the tiny VOC tree registered as Detectron2
    registers VOC (``register_pascal_voc`` and ``evaluator_type`` ``pascal_voc``); returns its
    name. Registrations are removed afterwards."""
    dirname = write_voc(tmp_path / "VOC2007", {"test": list(OBJECTS)})
    names = []

    def register(year: int = 2007, split: str = "test", folder: Path = dirname) -> str:
        name = f"tiny_voc_{year}_{split}_{len(names)}"
        register_pascal_voc(name, str(folder), split, year, class_names=CLASSES)
        MetadataCatalog.get(name).evaluator_type = "pascal_voc"
        names.append(name)
        return name

    yield register
    for name in names:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def predictions(
    name: str, *, shift: int = 0, drop: tuple[tuple[str, int], ...] = ()
) -> dict[str, Instances]:
    """Predictions equal to the ground truth of dataset ``name`` (boxes in Detectron2's
    coordinates, as its loader reads them), moved ``shift`` pixels right, without the objects
    ``drop`` names as ``(image id, index)``; image id -> Instances."""
    out = {}
    for record in DatasetCatalog.get(name):
        kept = [
            a for i, a in enumerate(record["annotations"]) if (record["image_id"], i) not in drop
        ]
        boxes = torch.tensor([a["bbox"] for a in kept], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 0::2] += shift
        instances = Instances((record["height"], record["width"]))
        instances.pred_boxes = Boxes(boxes)
        instances.scores = torch.linspace(0.9, 0.8, len(kept))
        instances.pred_classes = torch.tensor([a["category_id"] for a in kept], dtype=torch.int64)
        out[record["image_id"]] = instances
    return out


def evaluate(name: str, found: dict[str, Instances]) -> dict[str, float]:
    """``{"AP", "AP50", "AP75"}`` of predictions ``found`` by the evaluator the trainer builds
    for dataset ``name``."""
    evaluator = Trainer.build_evaluator(load_cfg(opts=["MODEL.DEVICE", "cpu"]), name)
    assert isinstance(evaluator, PascalVOCDetectionEvaluator)
    evaluator.reset()
    for image_id, instances in found.items():
        evaluator.process([{"image_id": image_id}], [{"instances": instances}])
    return evaluator.evaluate()["bbox"]


class GroundTruthModel(nn.Module):
    """A "detector" that answers each image of a dataset with its ground truth."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.answers = predictions(name)
        self.seen: list[tuple[str, tuple[int, ...]]] = []

    def forward(self, inputs: list[dict]) -> list[dict]:
        self.seen += [(x["image_id"], tuple(x["image"].shape)) for x in inputs]
        return [{"instances": self.answers[x["image_id"]]} for x in inputs]


def test_perfect_detections_score_100_through_the_trainers_test(voc):
    name = voc()
    cfg = load_cfg(
        str(ROOT / "configs" / "frcnn_r18_voc.yaml"),
        [
            "MODEL.WEIGHTS", "",  # only the data and the evaluator matter here
            "MODEL.DEVICE", "cpu",
            "DATASETS.TEST", f"('{name}',)",
            "DATALOADER.NUM_WORKERS", "0",
            "INPUT.MIN_SIZE_TEST", "64",
        ],
    )  # fmt: skip
    model = GroundTruthModel(name)
    results = Trainer.test(cfg, model)  # the evaluator by evaluator_type, as after a training
    assert results["bbox"] == pytest.approx({"AP": 100.0, "AP50": 100.0, "AP75": 100.0})
    # Every image of the split was read from JPEGImages, as the config's input size says.
    assert sorted(model.seen) == [(image_id, (3, HEIGHT, WIDTH)) for image_id in OBJECTS]


def test_shifted_boxes_lose_the_strict_thresholds_only(voc):
    name = voc()
    # 40-pixel boxes moved 8 pixels: IoU 32*40 / (2*40*40 - 32*40) = 2/3, a hit at IoU 0.50,
    # 0.55, 0.60 and 0.65, a miss from 0.70 on; AP averages the ten thresholds.
    metrics = evaluate(name, predictions(name, shift=8))
    assert metrics == pytest.approx({"AP": 40.0, "AP50": 100.0, "AP75": 0.0})
    assert evaluate(name, predictions(name, shift=30))["AP50"] == pytest.approx(0)  # IoU 1/7


def test_a_missed_object_costs_recall_with_the_2007_metric(voc):
    # One of the two (not difficult) cats missed: recall 1/2 at precision 1. VOC 2007's 11-point
    # AP counts the recall points 0, 0.1, ..., 0.5: 6/11; later years' area under the curve 1/2.
    # Dogs stay perfect; the mean is over the two classes.
    drop = (("000003", 0),)
    for year, cat_ap in ((2007, 6 / 11), (2012, 1 / 2)):
        name = voc(year=year)
        assert evaluate(name, predictions(name, drop=drop))["AP50"] == pytest.approx(
            100 * (cat_ap + 1) / 2
        )


def test_difficult_objects_neither_count_nor_cost(voc):
    name = voc()
    # Not finding image 000003's difficult cat costs nothing; finding it is no false positive.
    assert evaluate(name, predictions(name, drop=(("000003", 1),)))["AP50"] == pytest.approx(100)
    assert evaluate(name, predictions(name))["AP50"] == pytest.approx(100)
    # A confident box on nothing is a false positive, ranked first: precision falls.
    found = predictions(name)
    extra = Instances((HEIGHT, WIDTH))
    extra.pred_boxes = Boxes(torch.tensor([[60.0, 2.0, 90.0, 20.0]]))
    extra.scores, extra.pred_classes = torch.tensor([0.99]), torch.tensor([1])  # a dog
    found["000003"] = Instances.cat([found["000003"], extra])
    metrics = evaluate(name, found)
    assert 50.0 < metrics["AP50"] < 100.0 and math.isfinite(metrics["AP"])


def test_check_datasets_names_a_missing_voc_folder_and_split_list(voc, tmp_path):
    def check(name: str) -> None:
        cfg = load_cfg(
            opts=["DATASETS.TRAIN", f"('{name}',)", "DATASETS.TEST", "()", "MODEL.DEVICE", "cpu"]
        )
        check_datasets(cfg)

    absent = tmp_path / "elsewhere" / "VOC2012"
    name = voc(2012, "trainval", absent)
    with pytest.raises(DatasetFilesError) as error:
        check(name)
    assert f"dataset {name} is not on disk: {absent} does not exist" in str(error.value)
    # The folder is there, but not this split's image list (VOC 2007's test set is an archive of
    # its own, unpacked into the same folder).
    with pytest.raises(DatasetFilesError) as error:
        check(voc(2007, "trainval"))
    list_file = tmp_path / "VOC2007" / "ImageSets" / "Main" / "trainval.txt"
    assert f"{list_file} does not exist" in str(error.value)
    check(voc(2007, "test"))  # all there


def tool_env(datasets: Path) -> dict[str, str]:
    """A CPU-only environment whose Detectron2 datasets are read under ``datasets``."""
    return dict(
        os.environ, DETECTRON2_DATASETS=str(datasets), OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES=""
    )


def test_train_net_names_the_missing_voc_folder(tmp_path):
    proc = subprocess.run(
        [
            sys.executable, "tools/train_net.py", "--config-file", "configs/frcnn_r50_voc.yaml",
            "MODEL.WEIGHTS", "",  # the datasets are checked, not the weights
        ],
        cwd=ROOT, env=tool_env(tmp_path), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert errors[0].startswith(
        f"error: DATASETS.TRAIN: dataset voc_2007_trainval is not on disk: {tmp_path}/VOC2007 "
        "does not exist"
    )
    assert f"DETECTRON2_DATASETS={tmp_path}" in errors[0] and "datasets/README.md" in errors[0]


# A VOC config shrunk to seconds on a CPU: 64 px images, slim heads, 4 iterations of batch 2.
TINY_OPTS = [
    "MODEL.WEIGHTS", "",  # random weights: this checks the data, the training and the evaluation
    "MODEL.FPN.OUT_CHANNELS", "32",
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN", "200",
    "MODEL.RPN.POST_NMS_TOPK_TRAIN", "50",
    "MODEL.RPN.PRE_NMS_TOPK_TEST", "200",
    "MODEL.RPN.POST_NMS_TOPK_TEST", "50",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32",
    "MODEL.ROI_BOX_HEAD.FC_DIM", "64",
    "INPUT.MIN_SIZE_TRAIN", "(64,)",
    "INPUT.MAX_SIZE_TRAIN", "128",
    "INPUT.MIN_SIZE_TEST", "64",
    "INPUT.MAX_SIZE_TEST", "128",
    "DATALOADER.NUM_WORKERS", "0",
    "SOLVER.IMS_PER_BATCH", "2",
    "SOLVER.MAX_ITER", "4",
    "SOLVER.STEPS", "()",
    "SOLVER.WARMUP_ITERS", "0",
    "SOLVER.CHECKPOINT_PERIOD", "1000",
    "TEST.EVAL_PERIOD", "0",
]  # fmt: skip


@pytest.mark.slow
def test_train_net_trains_and_evaluates_on_the_builtin_voc_datasets(tmp_path):
    # The config's own datasets, voc_2007_trainval + voc_2012_trainval and voc_2007_test, found
    # under DETECTRON2_DATASETS as Detectron2 registers them.
    datasets = tmp_path / "datasets"
    write_voc(datasets / "VOC2007", {"trainval": ["000001", "000002"], "test": list(OBJECTS)})
    write_voc(datasets / "VOC2012", {"trainval": ["000002", "000003"]})
    output = tmp_path / "output"
    command = [sys.executable, "tools/train_net.py", "--config-file", "configs/frcnn_r18_voc.yaml"]
    proc = subprocess.run(
        [*command, *TINY_OPTS, "OUTPUT_DIR", str(output)],
        cwd=ROOT, env=tool_env(datasets), capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert (output / "model_final.pth").is_file()
    assert "Evaluating voc_2007_test using 2007 metric" in log
    # Detectron2's copypaste lines of the bbox task: AP, AP50, AP75 in percent.
    lines = [line.split("copypaste: ", 1)[1] for line in log.splitlines() if "copypaste: " in line]
    assert lines[:2] == ["Task: bbox", "AP,AP50,AP75"], lines
    values = [float(v) for v in lines[2].split(",")]
    assert len(values) == 3 and all(0.0 <= v <= 100.0 for v in values), values
