"""Classifier pretraining (``backbones.study.pretrain``, ``tools/pretrain_classifier.py``) and
its data (``backbones.study.data``): the weights it
writes load strictly into ``make_resnet`` and a detector config with the input settings the
pretraining used; resuming equals an uninterrupted run; bad data folders and options are errors
that name them.

Nets are shrunk (8-channel stems and res2) and data tiny (10 classes of 32 px), a few
iterations each: every test takes a few seconds on one core.
"""

from __future__ import annotations

import importlib.util
import json
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
from backbones.study.pretrain.classifier import PIXEL_MEAN, PIXEL_STD, parse_resnet_options
from backbones.study.pretrain.run import PretrainRun, Recipe
from backbones.study.pretrain.train import pretrain
from backbones.weights import load_weights, read_file

ROOT = Path(__file__).resolve().parents[1]
SHRUNK_BASIC = dict(stem_out_channels=8, res2_out_channels=8)
SHRUNK_BOTTLENECK = dict(stem_out_channels=8, res2_out_channels=16, width_per_group=4)
TINY = dict(num_classes=10, num_train=80, num_val=20, image_size=32)


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
    assert [p.name for p in folder.parent.iterdir()] == ["val-12"]  # no temporary folder left


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
    assert {"model_final.pth", "metrics.json", "training_curve.png", "checkpoint.pth"} <= files
    records = [json.loads(line) for line in (output / "metrics.json").read_text().splitlines()]
    assert [r["iter"] for r in records] == [2, 4]
    assert {"train_loss", "train_error", "val_error", "val_top5_error", "lr", "time"} <= set(
        records[0]
    )

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
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)
    # The evaluations too, the training error windows included (the times differ).
    assert [{**r, "time": 0} for r in resumed.records] == [{**r, "time": 0} for r in whole.records]
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
