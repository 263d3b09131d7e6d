"""The small-scale reproduction (``backbones.study.experiments.reproduce``,
``tools/reproduce_small.py``): its plan, and the whole pipeline at a tiny size (slow)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from test_sweep import TINY_OPTS

from backbones.study.experiments import reproduce

ROOT = Path(__file__).resolve().parents[1]


def test_plan_orders_pretraining_before_its_detectors_and_skips_what_is_done(tmp_path):
    steps = reproduce.plan(tmp_path, depths=(18, 34))
    names = [step.name for step in steps]
    assert names == [
        "pretrain R-18", "pretrain R-34", "pretrained R-18", "scratch R-18",
        "pretrained R-34", "scratch R-34", "degradation",
    ]  # fmt: skip
    pretrained = steps[2].command
    weights = str(tmp_path / "pretrain" / "r18" / "model_final.pth")
    assert pretrained[pretrained.index("MODEL.WEIGHTS") + 1] == weights
    assert "MODEL.WEIGHTS" not in steps[3].command  # from scratch: the config's own
    (tmp_path / "pretrain" / "r18").mkdir(parents=True)
    (tmp_path / "pretrain" / "r18" / "model_final.pth").write_bytes(b"")
    again = reproduce.plan(tmp_path, depths=(18, 34), scratch=False)
    assert again[0].command is None  # finished: skipped
    assert [step.name for step in again][2:4] == ["pretrained R-18", "pretrained R-34"]


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
    ]  # fmt: skip
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "datasets"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.chdir(ROOT)
    result = reproduce.reproduce_small(
        tmp_path / "out",
        depths=(18,),
        pretrain_iters=2,
        batch_size=8,
        degradation_iters=2,
        detector_max_iter=2,
        pretrain_extra=synthetic + ["--eval-period", "2"],
        degradation_extra=synthetic + ["--batch-size", "8", "--eval-period", "2"],
        detector_opts=TINY_OPTS + datasets,
    )
    assert not result.failed, [(s.name, s.output_dir / "reproduce.log") for s in result.failed]
    out = tmp_path / "out"
    assert (out / "pretrain" / "r18" / "model_final.pth").is_file()
    for ladder in ("pretrained", "scratch"):
        assert (out / ladder / "mrcnn_r18_shapes" / "model_final.pth").is_file()
        assert (out / f"report_{ladder}" / "depth_report.csv").is_file()
    log = (out / "pretrained" / "mrcnn_r18_shapes" / "reproduce.log").read_text()
    assert "unused" in log or "fc." in log  # the classifier head, reported when loading
    table = result.comparison.read_text().splitlines()
    assert table[-1].startswith("| R-18 |") and "-" not in table[-1].split("|")[2]
    assert (out / "degradation" / "curves.csv").is_file()
    # Run again: every step is finished and skipped.
    again = reproduce.plan(out, depths=(18,))
    assert all(step.command is None for step in again)
    assert os.path.isfile(out / "pretrained_vs_scratch.md")
