"""Deformable convolutions (DCNv1, modulated DCNv2) on torchvision's kernel, with Detectron2's keys
(``MODEL.RESNETS.DEFORM_ON_PER_STAGE``, ``DEFORM_MODULATED``, ``DEFORM_NUM_GROUPS``)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import BottleneckBlock as D2BottleneckBlock
from torchvision.ops import deform_conv2d

from backbones import backbones_build_resnet_fpn_backbone, make_resnet
from backbones.modeling import BottleneckBlock, DeformBottleneckBlock

from helpers import make_cfg, randomize_

OPTIONS = dict(bottleneck_channels=8, stride=2, num_groups=2, norm="BN", stride_in_1x1=False)


def pair(modulated: bool, deform_num_groups: int = 1, **options):
    """A plain and a deformable bottleneck holding the same convs and norms."""
    torch.manual_seed(0)
    options = {**OPTIONS, **options}
    plain = randomize_(BottleneckBlock(16, 32, **options)).eval()
    deform = DeformBottleneckBlock(
        16, 32, modulated=modulated, deform_num_groups=deform_num_groups, **options
    ).eval()
    missing, unexpected = deform.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and sorted(missing) == ["conv2_offset.bias", "conv2_offset.weight"]
    return plain, deform


@pytest.mark.parametrize("modulated", [False, True])
@pytest.mark.parametrize("norm", ["BN", "FrozenBN"])
def test_zero_initialised_offsets_give_the_plain_block(modulated, norm):
    """Detectron2 zero-initialises the offset conv: a DCN block starts as the plain bottleneck
    (DCNv2's mask starts at sigmoid(0) = 0.5, so only DCNv1 equals it exactly)."""
    plain, deform = pair(modulated, norm=norm)
    x = torch.randn(2, 16, 12, 12)
    with torch.no_grad():
        if modulated:
            deform.conv2.weight.mul_(2.0)  # the 0.5 mask halves the 3x3's output
        torch.testing.assert_close(deform(x), plain(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("modulated", [False, True])
@pytest.mark.parametrize("deform_num_groups", [1, 2])
def test_block_equals_a_direct_deform_conv2d(modulated, deform_num_groups):
    _, block = pair(modulated, deform_num_groups)
    with torch.no_grad():
        block.conv2_offset.weight.normal_(std=0.3)
        block.conv2_offset.bias.normal_(std=0.5)
    x = torch.randn(2, 16, 12, 12)
    with torch.no_grad():
        hidden = F.relu(block.conv1(x))
        predicted = block.conv2_offset(hidden)
        taps = 9 * deform_num_groups
        assert predicted.shape[1] == (3 if modulated else 2) * taps
        offset = predicted[:, : 2 * taps]
        mask = predicted[:, 2 * taps :].sigmoid() if modulated else None
        conv = block.conv2
        out = deform_conv2d(
            hidden, offset, conv.weight, None, conv.stride, conv.padding, conv.dilation, mask
        )
        out = block.conv3(F.relu(conv.norm(out)))
        expected = F.relu(out + block.shortcut(x))
        torch.testing.assert_close(block(x), expected, rtol=1e-4, atol=1e-5)


def test_offsets_are_dy_dx_pairs_per_tap():
    """An offset of (0, +1) at every tap samples one pixel to the right: the deformable conv
    equals the plain conv of the input shifted left by one (away from the border)."""
    torch.manual_seed(0)
    x = torch.randn(1, 4, 10, 10)
    weight = torch.randn(6, 4, 3, 3)
    offset = torch.zeros(1, 18, 10, 10)
    offset[:, 1::2] = 1.0  # dx of each of the 9 taps
    out = deform_conv2d(x, offset, weight, padding=(1, 1))
    shifted = F.conv2d(torch.roll(x, shifts=-1, dims=3), weight, padding=1)
    torch.testing.assert_close(out[..., 1:-2], shifted[..., 1:-2], rtol=1e-4, atol=1e-5)


def test_gradients_reach_the_offsets_and_torchscript_compiles():
    model = make_resnet(
        50,
        stem_out_channels=8,
        res2_out_channels=16,
        width_per_group=4,
        norm="BN",
        deform_on_per_stage=(False, True, True, True),
        deform_modulated=True,
        deform_num_groups=2,
    )
    x = torch.randn(2, 3, 64, 64)
    model(x)["res5"].square().sum().backward()
    for name in ("res3", "res4", "res5"):
        grad = getattr(model, name)[0].conv2_offset.weight.grad
        assert grad is not None and grad.abs().sum() > 0 and torch.isfinite(grad).all()
    assert isinstance(model.res2[0], BottleneckBlock)
    assert not isinstance(model.res2[0], DeformBottleneckBlock)
    model.eval()
    scripted = torch.jit.script(model)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x)["res5"], model(x)["res5"])
    assert scripted.state_dict().keys() == model.state_dict().keys()


@pytest.mark.parametrize("modulated, deform_num_groups", [(False, 1), (True, 1), (True, 4)])
def test_keys_and_shapes_are_detectron2s(modulated, deform_num_groups):
    """Detectron2's DeformBottleneckBlock (its DeformConv needs detectron2._C to be built, so its
    keys are written out here): a plain bottleneck's keys plus ``conv2_offset.{weight,bias}``
    with 18 (DCNv1) or 27 (DCNv2) channels per deformable group, the 3x3 as ``conv2.weight``
    with ``conv2.norm.*`` and no bias."""
    block = DeformBottleneckBlock(
        64,
        256,
        bottleneck_channels=64,
        stride=2,
        norm="FrozenBN",
        stride_in_1x1=True,
        modulated=modulated,
        deform_num_groups=deform_num_groups,
    )
    plain = D2BottleneckBlock(
        64, 256, bottleneck_channels=64, stride=2, norm="FrozenBN", stride_in_1x1=True
    )
    shapes = {k: tuple(v.shape) for k, v in block.state_dict().items()}
    expected = {k: tuple(v.shape) for k, v in plain.state_dict().items()}
    channels = (27 if modulated else 18) * deform_num_groups
    expected.update({"conv2_offset.weight": (channels, 64, 3, 3), "conv2_offset.bias": (channels,)})
    assert shapes == expected
    assert block.conv2_offset.stride == (1, 1)  # MSRA: the 1x1 took the stride
    assert not block.conv2_offset.weight.any() and not block.conv2_offset.bias.any()


def test_config_keys_build_deformable_stages():
    cfg = make_cfg(depth=50, norm="BN")
    cfg.MODEL.RESNETS.DEFORM_ON_PER_STAGE = [False, False, True, True]
    cfg.MODEL.RESNETS.DEFORM_MODULATED = True
    cfg.MODEL.RESNETS.DEFORM_NUM_GROUPS = 2
    model = backbones_build_resnet_fpn_backbone(cfg, ShapeSpec(channels=3))
    stages = model.bottom_up
    kinds = [type(getattr(stages, name)[0]).__name__ for name in stages.stage_names]
    assert kinds == ["BottleneckBlock", "BottleneckBlock"] + ["DeformBottleneckBlock"] * 2
    assert stages.res4[0].conv2_offset.out_channels == 54
    model(torch.randn(1, 3, 64, 64))
