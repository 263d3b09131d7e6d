"""``backbones.modeling.spec``: the architecture resolved once (caller, weights file, defaults),
frozen, validated, serialisable, and kept by every model built from it."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch
import torchvision
from detectron2.layers import ShapeSpec

from backbones import (
    BackboneOptionError,
    backbones_build_resnet_backbone,
    backbones_build_resnet_fpn_backbone,
    make_resnet,
    make_resnet_fpn,
    read_weights,
)
from backbones.modeling import ARCHITECTURE_DEFAULTS, ResNetSpec
from backbones.specs import DEPTHS, DepthSpec

from helpers import make_cfg

SMALL = dict(stem_out_channels=8, res2_out_channels=16, width_per_group=4)


def test_defaults_are_detectron2s_r50_and_resolved_on_creation():
    spec = ResNetSpec()
    assert (spec.depth, spec.stage_blocks, spec.block_type) == (50, None, "bottleneck")
    assert spec.res2_out_channels == 256 and spec.stride_in_1x1 is True
    assert spec.blocks_per_stage == (3, 4, 6, 3) and spec.dilations == (1, 1, 1, 1)
    assert ResNetSpec(depth=18).res2_out_channels == 64  # the block type's width
    custom = ResNetSpec(stage_blocks=[1, 2, 3, 1], block_type="basic")
    assert custom.stage_blocks == (1, 2, 3, 1) and custom.depth is None
    assert ResNetSpec(output_stride=8).dilations == (1, 1, 2, 4)


def test_frozen_hashable_and_a_plain_dict_both_ways():
    spec = ResNetSpec(depth=101, num_groups=32, width_per_group=8, stride_in_1x1=False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.depth = 50
    assert len({spec, ResNetSpec(**spec.as_dict())}) == 1
    # JSON turns the tuples into lists: the spec comes back equal.
    assert ResNetSpec.from_dict(json.loads(json.dumps(spec.as_dict()))) == spec
    with pytest.raises(BackboneOptionError, match=r"dpeth=50 .*not a ResNetSpec field.*depth"):
        ResNetSpec.from_dict({"dpeth": 50})


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(depth=77), r"depth=77 is not supported; allowed: 18, 26, 34, 50"),
        (dict(depth=18, num_groups=32), r"num_groups=32 .*basic blocks have no grouped"),
        (dict(stage_blocks=(1, 1, 1)), r"stage_blocks=\(1, 1, 1\) .*four positive integers"),
        (dict(depth=50, block_type="basic"), r"block_type='basic' .*depth 50's blocks"),
        (dict(output_stride=4), r"output_stride=4 .*allowed: 32, 16, 8"),
        (dict(depth=34, deform_on_per_stage=(False, True, True, True)), r"no deformable"),
        (dict(in_channels=0), r"in_channels=0 .*positive integer"),
        (dict(stem_type="tiered"), r"stem_type='tiered' .*'basic', 'deep'"),
    ],
)
def test_validate_names_the_field_and_the_allowed_values(fields, message):
    with pytest.raises(BackboneOptionError, match=message):
        ResNetSpec(**fields)


def test_validate_checks_again_after_a_table_changes(monkeypatch):
    spec = ResNetSpec(depth=26)
    monkeypatch.setitem(DEPTHS, 26, DepthSpec("basic", (2, 2, 2, 2)))  # the order is kept
    with pytest.raises(BackboneOptionError, match=r"block_type='bottleneck' .*depth 26's"):
        spec.validate()


@pytest.fixture(scope="module")
def torchvision_r18(tmp_path_factory):
    """torchvision's R-18 (stride in the 3x3) as a file, and read."""
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    return read_weights(path)


def test_from_weights_takes_the_caller_then_the_file_then_the_defaults(torchvision_r18):
    assert ResNetSpec.from_weights(None) == ResNetSpec()
    from_file = ResNetSpec.from_weights(torchvision_r18)
    assert (from_file.depth, from_file.res2_out_channels) == (18, 64)
    assert from_file.stride_in_1x1 is False  # torchvision's source: stride in the 3x3
    given = ResNetSpec.from_weights(torchvision_r18, stride_in_1x1=True, stem_out_channels=None)
    assert given.stride_in_1x1 is True and given.stem_out_channels == 64
    # Architecture the file does not decide: the caller's, else the defaults.
    assert ResNetSpec.from_weights(torchvision_r18, output_stride=16).output_stride == 16
    assert "output_stride" not in ARCHITECTURE_DEFAULTS and "depth" in ARCHITECTURE_DEFAULTS


def test_a_contradicting_file_names_both_values(torchvision_r18):
    with pytest.raises(BackboneOptionError, match=r"depth=50 .*ResNet-18.*allowed: 18"):
        ResNetSpec.from_weights(torchvision_r18, depth=50)
    with pytest.raises(TypeError, match="dpeth"):
        ResNetSpec.from_weights(None, dpeth=50)


def test_res5_dilation_is_output_stride_16_and_a_contradiction_is_an_error():
    assert ResNetSpec.from_weights(None, res5_dilation=2).output_stride == 16
    assert ResNetSpec.from_weights(None, res5_dilation=2, output_stride=16).output_stride == 16
    with pytest.raises(BackboneOptionError, match=r"output_stride=8 .*res5_dilation=2"):
        ResNetSpec.from_weights(None, res5_dilation=2, output_stride=8)
    with pytest.raises(BackboneOptionError, match=r"res5_dilation=3 .*allowed: 1, 2"):
        ResNetSpec.from_weights(None, res5_dilation=3)


def test_the_model_keeps_its_spec_outside_the_state_dict_and_torchscript():
    model = make_resnet(50, norm="BN", output_stride=16, **SMALL).eval()
    assert model.spec == ResNetSpec.from_weights(None, depth=50, output_stride=16, **SMALL)
    assert copy.deepcopy(model).spec == model.spec
    assert not any("spec" in key for key in model.state_dict())
    scripted = torch.jit.script(model)
    assert scripted.state_dict().keys() == model.state_dict().keys()
    # The spec rebuilds the network: make_resnet takes its fields as keywords.
    rebuilt = make_resnet(**model.spec.as_dict(), norm="BN")
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()
    }
    assert rebuilt.spec == model.spec


def test_the_file_decides_the_spec_of_every_constructor(torchvision_r18):
    resnet = make_resnet(weights=torchvision_r18)
    fpn = make_resnet_fpn(weights=torchvision_r18, out_channels=8)
    assert resnet.spec == fpn.bottom_up.spec == ResNetSpec.from_weights(torchvision_r18)
    assert fpn.bottom_up.spec.depth == 18 and fpn.bottom_up.spec.stride_in_1x1 is False


def test_the_registered_builders_build_the_same_spec_as_make_resnet():
    cfg = make_cfg(depth=50, norm="BN", res2_out_channels=64, width_per_group=16)
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False
    cfg.BACKBONES.STEM_TYPE, cfg.BACKBONES.AVG_DOWN = "deep", True
    resnet = backbones_build_resnet_backbone(cfg, ShapeSpec(channels=3))
    fpn = backbones_build_resnet_fpn_backbone(cfg, ShapeSpec(channels=3))
    expected = make_resnet(
        50,
        norm="BN",
        res2_out_channels=64,
        width_per_group=16,
        stride_in_1x1=False,
        stem_type="deep",
        avg_down=True,
    ).spec
    assert resnet.spec == fpn.bottom_up.spec == expected


# ---------------------------------------------------------------------------------------------
# width: thinner (or wider) ResNets in one number


@pytest.mark.parametrize(
    "depth, res2, inner", [(18, 16, 64), (34, 16, 64), (50, 64, 16), (101, 64, 16)]
)
def test_width_scales_the_stem_res2_and_the_bottleneck_together(depth, res2, inner):
    model = make_resnet(depth, width=16, norm="BN", memory_format="contiguous")
    spec = model.spec  # basic blocks have no inner width: width_per_group keeps its default
    assert (spec.stem_out_channels, spec.res2_out_channels, spec.width_per_group) == (
        16,
        res2,
        inner,
    )
    assert model.output_shape()["res5"].channels == res2 * 8
    same = make_resnet(
        depth,
        norm="BN",
        stem_out_channels=16,
        res2_out_channels=res2,
        width_per_group=inner,
        memory_format="contiguous",
    )
    assert same.spec == spec
    assert model(torch.randn(1, 3, 64, 64))["res5"].shape == (1, res2 * 8, 2, 2)


@pytest.mark.parametrize("depth", [18, 50])
def test_width_64_is_the_papers_resnet(depth):
    assert make_resnet(depth, width=64, norm="BN").spec == make_resnet(depth, norm="BN").spec


def test_an_fpn_takes_the_width_too():
    fpn = make_resnet_fpn(18, width=16, norm="BN", out_channels=32)
    assert fpn.bottom_up.spec.res2_out_channels == 16
    assert fpn(torch.randn(1, 3, 64, 64))["p2"].shape == (1, 32, 16, 16)


@pytest.mark.parametrize(
    "options, reason",
    [
        (dict(depth=18, width=0), "a positive integer"),
        (dict(depth=18, width=16, stem_out_channels=8), "stem_out_channels is given too"),
        (dict(depth=50, width=16, num_groups=32), "a ResNeXt takes width_per_group"),
    ],
)
def test_width_refuses_what_it_cannot_mean(options, reason):
    with pytest.raises(BackboneOptionError, match=reason) as error:
        make_resnet(**options, norm="BN")
    assert error.value.option == "width"


def test_a_config_may_thin_a_basic_resnet_but_not_forget_its_width():
    thin = make_cfg(DEPTH=18, STEM_OUT_CHANNELS=16, RES2_OUT_CHANNELS=16)
    model = backbones_build_resnet_backbone(thin, ShapeSpec(channels=3))
    assert model.spec == make_resnet(18, width=16, norm="FrozenBN").spec
    # Detectron2's rule stays for the paper's stem: R-18 with a bottleneck's 256 is a mistake.
    forgot = make_cfg(DEPTH=18, RES2_OUT_CHANNELS=256)
    with pytest.raises(BackboneOptionError, match="MODEL.RESNETS.RES2_OUT_CHANNELS"):
        backbones_build_resnet_backbone(forgot, ShapeSpec(channels=3))
