"""The small-scale reproduction (``backbones.study.experiments.reproduce``,
``tools/reproduce_small.py``) and its pretrained-vs-scratch report
(``backbones.study.report.transfer``): the plan, the small training set, the tables at a tiny
size, and the whole pipeline end to end (slow)."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
from test_sweep import TINY_OPTS

from backbones.study.experiments import reproduce
from backbones.study.report.transfer import write_transfer_report

ROOT = Path(__file__).resolve().parents[1]


def option(command, key):
    return command[len(command) - 1 - command[::-1].index(key) + 1]


def test_plan_pretrains_first_then_both_arms_of_each_seed_and_depth(tmp_path):
    steps = reproduce.plan(
        tmp_path, reproduce.Settings(depths=(18, 50), seeds=2, train_images=None)
    )
    assert [step.name for step in steps] == ["degradation"] + [
        f"{arm} R-{depth} seed {seed}"
        for seed in (0, 1)
        for depth in (18, 50)
        for arm in ("pretrained", "scratch")
    ]
    degradation = steps[0].command
    assert option(degradation, "--seeds") == "2" and option(degradation, "--width") == "16"
    pretrained, scratch = steps[5].command, steps[6].command  # R-18, seed 1
    weights = tmp_path / "degradation" / "resnet-18" / "seed1" / "model_final.pth"
    assert steps[5].weights == weights and option(pretrained, "MODEL.WEIGHTS") == str(weights)
    assert "MODEL.WEIGHTS" not in scratch  # from scratch: the config's own (none)
    for command in (pretrained, scratch):
        assert option(command, "SEED") == "1"
        assert option(command, "MODEL.RESNETS.STEM_OUT_CHANNELS") == "16"
        assert option(command, "MODEL.RESNETS.RES2_OUT_CHANNELS") == "16"
        assert option(command, "SOLVER.MAX_ITER") == str(reproduce.DETECTOR_ITERS)
    # The same input normalisation for both arms: only the start differs.
    assert option(pretrained, "MODEL.PIXEL_STD") == option(scratch, "MODEL.PIXEL_STD")
    bottleneck = steps[7].command  # pretrained R-50, seed 1: res2 is 4x the width
    assert option(bottleneck, "MODEL.RESNETS.RES2_OUT_CHANNELS") == "64"
    assert option(bottleneck, "MODEL.RESNETS.WIDTH_PER_GROUP") == "16"


def test_a_finished_run_is_skipped(tmp_path):
    tiny = reproduce.Settings(depths=(18, 34), seeds=1, train_images=None)
    steps = reproduce.plan(tmp_path, tiny)
    run = steps[1].output_dir
    run.mkdir(parents=True)
    (run / "model_final.pth").write_bytes(b"")
    again = reproduce.plan(tmp_path, tiny)
    assert again[1].command is None and again[2].command is not None


def test_the_small_training_set_is_the_first_images_and_their_annotations(tmp_path):
    from backbones.data import generate_shapes

    json_file, _ = generate_shapes(tmp_path, "train", num_images=5)
    subset = reproduce.write_subset(json_file, 3, tmp_path / "subset.json")
    coco = json.loads(subset.read_text())
    assert [image["id"] for image in coco["images"]] == [1, 2, 3]
    whole = json.loads(Path(json_file).read_text())
    assert coco["annotations"] == [a for a in whole["annotations"] if a["image_id"] <= 3]
    assert coco["categories"] == whole["categories"]
    with pytest.raises(ValueError, match="holds 5 images, fewer than the 6"):
        reproduce.write_subset(json_file, 6, tmp_path / "more.json")


def write_detector(root: Path, arm: str, seed: int, depth: int, box: float, mask: float):
    run = root / "detection" / arm / f"seed{seed}" / f"mrcnn_r{depth}_shapes"
    run.mkdir(parents=True)
    records = [
        {"iteration": 9, "total_loss": 1.0},
        {"iteration": 10, "bbox/AP": box, "segm/AP": mask},  # Detectron2's final evaluation
    ]
    (run / "metrics.json").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_the_transfer_table_has_mean_std_and_the_difference_per_depth(tmp_path):
    for seed, (a, b) in enumerate([(30.0, 20.0), (34.0, 22.0)]):
        write_detector(tmp_path, "pretrained", seed, 18, a, a - 5)
        write_detector(tmp_path, "scratch", seed, 18, b, b - 5)
    write_detector(tmp_path, "pretrained", 0, 34, 40.0, 35.0)  # one run of R-34 only
    curve = tmp_path / "degradation" / "resnet-18" / "seed0"
    curve.mkdir(parents=True)
    (curve / "metrics.json").write_text(json.dumps({"iteration": 99, "val_error": 42.5}) + "\n")
    table = write_transfer_report(tmp_path, (18, 34), seeds=2).read_text()
    row18 = next(line for line in table.splitlines() if line.startswith("| R-18 |"))
    assert row18 == (
        "| R-18 | 42.5 ± 0.0 (1) | 32.0 ± 2.8 (2) | 21.0 ± 1.4 (2) | +11.0 "
        "| 27.0 ± 2.8 (2) | 16.0 ± 1.4 (2) | +11.0 |"
    )
    assert "| R-34 | - | 40.0 ± 0.0 (1) | - | - |" in table
    with open(tmp_path / "pretrained_vs_scratch.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8 and rows[0]["bbox/AP"] == "30.000" and rows[0]["iterations"] == "10"
    assert rows[-1]["bbox/AP"] == ""  # never run: an empty cell, not a zero
    assert (tmp_path / "pretrained_vs_scratch.png").stat().st_size > 10_000


@pytest.mark.slow
def test_reproduction_end_to_end_at_a_tiny_size(tmp_path, monkeypatch):
    from backbones.data import generate_shapes

    data = {
        f"tiny_shapes_{split}": list(map(str, generate_shapes(tmp_path, split, num_images=n)))
        for split, n in (("train", 4), ("val", 2))
    }
    datasets = ["BACKBONES.COCO_DATASETS", repr([[name, *files] for name, files in data.items()])]
    synthetic = [
        "--synthetic-root", str(tmp_path / "synthetic"), "--num-classes", "4",
        "--num-train", "32", "--num-val", "16", "--image-size", "32",
        "--batch-size", "8", "--eval-period", "2",
    ]  # fmt: skip
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "datasets"))
    monkeypatch.chdir(ROOT)
    settings = reproduce.Settings(
        depths=(18, 34),
        seeds=1,
        width=8,
        pretrain_iters=2,
        train_images=None,
        detector_iters=2,
        jobs=2,
        degradation_extra=synthetic,
        detector_opts=TINY_OPTS + datasets,
    )
    result = reproduce.reproduce_small(tmp_path / "out", settings)
    assert not result.failed, [(s.name, s.output_dir / "reproduce.log") for s in result.failed]
    out = tmp_path / "out"
    assert (out / "degradation" / "resnet-34" / "seed0" / "model_final.pth").is_file()
    for arm in ("pretrained", "scratch"):
        assert (
            out / "detection" / arm / "seed0" / "mrcnn_r34_shapes" / "model_final.pth"
        ).is_file()
        assert (out / f"report_{arm}" / "depth_report.csv").is_file()
    log = out / "detection" / "pretrained" / "seed0" / "mrcnn_r18_shapes" / "reproduce.log"
    assert "unused" in log.read_text() or "fc." in log.read_text()  # the classifier head
    table = result.comparison.read_text().splitlines()
    assert table[-1].startswith("| R-34 |") and "- |" not in table[-1]
    assert (out / "degradation" / "curves.csv").is_file()
    # Run again: every step is finished and skipped.
    again = reproduce.plan(out, settings)
    assert all(step.command is None for step in again)
    assert os.path.isfile(out / "pretrained_vs_scratch.md")


def test_make_reproduce_gpu_is_the_same_pipeline_wider_and_longer_on_cuda():
    """The Makefile's reproduce-gpu command (not run here: no GPU) parses to the settings its
    comment and docs/pretraining.md state."""
    import importlib.util
    import shlex
    import subprocess

    dry = subprocess.run(
        ["make", "-n", "reproduce-gpu", "READY="], cwd=ROOT, capture_output=True, text=True
    )
    command = dry.stdout.replace("\\\n", " ")  # make -n keeps the continuation lines
    (line,) = [line for line in command.splitlines() if "reproduce_small.py" in line]
    argv = shlex.split(line)[2:]  # after PYTHON tools/reproduce_small.py
    spec = importlib.util.spec_from_file_location("rs", ROOT / "tools" / "reproduce_small.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    args, settings = tool.parse_args(argv)
    assert args.output_root == "output/reproduce_gpu"
    assert (settings.width, settings.pretrain_iters, settings.train_images) == (32, 6000, 300)
    assert (settings.detector_iters, settings.jobs, settings.seeds) == (1500, 4, 3)
    assert list(settings.detector_opts) == ["MODEL.DEVICE", "cuda"]
