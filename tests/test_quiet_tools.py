"""The tools as a user runs them (fresh processes, Python's default warning filters): no
third-party deprecation notice on stderr (``backbones.quiet.THIRD_PARTY_WARNINGS``), while
the package's own warnings still show. The tests themselves see every warning (pytest.ini)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from backbones.quiet import THIRD_PARTY_WARNINGS

ROOT = Path(__file__).resolve().parents[1]
# What the notices say, besides THIRD_PARTY_WARNINGS' own patterns.
NOISE = ("is deprecated", "torch.meshgrid", "pkg_resources")
# make_resnet's own UserWarning for FrozenBN without weights (backbones/modeling/constructors.py).
OWN_WARNING = "UserWarning: make_resnet: norm='FrozenBN' with no weights"


def _coco_files(folder: Path) -> list[str]:
    """A two-image ground truth and three results, boxes and polygons."""
    square = [[5.0, 5.0, 25.0, 5.0, 25.0, 25.0, 5.0, 25.0]]
    gt = {
        "images": [{"id": i, "height": 40, "width": 60, "file_name": f"{i}.png"} for i in (1, 2)],
        "annotations": [
            {"id": i, "image_id": i, "category_id": 1, "bbox": [5, 5, 20, 20], "area": 400.0}
            | {"iscrowd": 0, "segmentation": square}
            for i in (1, 2)
        ],
        "categories": [{"id": 1, "name": "square"}],
    }
    results = [
        {"image_id": 1, "category_id": 1, "bbox": [5, 5, 20, 20], "score": 0.9},
        {"image_id": 2, "category_id": 1, "bbox": [6, 6, 20, 20], "score": 0.7},
        {"image_id": 2, "category_id": 1, "bbox": [30, 10, 10, 10], "score": 0.2},
    ]
    for r in results:
        x, y, w, h = r["bbox"]
        r["segmentation"] = [[x, y, x + w, y, x + w, y + h, x, y + h]]
    (folder / "gt.json").write_text(json.dumps(gt))
    (folder / "dt.json").write_text(json.dumps(results))
    return ["--gt", str(folder / "gt.json"), "--dt", str(folder / "dt.json")]


# Each tool on a tiny input, a few seconds each: the import-time notices (fvcore), TorchScript's
# (export), Detectron2's anchors (a detector's FLOPs), pycocotools and faster-coco-eval (COCO),
# and DistributedDataParallel's in the two processes a pretraining starts (--num-gpus 2).
TOOLS = {
    "export_backbone": lambda tmp: [
        "--depth", "18", "--set", "stem_out_channels=8", "--set", "res2_out_channels=8",
        "--size", "64", "64", "--output", str(tmp / "r18.pt"),
    ],
    "analyze_model": lambda tmp: [
        "--config-file", str(ROOT / "configs" / "mrcnn_r18_shapes.yaml"), "--size", "64", "64",
    ],
    "coco_eval": lambda tmp: _coco_files(tmp) + ["--iou-type", "bbox", "segm"],
    "pretrain_classifier": lambda tmp: [
        "--depth", "18", "--output", str(tmp / "r18"), "--num-gpus", "2",
        "--synthetic-root", str(tmp / "synthetic"), "--num-classes", "10", "--num-train", "80",
        "--num-val", "20", "--image-size", "32", "--batch-size", "16", "--max-iter", "3",
        "stem_out_channels", "8", "res2_out_channels", "8",
    ],
}  # fmt: skip


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, subprocess.CompletedProcess]:
    """Each tool of TOOLS run once, as a user runs it."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    done = {}
    for tool, arguments in TOOLS.items():
        tmp = tmp_path_factory.mktemp(tool)
        command = [sys.executable, str(ROOT / "tools" / f"{tool}.py"), *arguments(tmp)]
        done[tool] = subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
        )
    return done


@pytest.mark.parametrize("tool", sorted(TOOLS))
def test_no_third_party_deprecation_notices(runs, tool):
    proc = runs[tool]
    assert proc.returncode == 0, proc.stderr[-3000:]
    for pattern, _ in THIRD_PARTY_WARNINGS:
        assert not re.search(pattern, proc.stderr), proc.stderr[-3000:]
    for text in NOISE:
        assert text not in proc.stderr, proc.stderr[-3000:]


def test_our_own_warnings_still_show(runs):
    assert OWN_WARNING in runs["export_backbone"].stderr
