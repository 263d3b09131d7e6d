"""Tests for ``backbones.engine``: COCO evaluation parity, CPU DDP and launch, loss curves."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2.data import DatasetCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.evaluation import COCOEvaluator
from detectron2.evaluation.coco_evaluation import instances_to_coco_json
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage
from PIL import Image
from torch import nn

from backbones import BackboneOptionError, engine
from backbones.engine import (
    COCO_BACKENDS,
    FasterCOCOEvaluator,
    LossCurveWriter,
    Trainer,
    coco_stats,
    ddp_device_ids,
    launch,
    load_cfg,
    load_metrics,
    plot_loss_curves,
    smooth,
)

ROOT = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------------------------------------
# COCO evaluation

# Non-contiguous ids; "hexagon" has ground truth but is never predicted, "pentagon" has neither.
CATEGORIES = [(1, "circle"), (3, "square"), (7, "hexagon"), (9, "pentagon")]
PREDICTED_IDS = (1, 3)
HEIGHT, WIDTH = 320, 400
NUM_IMAGES = 6  # the last one has no annotations


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


def _predict(coco: dict, rng: np.random.Generator) -> dict[int, Instances]:
    """Noisy copies of most ground-truth objects plus false positives, as model outputs."""
    contiguous = {cat_id: i for i, (cat_id, _) in enumerate(CATEGORIES)}
    per_image: dict[int, list[tuple[list[float], int, float]]] = {
        img["id"]: [] for img in coco["images"]
    }
    for ann in coco["annotations"]:
        if rng.random() < 0.8:
            x, y, w, h = ann["bbox"]
            dx, dy, dw, dh = rng.normal(0, 0.1, size=4) * [w, h, w, h]
            cat = ann["category_id"] if ann["category_id"] in PREDICTED_IDS else 1
            if rng.random() < 0.15:
                cat = 4 - cat  # the other predicted class
            box = [x + dx, y + dy, max(w + dw, 2.0), max(h + dh, 2.0)]
            per_image[ann["image_id"]].append((box, cat, float(rng.random())))
    for image_id, dets in per_image.items():
        for _ in range(2):
            w, h = rng.uniform(5, 80, size=2)
            box = [rng.uniform(0, WIDTH - w), rng.uniform(0, HEIGHT - h), w, h]
            dets.append((box, int(rng.choice(PREDICTED_IDS)), float(rng.random() * 0.5)))

    outputs = {}
    for image_id, dets in per_image.items():
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
        outputs[image_id] = instances
    return outputs


@pytest.fixture(scope="module")
def coco_case(tmp_path_factory) -> tuple[str, Path, dict[int, Instances]]:
    """A registered COCO dataset (name, json file) and model outputs for its images."""
    rng = np.random.default_rng(0)
    coco = _make_coco(rng)
    json_file = tmp_path_factory.mktemp("coco") / "instances.json"
    json_file.write_text(json.dumps(coco))
    name = "engine_test_coco"
    register_coco_instances(name, {}, str(json_file), str(json_file.parent))
    DatasetCatalog.get(name)  # sets thing_classes and the category id mapping
    return name, json_file, _predict(coco, rng)


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


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_coco_stats_match_pycocotools(coco_case, iou_type):
    _, json_file, outputs = coco_case
    results = _coco_results(outputs)
    faster = coco_stats(json_file, results, iou_type, backend="faster_coco_eval")
    official = coco_stats(json_file, results, iou_type, backend="pycocotools")
    assert faster.shape == official.shape == (12,)
    # Not a vacuous comparison: real detections with partial precision and recall.
    assert 0.05 < official[0] < 0.95 and (official[3:6] > -1).all()
    np.testing.assert_allclose(faster, official, rtol=0, atol=1e-9)


@pytest.mark.parametrize("backend", COCO_BACKENDS)
def test_evaluator_matches_detectron2_official(coco_case, tmp_path, backend):
    name, _, outputs = coco_case
    ours = FasterCOCOEvaluator(
        name, tasks=("bbox", "segm"), output_dir=str(tmp_path), backend=backend
    )
    official = COCOEvaluator(name, tasks=("bbox", "segm"), use_fast_impl=False)
    assert ours.backend == backend
    got, expected = _run(ours, outputs), _run(official, outputs)

    assert set(got) == set(expected) == {"bbox", "segm"}
    for task in expected:
        assert set(got[task]) == set(expected[task])
        for metric, value in expected[task].items():
            assert got[task][metric] == pytest.approx(value, abs=1e-7, nan_ok=True), metric
    # Never predicted: AP 0; no ground truth: NaN.
    assert got["bbox"]["AP-hexagon"] == 0 and math.isnan(got["bbox"]["AP-pentagon"])

    results = json.loads((tmp_path / "coco_instances_results.json").read_text())
    assert {r["category_id"] for r in results} == set(PREDICTED_IDS)
    assert {r["image_id"] for r in results} == set(range(1, NUM_IMAGES + 1))
    metrics = json.loads((tmp_path / "coco_metrics.json").read_text())
    assert metrics["bbox"]["AP"] == pytest.approx(got["bbox"]["AP"])


def test_evaluator_auto_prefers_faster_coco_eval(coco_case):
    assert FasterCOCOEvaluator(coco_case[0]).backend == "faster_coco_eval"
    with pytest.raises(ValueError, match="Unknown COCO backend"):
        FasterCOCOEvaluator(coco_case[0], backend="lvis")


# ---------------------------------------------------------------------------------------------
# Config, DDP and launch on CPU


def test_load_cfg_adds_our_node_and_falls_back_to_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = load_cfg(opts=["BACKBONES.MEMORY_FORMAT", "contiguous"])
    assert cfg.is_frozen()
    assert cfg.MODEL.DEVICE == "cpu"
    assert cfg.BACKBONES.MEMORY_FORMAT == "contiguous"


def test_ddp_device_ids(monkeypatch):
    monkeypatch.setattr(engine.comm, "get_local_rank", lambda: 3)
    # torch rejects device_ids for CPU modules; any other device gets this process's index.
    assert ddp_device_ids(nn.Linear(2, 2)) is None
    assert ddp_device_ids(nn.Linear(2, 2, device="meta")) == [3]
    assert ddp_device_ids(nn.ReLU()) is None


def test_create_ddp_model_is_identity_in_one_process():
    model = nn.Linear(2, 2)
    assert engine.create_ddp_model(model, broadcast_buffers=False) is model


def test_launch_in_one_process_calls_directly():
    calls = []
    launch(calls.append, 1, args=("ran",), device="cpu")
    assert calls == ["ran"]


# A script, not a function of this module: spawned workers must import it whatever the pytest
# import mode, and spawn re-imports the parent's __main__ file.
_LAUNCH_PROBE = """
import json, os, sys
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from detectron2.utils import comm
from backbones.engine import create_ddp_model, launch


def probe(out_dir):
    rank = comm.get_rank()
    total = torch.tensor([rank + 1.0])
    dist.all_reduce(total)
    torch.manual_seed(0)
    model = nn.Linear(2, 1)
    ddp = create_ddp_model(model, broadcast_buffers=False)
    ddp(torch.full((1, 2), rank + 1.0)).sum().backward()  # DDP averages the gradients
    info = dict(
        backend=dist.get_backend(),
        world_size=comm.get_world_size(),
        local_rank=comm.get_local_rank(),
        local_size=comm.get_local_size(),
        total=total.item(),
        is_ddp=isinstance(ddp, DistributedDataParallel),
        grad=model.weight.grad.tolist(),
        threads=torch.get_num_threads(),
        cpu_count=os.cpu_count(),
    )
    with open(f"{out_dir}/rank{rank}.json", "w") as f:
        json.dump(info, f)


if __name__ == "__main__":
    launch(probe, 2, dist_url="auto", args=(sys.argv[1],), device="cpu")
"""


@pytest.mark.slow
def test_launch_two_cpu_processes_with_gloo(tmp_path):
    script = tmp_path / "probe.py"
    script.write_text(textwrap.dedent(_LAUNCH_PROBE))
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    infos = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for local_rank, info in enumerate(infos):
        assert info["backend"] == "gloo"
        assert info["world_size"] == info["local_size"] == 2
        assert info["local_rank"] == local_rank  # comm.create_local_process_group with gloo
        assert info["total"] == 3.0
        assert info["is_ddp"]
        assert info["grad"][0] == pytest.approx([1.5, 1.5])
        assert info["threads"] == max(1, info["cpu_count"] // 2)  # the cores are shared


# ---------------------------------------------------------------------------------------------
# Loss curves

_LOSSES = ("total_loss", "loss_cls", "loss_box_reg", "loss_mask")


def _record(iteration: int, **extra) -> str:
    losses = {name: 1.0 / (iteration + 1) + i for i, name in enumerate(_LOSSES)}
    return json.dumps({"iteration": iteration, "lr": 0.02, **losses, **extra})


def _write_metrics(path: Path) -> None:
    lines = [_record(19), _record(39), _record(59)]
    lines.append(json.dumps({"iteration": 59, "bbox/AP": 1.0}))  # evaluation, same iteration
    lines.append("")
    # Resumed from the checkpoint of iteration 39: iteration 59 again, then onwards.
    lines += [_record(59, data_time=0.5), _record(79)]
    path.write_text("\n".join(lines) + "\n")


def test_load_metrics_keeps_the_latest_run(tmp_path):
    path = tmp_path / "metrics.json"
    _write_metrics(path)
    records = load_metrics(path)
    assert [r["iteration"] for r in records] == [19, 39, 59, 79]
    assert records[2]["data_time"] == 0.5

    # A fresh training in the same folder starts over.
    with path.open("a") as f:
        f.write(_record(19, data_time=0.7) + "\n")
    assert [r["iteration"] for r in load_metrics(path)] == [19]


def test_smooth_is_a_running_median():
    assert smooth([(0, 1.0), (1, 3.0), (2, 2.0), (3, 10.0)], window=3) == [
        (0, 1.0),
        (1, 2.0),
        (2, 2.0),
        (3, 3.0),
    ]


def test_plot_loss_curves_from_metrics_json(tmp_path):
    metrics = tmp_path / "metrics.json"
    _write_metrics(metrics)
    records = load_metrics(metrics)
    smoothed = {k: [(r["iteration"], r[k]) for r in records] for k in _LOSSES}
    smoothed["lr"] = [(0, 0.02)]  # not a loss: ignored
    path = plot_loss_curves(tmp_path / "loss_curve.png", smoothed=smoothed)
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.width > image.height > 100

    with pytest.raises(ValueError, match="No total_loss"):
        plot_loss_curves(tmp_path / "none.png", raw={"lr": [(0, 0.1)]})


def test_loss_curve_writer_hook(tmp_path):
    _write_metrics(tmp_path / "metrics.json")
    hook = LossCurveWriter(str(tmp_path), period=10)
    with EventStorage(start_iter=80) as storage:
        for it in range(80, 100):
            storage.iter = it
            storage.put_scalars(**{name: 2.0 + math.sin(it) for name in _LOSSES})
            storage.put_scalar("lr", 0.01)
        assert hook.write() == tmp_path / "loss_curve.png"
    assert (tmp_path / "loss_curve.png").stat().st_size > 0

    # No new iteration (a finished training resumed): the plot with raw values stays.
    with EventStorage(start_iter=100):
        assert hook.write() is None
    (tmp_path / "loss_curve.png").unlink()
    with EventStorage(start_iter=100):
        assert hook.write() == tmp_path / "loss_curve.png"  # from metrics.json alone

    empty = LossCurveWriter(str(tmp_path / "empty"))
    with EventStorage():
        assert empty.write() is None


def test_loss_curve_writer_never_raises(tmp_path, caplog):
    (tmp_path / "metrics.json").write_text('{"iteration": 19, "total_loss": 1.0}\n{"iter')
    with EventStorage():
        assert LossCurveWriter(str(tmp_path)).write() is None
    assert "Could not write loss_curve.png" in caplog.text


def test_evaluator_for_a_non_coco_dataset_names_it():
    from detectron2.data import MetadataCatalog

    MetadataCatalog.get("not_coco_for_test").set(evaluator_type="sem_seg")
    try:
        with pytest.raises(ValueError, match=r"'not_coco_for_test' has evaluator_type='sem_seg'"):
            Trainer.build_evaluator(load_cfg(), "not_coco_for_test")
    finally:
        MetadataCatalog.remove("not_coco_for_test")


def test_optimizer_choice_follows_backbones_optimizer():
    cfg = load_cfg(str(ROOT / "configs" / "mrcnn_r18_shapes.yaml"), ["SOLVER.BASE_LR", "0.003"])
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    optimizer = Trainer.build_optimizer(cfg, model)
    assert isinstance(optimizer, torch.optim.AdamW) and cfg.BACKBONES.OPTIMIZER == "AdamW"
    assert {group["lr"] for group in optimizer.param_groups} == {0.003}
    # Detectron2's groups: no weight decay on norm layers (SOLVER.WEIGHT_DECAY_NORM = 0).
    assert {group["weight_decay"] for group in optimizer.param_groups} == {0.0, 0.05}
    sgd = Trainer.build_optimizer(load_cfg(opts=["BACKBONES.OPTIMIZER", "SGD"]), model)
    assert isinstance(sgd, torch.optim.SGD)
    with pytest.raises(BackboneOptionError, match=r"BACKBONES\.OPTIMIZER='Adam' .*'SGD', 'AdamW'"):
        Trainer.build_optimizer(load_cfg(opts=["BACKBONES.OPTIMIZER", "Adam"]), model)
