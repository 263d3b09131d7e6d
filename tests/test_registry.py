"""The config glue: registered names, Detectron2's key meanings, errors naming config keys."""

from __future__ import annotations

import warnings

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import BACKBONE_REGISTRY, build_backbone
from detectron2.modeling.backbone.resnet import build_resnet_backbone

from backbones import (
    BackboneOptionError,
    ResNet,
    backbones_build_resnet_backbone,
    backbones_build_resnet_fpn_backbone,
)
from backbones.modeling.layers import AvgDownConvNorm

from helpers import make_cfg, randomize_

RGB = ShapeSpec(channels=3)


def test_builders_are_registered_with_the_package_prefix():
    assert (
        BACKBONE_REGISTRY.get("backbones_build_resnet_backbone") is backbones_build_resnet_backbone
    )
    assert "backbones_build_resnet_fpn_backbone" in BACKBONE_REGISTRY
    cfg = make_cfg(depth=18, res2_out_channels=64)
    cfg.MODEL.BACKBONE.NAME = "backbones_build_resnet_backbone"
    assert isinstance(build_backbone(cfg), ResNet)


@pytest.mark.parametrize("res5_dilation", [1, 2])
def test_resnet_outputs_equal_detectron2_with_res5_dilation(res5_dilation):
    cfg = make_cfg(depth=50, res5_dilation=res5_dilation, norm="BN")
    cfg.BACKBONES.MEMORY_FORMAT = "contiguous"
    reference = randomize_(build_resnet_backbone(cfg, RGB)).eval()
    ours = backbones_build_resnet_backbone(cfg, RGB).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    assert ours.output_shape() == reference.output_shape()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected, actual = reference(x), ours(x)
    for name in expected:
        assert (actual[name] - expected[name]).abs().max() <= 1e-5


def test_freeze_at_and_input_channels_come_from_the_config():
    cfg = make_cfg(depth=18, res2_out_channels=64, norm="BN")
    cfg.MODEL.BACKBONE.FREEZE_AT = 2
    model = backbones_build_resnet_backbone(cfg, ShapeSpec(channels=1))
    assert model.stem.conv1.weight.shape[1] == 1
    assert not any(p.requires_grad for p in model.res2.parameters())
    assert all(p.requires_grad for p in model.res3.parameters())


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("DEPTH", 42, r"MODEL\.RESNETS\.DEPTH=42 is not supported; allowed: 18, 26, 34, 50"),
        ("NORM", "BatchNorm", r"MODEL\.RESNETS\.NORM='BatchNorm' .*'FrozenBN', 'BN', 'SyncBN'"),
        ("RES5_DILATION", 3, r"MODEL\.RESNETS\.RES5_DILATION=3 .*allowed: 1, 2"),
        ("OUT_FEATURES", ["res9"], r"MODEL\.RESNETS\.OUT_FEATURES='res9'"),
        ("DEFORM_ON_PER_STAGE", [False, True], r"DEFORM_ON_PER_STAGE=\[False, True\] .*four"),
        ("DEFORM_NUM_GROUPS", 0, r"MODEL\.RESNETS\.DEFORM_NUM_GROUPS=0 .*positive integer"),
    ],
)
def test_bad_config_values_name_the_key(key, value, message):
    cfg = make_cfg(depth=50)
    cfg.MODEL.RESNETS[key] = value
    with pytest.raises(BackboneOptionError, match=message):
        backbones_build_resnet_backbone(cfg, RGB)


def test_groups_with_basic_blocks_names_the_key():
    cfg = make_cfg(depth=34, res2_out_channels=64, num_groups=32)
    with pytest.raises(BackboneOptionError, match=r"MODEL\.RESNETS\.NUM_GROUPS=32 .*basic"):
        backbones_build_resnet_backbone(cfg, RGB)


def test_basic_blocks_need_res2_width_64_as_in_detectron2():
    cfg = make_cfg(depth=18)  # RES2_OUT_CHANNELS keeps Detectron2's default 256
    with pytest.raises(BackboneOptionError, match=r"RES2_OUT_CHANNELS=256 .*depth 18.*allowed: 64"):
        backbones_build_resnet_backbone(cfg, RGB)


def test_resnet_d_keys_come_from_the_config():
    cfg = make_cfg(depth=50, norm="BN")
    cfg.BACKBONES.STEM_TYPE, cfg.BACKBONES.STEM_WIDTH, cfg.BACKBONES.AVG_DOWN = "deep", 16, True
    model = backbones_build_resnet_backbone(cfg, RGB)
    assert model.stem.conv1.out_channels == model.stem.conv2.out_channels == 16
    assert model.stem.conv3.out_channels == cfg.MODEL.RESNETS.STEM_OUT_CHANNELS
    assert isinstance(model.res4[0].shortcut, AvgDownConvNorm)
    fpn = backbones_build_resnet_fpn_backbone(cfg, RGB)
    assert isinstance(fpn.bottom_up.res4[0].shortcut, AvgDownConvNorm)
    assert fpn.bottom_up.stem.conv2.out_channels == 16


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("STEM_TYPE", "tiered", r"BACKBONES\.STEM_TYPE='tiered' .*allowed: 'basic', 'deep'"),
        ("STEM_WIDTH", 0, r"BACKBONES\.STEM_WIDTH=0 .*positive integer"),
        ("AVG_DOWN", "yes", r"BACKBONES\.AVG_DOWN='yes' .*allowed: False, True"),
    ],
)
def test_bad_resnet_d_values_name_the_key(key, value, message):
    cfg = make_cfg(depth=50)
    cfg.BACKBONES[key] = value
    with pytest.raises(BackboneOptionError, match=message):
        backbones_build_resnet_backbone(cfg, RGB)


def test_memory_format_key_is_checked():
    cfg = make_cfg(depth=50)
    cfg.BACKBONES.MEMORY_FORMAT = "NHWC"
    with pytest.raises(BackboneOptionError, match=r"BACKBONES\.MEMORY_FORMAT='NHWC'"):
        backbones_build_resnet_backbone(cfg, RGB)


def test_frozen_bn_without_weights_warns():
    cfg = make_cfg(depth=18, res2_out_channels=64)
    cfg.MODEL.WEIGHTS = ""
    with pytest.warns(UserWarning, match="FrozenBN.*no MODEL.WEIGHTS.*diverges"):
        backbones_build_resnet_backbone(cfg, RGB)
    cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.BACKBONE.FREEZE_AT = 2
    with pytest.warns(UserWarning, match="FREEZE_AT=2 with no MODEL.WEIGHTS"):
        backbones_build_resnet_backbone(cfg, RGB)
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        backbones_build_resnet_backbone(cfg, RGB)


def test_config_without_our_node_says_what_to_call():
    cfg = get_cfg()
    with pytest.raises(KeyError, match="add_backbones_config"):
        backbones_build_resnet_backbone(cfg, RGB)
