"""Every YAML under configs/ merges into a Detectron2 cfg and builds its model on CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from detectron2.modeling import build_model

from backbones import FPN, load_cfg

CONFIGS = sorted(p for p in (Path(__file__).parents[1] / "configs").glob("*.yaml"))
LEAVES = [p for p in CONFIGS if not p.name.startswith("Base-")]


def test_the_configs_users_start_from_exist():
    names = {p.stem for p in LEAVES}
    assert {"frcnn_r50", "frcnn_r101", "mrcnn_r50", "mrcnn_r101", "mrcnn_r18_shapes"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_merges_and_builds_on_cpu(path):
    cfg = load_cfg(str(path), ["MODEL.DEVICE", "cpu"])
    if path.name.startswith("Base-RCNN"):
        # The base alone has no weights: with FrozenBN and FREEZE_AT 2 that deserves a warning.
        with pytest.warns(UserWarning, match="no MODEL.WEIGHTS"):
            model = build_model(cfg)
    else:
        model = build_model(cfg)
    assert cfg.MODEL.BACKBONE.NAME.startswith("backbones_")
    assert isinstance(model.backbone, FPN)
    assert model.backbone.bottom_up.output_shape()["res5"].channels == (
        512 if cfg.MODEL.RESNETS.DEPTH < 50 else 2048
    )
    assert hasattr(model.roi_heads, "mask_head") == cfg.MODEL.MASK_ON
    assert all(p.device == torch.device("cpu") for p in model.parameters())


@pytest.mark.parametrize("path", LEAVES, ids=lambda p: p.name)
def test_leaf_configs_stay_short_and_set_weight_dependent_inputs(path):
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    assert len(lines) <= 12, f"{path.name}: leaves override a Base-*.yaml in a few lines"
    # As written: the leaf itself must set what its weights need.
    cfg = load_cfg(str(path), ["BACKBONES.INPUT_FROM_WEIGHTS", "off"])
    if cfg.MODEL.WEIGHTS.endswith(".pkl"):  # MSRA Caffe2 weights: BGR, std 1, stride in 1x1
        assert cfg.INPUT.FORMAT == "BGR" and list(cfg.MODEL.PIXEL_STD) == [1.0, 1.0, 1.0]
        assert cfg.MODEL.RESNETS.STRIDE_IN_1X1
