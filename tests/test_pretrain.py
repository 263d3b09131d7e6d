"""Classifier pretraining (``backbones.study.pretrain``, ``tools/pretrain_classifier.py``) and
its data (``backbones.study.data``): the weights it
writes load strictly into ``make_resnet`` and a detector config with the input settings the
pretraining used; resuming equals an uninterrupted run; bad data folders and options are errors
that name them.

Pretraining runs on the detection trainer (``backbones.engine.Trainer``): its checkpoints are
weights files, its metrics.json Detectron2's, its schedule Detectron2's, its divergence stop the
engine's. Nets are shrunk (8-channel stems and res2) and data tiny (10 classes of 32 px), a few
iterations each: every test takes a few seconds on one core.
"""

from __future__ import annotations

import importlib.util
import math
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.modeling import build_model
from PIL import Image

from backbones import BackbonesCheckpointer, load_cfg, make_resnet, read_weights
from backbones.engine.hooks import load_metrics
from backbones.errors import BackboneOptionError
from backbones.study.data.classification import (
    ClassificationDataError,
    DataSpec,
    load_classification_data,
    read_cifar10,
)
from backbones.study.data.synthetic_classes import (
    class_names,
    ensure_synthetic_split,
    render_classes,
)
from backbones.study.pretrain.classifier import (
    PIXEL_MEAN,
    PIXEL_STD,
    build_classifier,
    parse_resnet_options,
)
from backbones.study.pretrain.config import classifier_cfg
from backbones.study.pretrain.run import PretrainRun, Recipe, evaluation_records
from backbones.study.pretrain.train import pretrain
from backbones.weights import load_weights, read_file

ROOT = Path(__file__).resolve().parents[1]
SHRUNK_BASIC = dict(stem_out_channels=8, res2_out_channels=8)
SHRUNK_BOTTLENECK = dict(stem_out_channels=8, res2_out_channels=16, width_per_group=4)
TINY = dict(num_classes=10, num_train=80, num_val=20, image_size=32)
# What an evaluation records (metrics.json keeps more: Detectron2's smoothed scalars, times).
EVALUATION_KEYS = (
    "iter", "epoch", "train_loss", "train_error", "val_loss", "val_error", "val_top5_error", "lr"
)  # fmt: skip


def load_tool(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("synthetic_classes")


def tiny_run(output: Path, root: Path, depth: int = 18, **recipe) -> PretrainRun:
    options = SHRUNK_BASIC if depth in (18, 34) else SHRUNK_BOTTLENECK
    recipe = {"batch_size": 16, "max_iter": 4, "eval_period": 2, **recipe}
    return PretrainRun(
        str(output),
        depth,
        data=DataSpec(path=str(root), **TINY),
        recipe=Recipe(**recipe),
        resnet_options=dict(options),
    )


def write_image_folder(root: Path, classes=("cat", "dog", "fish"), train=4, val=2) -> Path:
    rng = np.random.default_rng(0)
    for split, count in (("train", train), ("val", val)):
        for c, name in enumerate(classes):
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 255, (40 + 4 * i, 48, 3), dtype=np.uint8)
                pixels[..., c] = 255  # one colour per class
                Image.fromarray(pixels).save(root / split / name / f"{i}.jpg")
    return root


# ---------------------------------------------------------------------------------------------
# Data


def test_synthetic_set_is_deterministic_balanced_and_cached(tmp_path):
    images, labels = render_classes("train", num_images=20, num_classes=10, image_size=32)
    again, _ = render_classes("train", num_images=12, num_classes=10, image_size=32)
    assert images.shape == (20, 32, 32, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(images[:12], again)  # image i depends on (seed, split, i)
    assert np.bincount(labels).tolist() == [2] * 10
    val, _ = render_classes("val", num_images=12, num_classes=10, image_size=32)
    assert not np.array_equal(val, again)
    assert class_names(12)[:2] == ["disk/solid", "ring/solid"] and class_names(12)[10:] == [
        "disk/stripes",
        "ring/stripes",
    ]

    folder = ensure_synthetic_split(tmp_path, "val", num_images=12, num_classes=10, image_size=32)
    np.testing.assert_array_equal(np.load(folder / "images.npy"), val)
    stamp = (folder / "images.npy").stat().st_mtime_ns
    assert ensure_synthetic_split(tmp_path, "val", num_images=12, num_classes=10, image_size=32)
    assert (folder / "images.npy").stat().st_mtime_ns == stamp  # cached, not drawn again
    # No temporary folder left; the lock file of the generation (.val-12.lock) stays.
    assert sorted(p.name for p in folder.parent.iterdir()) == [".val-12.lock", "val-12"]


def test_datasets_yield_bgr_uint8_and_seeded_augmentation(synthetic_root):
    data = load_classification_data(DataSpec(path=str(synthetic_root), **TINY))
    assert data.num_classes == 10 and data.input_size == 32
    image, label = data.val[3]
    rgb = np.load(Path(data.info["val"]) / "images.npy")[3]
    assert image.dtype == torch.uint8 and image.shape == (3, 32, 32) and label == 3
    np.testing.assert_array_equal(image.permute(1, 2, 0).numpy(), rgb[..., ::-1])  # BGR
    a, b, c = data.train[(5, 123)][0], data.train[(5, 123)][0], data.train[(5, 124)][0]
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_cifar10_batches_are_read_without_running_code(tmp_path):
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 255, (4, 3072), dtype=np.uint8), b"labels": [0, 1, 2, 9]}
        (tmp_path / name).write_bytes(pickle.dumps(batch))
    splits = read_cifar10(tmp_path)
    assert splits["train"][0].shape == (20, 32, 32, 3) and splits["val"][1].tolist() == [0, 1, 2, 9]
    raw = pickle.loads((tmp_path / "test_batch").read_bytes())[b"data"][0]
    np.testing.assert_array_equal(splits["val"][0][0, 0, 0], raw[[0, 1024, 2048]])  # R, G, B
    (tmp_path / "data_batch_3").unlink()
    with pytest.raises(ClassificationDataError, match="data_batch_3: missing; expected"):
        read_cifar10(tmp_path)


def _no_train(root: Path) -> Path:
    (root / "val" / "cat").mkdir(parents=True)
    return root / "train"


def _no_val(root: Path) -> Path:
    (root / "train" / "cat").mkdir(parents=True)
    (root / "train" / "cat" / "0.jpg").write_bytes(b"")
    return root / "val"


def _empty_class(root: Path) -> Path:
    write_image_folder(root)
    for f in (root / "train" / "dog").iterdir():
        f.unlink()
    return root / "train" / "dog"


def _no_classes(root: Path) -> Path:
    write_image_folder(root)
    os.rename(root / "train", root / "train_old")
    (root / "train").mkdir()
    return root / "train"


def _val_class_not_in_train(root: Path) -> Path:
    write_image_folder(root)
    os.rename(root / "val" / "fish", root / "val" / "shark")
    return root / "val"


BAD_FOLDERS = {
    "missing train/": (_no_train, "missing"),
    "missing val/": (_no_val, "missing"),
    "no class folders": (_no_classes, "no class folders"),
    "class without images": (_empty_class, "a class folder with no images"),
    "val class not in train": (_val_class_not_in_train, "classes not in .*train: shark"),
}


@pytest.mark.parametrize("case", BAD_FOLDERS)
def test_bad_image_folders_are_errors_naming_the_path_and_the_layout(tmp_path, case):
    make, message = BAD_FOLDERS[case]
    path = make(tmp_path / "data")
    with pytest.raises(ClassificationDataError, match=message) as error:
        load_classification_data(DataSpec("folder", str(tmp_path / "data")))
    assert str(path) in str(error.value) and "DIR/train/<class>/<image>" in str(error.value)


def test_an_unreadable_image_is_an_error_naming_the_file(tmp_path):
    root = write_image_folder(tmp_path / "data")
    broken = root / "train" / "cat" / "1.jpg"
    broken.write_bytes(b"not a jpeg")
    data = load_classification_data(DataSpec("folder", str(root), input_size=32))
    index = data.train.files.index(str(broken))
    with pytest.raises(ClassificationDataError, match="cannot read this image") as error:
        data.train[(index, 0)]
    assert str(broken) in str(error.value)
    tool = load_tool("pretrain_classifier")
    argv = ["--depth", "18", "--data", str(root), "--input-size", "32", "--output"]
    argv += [str(tmp_path / "out"), "--batch-size", "12", "--max-iter", "2", "--num-workers", "0"]
    assert tool.main(argv + ["stem_out_channels", "8", "res2_out_channels", "8"]) == 2


# ---------------------------------------------------------------------------------------------
# Options


def test_trailing_options_are_parsed_and_unknown_keys_named():
    assert parse_resnet_options(
        ["num_groups", "32", "stem_type", "deep", "avg_down", "True", "norm", "GN"]
    ) == {"num_groups": 32, "stem_type": "deep", "avg_down": True, "norm": "GN"}
    with pytest.raises(BackboneOptionError, match="num_group=32 .*not a keyword.*num_groups"):
        parse_resnet_options(["num_group", "32"])
    with pytest.raises(BackboneOptionError, match="depth=50 .*--depth"):
        parse_resnet_options(["depth", "50"])
    with pytest.raises(BackboneOptionError, match="num_groups=.*KEY VALUE pairs"):
        parse_resnet_options(["num_groups"])
    with pytest.raises(BackboneOptionError, match="--resume=.*flags go before"):
        parse_resnet_options(["num_groups", "32", "--resume"])


def test_the_tool_refuses_an_unknown_key_before_training(tmp_path, capsys):
    tool = load_tool("pretrain_classifier")
    argv = ["--depth", "18", "--output", str(tmp_path / "out"), "stem_widht", "16"]
    assert tool.main(argv) == 2
    assert "stem_widht=16" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------
# Training and its weights


def test_pretraining_on_the_synthetic_set_writes_weights_make_resnet_loads(
    tmp_path, synthetic_root, capsys
):
    tool = load_tool("pretrain_classifier")
    output = tmp_path / "r18"
    argv = ["--depth", "18", "--output", str(output), "--synthetic-root", str(synthetic_root)]
    argv += ["--num-classes", "10", "--num-train", "80", "--num-val", "20", "--image-size", "32"]
    argv += ["--batch-size", "16", "--max-iter", "4", "--eval-period", "2"]
    assert tool.main(argv + ["stem_out_channels", "8", "res2_out_channels", "8"]) == 0
    files = {p.name for p in output.iterdir()}
    assert {"model_final.pth", "metrics.json", "training_curve.png", "last_checkpoint"} <= files
    assert "config.yaml" in files and (output / "last_checkpoint").read_text() == "model_final.pth"
    # Detectron2's metrics.json: a line per write; the evaluations are the lines with val_error.
    assert len(load_metrics(output / "metrics.json")) >= 2
    records = evaluation_records(output / "metrics.json")
    assert [r["iter"] for r in records] == [2, 4]
    assert set(EVALUATION_KEYS) <= set(records[0])
    assert all(0 <= r["train_error"] <= 100 and 0 <= r["val_error"] <= 100 for r in records)

    path = str(output / "model_final.pth")
    weights = read_weights(path)
    assert weights.input.format == "BGR" and weights.input.stride_in_1x1 is False
    assert weights.input.pixel_mean == PIXEL_MEAN and weights.input.pixel_std == PIXEL_STD
    resnet = make_resnet(weights=path)  # the architecture from the file: nothing given
    report = load_weights(resnet, path)
    assert report.missing == {} and sorted(report.unused) == ["fc.bias", "fc.weight"]
    state = read_file(path)["model"]
    for name, tensor in resnet.state_dict().items():
        if not name.endswith("num_batches_tracked"):
            torch.testing.assert_close(tensor, state[name], rtol=0, atol=0, msg=name)
    assert tool.main(argv + ["--resume", "stem_out_channels", "8", "res2_out_channels", "8"]) == 0
    assert "had finished: nothing to do" in capsys.readouterr().out


def test_weights_from_an_image_folder_load_into_a_detector_with_their_input_settings(tmp_path):
    root = write_image_folder(tmp_path / "data")
    run = PretrainRun(
        str(tmp_path / "r50"),
        50,
        data=DataSpec("folder", str(root), input_size=32),
        recipe=Recipe(batch_size=12, max_iter=2, num_workers=0),
        resnet_options=dict(SHRUNK_BOTTLENECK),
    )
    result = pretrain(run)
    assert result.finished and [r["iter"] for r in result.records] == [1, 2]  # each epoch
    weights = read_weights(result.weights)
    assert weights.architecture["depth"] == 50 and weights.architecture["width_per_group"] == 4
    cfg = load_cfg(
        str(ROOT / "configs" / "Base-RCNN-FPN.yaml"),
        ["MODEL.WEIGHTS", result.weights, "MODEL.DEVICE", "cpu", "MODEL.RESNETS.DEPTH", "50",
         "MODEL.RESNETS.STEM_OUT_CHANNELS", "8", "MODEL.RESNETS.RES2_OUT_CHANNELS", "16",
         "MODEL.RESNETS.WIDTH_PER_GROUP", "4", "MODEL.FPN.OUT_CHANNELS", "16"],
    )  # fmt: skip
    # From the file, not the YAML: the input settings the pretraining used.
    assert cfg.INPUT.FORMAT == "BGR" and cfg.MODEL.RESNETS.STRIDE_IN_1X1 is False
    assert tuple(cfg.MODEL.PIXEL_STD) == PIXEL_STD and tuple(cfg.MODEL.PIXEL_MEAN) == PIXEL_MEAN
    model = build_model(cfg)
    checkpointer = BackbonesCheckpointer(model, cfg=cfg)
    checkpointer.load(cfg.MODEL.WEIGHTS)
    report = checkpointer.report
    assert not [g for g in report.missing if g.startswith("backbone.bottom_up")], report.missing
    assert all(report.expected_missing.values())  # FPN and heads only
    assert sorted(report.unused) == ["backbone.bottom_up.fc.bias", "backbone.bottom_up.fc.weight"]
    resnet = model.backbone.bottom_up.state_dict()
    for name, tensor in read_file(result.weights)["model"].items():
        if not name.startswith("fc.") and not name.endswith("num_batches_tracked"):
            torch.testing.assert_close(resnet[name], tensor, rtol=0, atol=0, msg=name)


def test_a_resumed_run_equals_an_uninterrupted_one(tmp_path, synthetic_root):
    # 5 iterations per epoch: the interruption and the resumption cross an epoch's end.
    recipe = dict(max_iter=8, eval_period=4, checkpoint_period=100, warmup_iters=2)
    whole = pretrain(tiny_run(tmp_path / "whole", synthetic_root, **recipe))
    first = tiny_run(tmp_path / "split", synthetic_root, **recipe)
    first.stop_at = 5
    stopped = pretrain(first)
    assert not stopped.finished and stopped.iteration == 5
    second = tiny_run(tmp_path / "split", synthetic_root, **recipe)
    second.resume = True
    resumed = pretrain(second)
    assert resumed.finished and not resumed.already_finished
    a, b = read_file(whole.weights)["model"], read_file(resumed.weights)["model"]
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)

    # The evaluations too, the training error windows included (the checkpoints keep them).
    def evaluations(result):
        return [{k: r[k] for k in EVALUATION_KEYS} for r in result.records]

    assert [r["iter"] for r in whole.records] == [4, 8]
    assert evaluations(resumed) == evaluations(whole)
    assert pretrain(second).already_finished


def test_resuming_with_another_net_is_refused(tmp_path, synthetic_root):
    from backbones.study.pretrain.run import ResumeError

    first = tiny_run(tmp_path, synthetic_root, max_iter=2)
    first.stop_at = 1
    pretrain(first)
    other = tiny_run(tmp_path, synthetic_root, max_iter=2)
    other.resume, other.resnet_options["residual"] = True, False
    with pytest.raises(ResumeError, match="resnet_options"):
        pretrain(other)


def test_resuming_a_folder_of_the_earlier_format_is_refused_and_keeps_it(tmp_path, synthetic_root):
    from backbones.study.pretrain.run import ResumeError

    run = tiny_run(tmp_path, synthetic_root, max_iter=2)
    run.resume = True
    earlier = Path(run.output_dir) / "checkpoint.pth"
    earlier.write_bytes(b"an earlier run's checkpoint")
    with pytest.raises(ResumeError, match="earlier pretraining format"):
        pretrain(run)
    assert earlier.read_bytes() == b"an earlier run's checkpoint"


def test_the_classifier_returns_a_loss_dict_and_saves_resnet_names():
    from detectron2.utils.events import EventStorage

    classifier, _ = build_classifier(18, 10, dict(SHRUNK_BASIC), label_smoothing=0.1)
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    labels = torch.tensor([0, 1, 2, 3])
    with EventStorage() as storage:
        losses = classifier((images, labels))
    assert list(losses) == ["loss_cls"] and losses["loss_cls"].requires_grad
    assert 0 <= storage.history("cls_error").latest() <= 100
    assert classifier.eval()(images).shape == (4, 10)
    # Its state dict is a weights file's: the ResNet's names, the head's fc.*; and loads back.
    state = classifier.state_dict()
    assert "stem.conv1.weight" in state and "fc.weight" in state
    assert not any(k.startswith("backbone.") for k in state)
    assert list(state) == list(classifier.backbone.state_dict()) + ["fc.weight", "fc.bias"]
    other, _ = build_classifier(18, 10, dict(SHRUNK_BASIC))
    other.load_state_dict(state)
    for name, tensor in other.state_dict().items():
        assert torch.equal(tensor, state[name]), name


def old_lr_factor(it: int, *, max_iter: int, warmup: int, schedule: str, milestones=()) -> float:
    """The learning-rate factor the pretraining had before it moved to Detectron2's schedulers:
    the schedule multiplied by a linear warmup factor from 1/1000."""
    if schedule == "cosine":
        factor = 0.5 * (1 + math.cos(math.pi * it / max_iter))
    else:
        factor = 0.1 ** sum(it >= m for m in milestones)
    if it < warmup:
        factor *= 0.001 * (1 - it / warmup) + it / warmup
    return factor


@pytest.mark.parametrize("schedule", ["cosine", "step"])
def test_the_lr_schedule_is_detectron2s_and_as_before(tmp_path, synthetic_root, schedule):
    from detectron2.solver import build_lr_scheduler

    run = tiny_run(tmp_path, synthetic_root, max_iter=200, schedule=schedule, lr=0.1)
    data = load_classification_data(run.data)
    cfg = classifier_cfg(run, data)
    assert cfg.SOLVER.LR_SCHEDULER_NAME == {"cosine": "WarmupCosineLR"}.get(
        schedule, "WarmupMultiStepLR"
    )
    assert cfg.SOLVER.WARMUP_ITERS == 10 and cfg.SOLVER.STEPS == (67, 133)  # 5%; 1/3, 2/3
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    scheduler = build_lr_scheduler(cfg, optimizer)
    new = []
    for _ in range(200):
        new.append(optimizer.param_groups[0]["lr"] / 0.1)
        optimizer.step()
        scheduler.step()
    old = [old_lr_factor(i, max_iter=200, warmup=10, schedule=schedule, milestones=(67, 133))
           for i in range(200)]  # fmt: skip
    if schedule == "step":  # the same curve
        np.testing.assert_allclose(new, old, rtol=1e-6, atol=1e-9)
        return
    # Cosine: the same after the warmup. During it Detectron2's WarmupParamScheduler ramps
    # linearly to the schedule's value at the warmup's end instead of multiplying the
    # schedule by the ramp: at most 0.25% of the base rate apart with a 5% warmup.
    np.testing.assert_allclose(new[10:], old[10:], rtol=1e-6, atol=1e-9)
    gaps = np.abs(np.subtract(new[:10], old[:10]))
    assert new[0] == pytest.approx(0.001) and 0 < gaps.max() < 2.5e-3


def test_a_diverging_run_stops_with_one_error_naming_the_last_checkpoint(
    tmp_path, synthetic_root, capsys
):
    tool = load_tool("pretrain_classifier")
    output = tmp_path / "diverged"
    argv = ["--depth", "18", "--output", str(output), "--synthetic-root", str(synthetic_root)]
    argv += ["--num-classes", "10", "--num-train", "80", "--num-val", "20", "--image-size", "32"]
    argv += ["--batch-size", "16", "--max-iter", "8", "--checkpoint-period", "1"]
    argv += ["--lr", "1e30", "--warmup-iters", "0"]
    assert tool.main(argv + ["stem_out_channels", "8", "res2_out_channels", "8"]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: training diverged at iteration ")
    saved = sorted(output.glob("model_*.pth"))
    assert saved and not (output / "model_final.pth").exists()
    assert f"The last good checkpoint is {output / (output / 'last_checkpoint').read_text()}" in (
        errors[0]
    )
    for path in saved:
        assert all(torch.isfinite(t).all() for t in read_file(path)["model"].values()), path


@pytest.mark.slow
def test_two_cpu_processes_pretrain_and_write_weights(tmp_path, synthetic_root):
    output = tmp_path / "r18"
    command = [sys.executable, str(ROOT / "tools" / "pretrain_classifier.py"), "--depth", "18"]
    command += ["--output", str(output), "--num-gpus", "2", "--synthetic-root", str(synthetic_root)]
    command += ["--num-classes", "10", "--num-train", "80", "--num-val", "20", "--image-size"]
    command += ["32", "--batch-size", "16", "--max-iter", "3", "stem_out_channels", "8"]
    command += ["res2_out_channels", "8"]
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "weights:" in proc.stdout
    path = str(output / "model_final.pth")
    assert load_weights(make_resnet(weights=path), path).missing == {}
