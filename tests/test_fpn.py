"""Our ResNet-FPN against Detectron2's built-in ``build_resnet_fpn_backbone``: names and outputs."""

from __future__ import annotations

import copy

import pytest
import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import fpn as detectron2_fpn
from detectron2.modeling.backbone.fpn import build_resnet_fpn_backbone

import backbones
from backbones import BackboneOptionError, backbones_build_resnet_fpn_backbone, make_resnet_fpn

from helpers import make_cfg, randomize_

# Settings named by the foundation issue; widths shrunk where the topology is what is tested.
CASES = {
    "R18": dict(depth=18, res2_out_channels=64),
    "R50": dict(depth=50),
    "R101": dict(depth=101, stem_out_channels=16, res2_out_channels=64, width_per_group=16),
    "X50-32x4d": dict(depth=50, num_groups=32, width_per_group=4),
    "R50-GN": dict(depth=50, norm="GN"),
    "R50-BN": dict(depth=50, norm="BN"),
    "R50-stride-in-3x3": dict(depth=50, stride_in_1x1=False),
}


def build_pair(memory_format: str, fpn_norm: str = "", **resnets):
    cfg = make_cfg(**resnets)
    cfg.BACKBONES.MEMORY_FORMAT = memory_format
    cfg.MODEL.FPN.NORM = fpn_norm
    reference = randomize_(build_resnet_fpn_backbone(cfg, ShapeSpec(channels=3))).eval()
    ours = backbones_build_resnet_fpn_backbone(cfg, ShapeSpec(channels=3)).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference, ours


def assert_close_to_scale(actual, expected, tol: float) -> None:
    """max |actual - expected| <= tol * max(1, max |expected|): float rounding grows with the
    magnitude of what is computed, so deep nets are compared relative to their output scale."""
    scale = max(1.0, expected.abs().max().item())
    diff = (actual - expected).abs().max().item()
    assert diff <= tol * scale, f"max abs diff {diff:.2e} > {tol:.0e} x scale {scale:.1f}"


def max_diffs(reference, ours, dtype=torch.float32) -> dict[str, float]:
    x = torch.randn(2, 3, 96, 128, generator=torch.Generator().manual_seed(0), dtype=dtype)
    with torch.no_grad():
        expected, actual = reference.to(dtype)(x), ours.to(dtype)(x)
    assert list(actual) == list(expected) == ["p2", "p3", "p4", "p5", "p6"]
    return {name: (actual[name] - expected[name]).abs().max().item() for name in expected}


@pytest.mark.parametrize("memory_format", ["contiguous", "channels_last"])
@pytest.mark.parametrize("case", CASES)
def test_outputs_equal_detectron2_in_float64(case, memory_format):
    """Equal networks: float64 leaves only rounding (measured <= 2e-13 for every case)."""
    reference, ours = build_pair(memory_format, **CASES[case])
    diffs = max_diffs(reference, ours, torch.float64)
    assert max(diffs.values()) <= 1e-10, diffs


@pytest.mark.parametrize("case", CASES)
def test_outputs_equal_detectron2_in_float32(case):
    """In float32 our fast paths (FrozenBN folded into the conv, channels-last kernels) round
    differently from Detectron2, so both are held against the float64 truth (Detectron2's model
    in float64). Measured here, relative to the output scale: Detectron2's own float32 error
    0.3-2.5e-6, ours 1.1-5.8e-6 (GN highest: channels-last GroupNorm sums in another order, and
    the order depends on the CPU and thread count). Bound: 5e-5, a wrong network is off by ~1."""
    reference, ours = build_pair("channels_last", **CASES[case])
    x = torch.randn(2, 3, 96, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        actual = ours(x)
        truth = copy.deepcopy(reference).double()(x.double())
    for name in truth:
        assert_close_to_scale(actual[name].double(), truth[name], 5e-5)


def test_without_fast_paths_outputs_are_bit_identical():
    reference, ours = build_pair("contiguous", **CASES["R50-BN"])
    assert max(max_diffs(reference, ours).values()) == 0.0


@pytest.mark.parametrize("case", ["R18", "R50", "R50-BN"])
def test_gradients_equal_detectron2(case):
    """Training parity: folding FrozenBN into the conv keeps the conv weights' gradients."""
    reference, ours = build_pair("channels_last", **CASES[case])
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for model in (reference.double().train(), ours.double().train()):
        sum((f * f).mean() for f in model(x).values()).backward()
    expected = dict(reference.named_parameters())
    for name, param in ours.named_parameters():
        assert_close_to_scale(param.grad, expected[name].grad, 1e-9)


def test_fpn_norm_and_names_load_into_detectron2_strictly():
    reference, ours = build_pair("contiguous", fpn_norm="GN", depth=50, norm="GN")
    reference.load_state_dict(ours.state_dict(), strict=True)
    assert "fpn_lateral2.norm.weight" in ours.state_dict()
    assert "bottom_up.res2.0.shortcut.norm.weight" in ours.state_dict()
    assert max(max_diffs(reference, ours).values()) <= 1e-5


@pytest.mark.parametrize("depth", [18, 50])
def test_output_shape_matches_tensors(depth):
    model = make_resnet_fpn(depth, out_channels=32, norm="BN").eval()
    with torch.no_grad():
        outputs = model(torch.zeros(1, 3, 128, 64))
    for name, spec in model.output_shape().items():
        assert outputs[name].shape == (1, spec.channels, 128 // spec.stride, 64 // spec.stride)
    assert model.size_divisibility == 32


def test_fpn_on_res3_to_res5_adds_p6_from_p5():
    model = make_resnet_fpn(18, in_features=("res3", "res4", "res5"), out_channels=16).eval()
    assert {k: v.stride for k, v in model.output_shape().items()} == {
        "p3": 8,
        "p4": 16,
        "p5": 32,
        "p6": 64,
    }
    with torch.no_grad():
        outputs = model(torch.zeros(1, 3, 64, 64))
    assert torch.equal(outputs["p6"], outputs["p5"][:, :, ::2, ::2])


def test_bad_fpn_options_name_the_option():
    with pytest.raises(BackboneOptionError, match="fuse_type='max'.*'sum', 'avg'"):
        make_resnet_fpn(18, fuse_type="max")
    with pytest.raises(BackboneOptionError, match="in_features.*strides double"):
        make_resnet_fpn(18, in_features=("res2", "res4"))
    with pytest.raises(TypeError, match="dpeth"):
        make_resnet_fpn(dpeth=50)


@pytest.mark.parametrize(
    "kind, options, in_channels",
    [
        ("LastLevelMaxPool", {}, 8),
        ("LastLevelP6P7", dict(in_channels=16, out_channels=8), 16),
        ("LastLevelP6P7", dict(in_channels=8, out_channels=8, in_feature="p5"), 8),
    ],
)
def test_top_blocks_equal_detectron2s(kind, options, in_channels):
    """Our top blocks equal Detectron2's: names, attributes, initialisation and forward, so
    R-CNN and RetinaNet checkpoints load both ways."""
    torch.manual_seed(0)
    theirs = getattr(detectron2_fpn, kind)(**options)
    torch.manual_seed(0)
    ours = getattr(backbones, kind)(**options)
    assert (ours.num_levels, ours.in_feature) == (theirs.num_levels, theirs.in_feature)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for name, tensor in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[name], tensor), name
    x = torch.randn(2, in_channels, 9, 12)
    with torch.no_grad():
        for a, b in zip(ours(x), theirs(x), strict=True):
            assert torch.equal(a, b)


def test_max_pool_top_block_takes_the_level_it_pools():
    """Detectron2's always pools p5; an FPN on res2..res4 has p4 last, and its P5 pools it."""
    assert backbones.LastLevelMaxPool("p4").in_feature == "p4"
    model = make_resnet_fpn(18, in_features=("res2", "res3", "res4"), out_channels=8, norm="BN")
    assert model.top_block.in_feature == "p4"
    with torch.no_grad():
        outputs = model(torch.zeros(1, 3, 64, 64))
    assert list(outputs) == ["p2", "p3", "p4", "p5"]
    assert torch.equal(outputs["p5"], outputs["p4"][:, :, ::2, ::2])
