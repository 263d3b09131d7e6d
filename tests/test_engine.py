"""Tests for ``backbones.engine``: config composition, CPU DDP and launch, loss curves, evaluators
by dataset type, the optimizer choice, precise BN."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from detectron2.utils import comm
from detectron2.utils.events import EventStorage
from PIL import Image
from torch import nn

from backbones import BackboneOptionError, engine
from backbones.engine import (
    LossCurveWriter,
    Trainer,
    ddp_device_ids,
    launch,
    load_cfg,
    load_metrics,
    plot_loss_curves,
    smooth,
)
from backbones.evaluation import FasterCOCOEvaluator

ROOT = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------------------------------------
# Config, DDP and launch on CPU


def test_load_cfg_adds_our_node_and_falls_back_to_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = load_cfg(opts=["BACKBONES.MEMORY_FORMAT", "contiguous"])
    assert cfg.is_frozen()
    assert cfg.MODEL.DEVICE == "cpu"
    assert cfg.BACKBONES.MEMORY_FORMAT == "contiguous"


def test_ddp_device_ids(monkeypatch):
    monkeypatch.setattr(comm, "get_local_rank", lambda: 3)
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

    MetadataCatalog.get("not_coco_for_test").set(evaluator_type="cityscapes_instance")
    try:
        with pytest.raises(
            ValueError,
            match=r"'not_coco_for_test' has evaluator_type='cityscapes_instance'.*'coco', 'lvis'",
        ):
            Trainer.build_evaluator(load_cfg(), "not_coco_for_test")
    finally:
        MetadataCatalog.remove("not_coco_for_test")


def test_evaluator_follows_the_dataset_evaluator_type(tmp_path):
    from detectron2.data import MetadataCatalog
    from detectron2.evaluation import PascalVOCDetectionEvaluator

    MetadataCatalog.get("voc_for_test").set(
        evaluator_type="pascal_voc", dirname=str(tmp_path), split="val", year=2007,
        thing_classes=["a"],
    )  # fmt: skip
    try:
        evaluator = Trainer.build_evaluator(load_cfg(), "voc_for_test")
        assert isinstance(evaluator, PascalVOCDetectionEvaluator)
        # No evaluator_type: COCO, bbox only without masks.
        assert isinstance(Trainer.build_evaluator(load_cfg(), "shapes_val"), FasterCOCOEvaluator)
    finally:
        MetadataCatalog.remove("voc_for_test")


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


# ---------------------------------------------------------------------------------------------
# Precise BN


def test_precise_bn_runs_when_the_config_asks_and_the_final_checkpoint_has_its_statistics(
    tmp_path,
):
    # TEST.PRECISE_BN (MoCo's configs turn it on): Detectron2's PreciseBN hook, which our
    # Trainer keeps from DefaultTrainer.build_hooks, recomputes the BN statistics on NUM_ITER
    # training batches after the last iteration, before the final checkpoint is written.
    opts = [
        "OUTPUT_DIR", str(tmp_path),
        "MODEL.FPN.OUT_CHANNELS", "32",
        "MODEL.ROI_BOX_HEAD.FC_DIM", "64",
        "MODEL.ROI_MASK_HEAD.CONV_DIM", "16",
        "SOLVER.IMS_PER_BATCH", "2",
        "SOLVER.MAX_ITER", "1",
        "SOLVER.WARMUP_ITERS", "0",
        "SOLVER.CHECKPOINT_PERIOD", "1000",
        "DATASETS.TEST", "()",
        "TEST.PRECISE_BN.ENABLED", "True",
        "TEST.PRECISE_BN.NUM_ITER", "3",
        "SEED", "0",
    ]  # fmt: skip
    trainer = Trainer(load_cfg(str(ROOT / "configs" / "mrcnn_r18_shapes.yaml"), opts))
    names = [type(hook).__name__ for hook in trainer._hooks]
    assert names.index("PreciseBN") < names.index("PeriodicCheckpointer")
    trainer.train()
    norm = trainer.model.backbone.bottom_up.stem.conv1.norm
    assert isinstance(norm, nn.BatchNorm2d)
    # One training step, then three precise-BN batches.
    assert int(norm.num_batches_tracked) == 1 + 3
    saved = torch.load(tmp_path / "model_final.pth", map_location="cpu", weights_only=True)
    key = "backbone.bottom_up.stem.conv1.norm.running_var"
    assert torch.equal(saved["model"][key], norm.running_var)
    assert int(saved["model"][key.replace("running_var", "num_batches_tracked")]) == 4
