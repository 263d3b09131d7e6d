"""``backbones.modeling.blocks``: what every block type offers, and a new block type as one class
plus one map entry."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from detectron2.layers import FrozenBatchNorm2d
from torch import nn

from backbones import BLOCK_TYPES, DEPTHS, STEM_TYPES, BackboneOptionError, make_resnet
from backbones.modeling import ResidualBlock, blocks
from backbones.modeling.layers import Norm, conv_norm, projection_shortcut
from backbones.specs import DepthSpec

STAGE_OPTIONS = dict(
    dilation=1, bottleneck_channels=4, num_groups=1, stride_in_1x1=False, norm="BN", avg_down=False
)


@pytest.mark.parametrize("kind", sorted(BLOCK_TYPES))
@pytest.mark.parametrize("stride", [1, 2])
def test_every_block_type_offers_the_contract(kind, stride):
    block = BLOCK_TYPES[kind].from_stage(8, 16, stride=stride, **STAGE_OPTIONS).train()
    assert isinstance(block, ResidualBlock)
    assert (block.in_channels, block.out_channels, block.stride) == (8, 16, stride)
    out = block(torch.randn(2, 8, 16, 16))
    assert out.shape == (2, 16, 16 // stride, 16 // stride)
    # last_norm is the norm right before the sum: zero its scale and the block is the shortcut.
    assert isinstance(block.last_norm, nn.BatchNorm2d)
    with torch.no_grad():
        block.last_norm.weight.zero_()
        block.last_norm.bias.zero_()
    expected = F.relu(block.shortcut(block_input := torch.randn(2, 8, 16, 16)))
    torch.testing.assert_close(block(block_input), expected)
    block.freeze()
    assert not any(p.requires_grad for p in block.parameters())
    assert isinstance(block.last_norm, FrozenBatchNorm2d)  # freeze() converted it in place


def test_declared_capabilities_match_the_modules():
    options = dict(STAGE_OPTIONS, num_groups=2, dilation=2, stride_in_1x1=True)
    for kind, cls in BLOCK_TYPES.items():
        if cls.grouped and cls.dilatable and cls.strided_1x1:
            block = cls.from_stage(8, 16, stride=2, **options)
            convs = [m for m in block.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
            assert convs and all(m.dilation == (2, 2) for m in convs), kind
            assert block.conv1.stride == (2, 2), kind  # the 1x1 took the stride
    assert BLOCK_TYPES["basic"].config_res2_out_channels == 64  # Detectron2's R18/R34 rule
    assert BLOCK_TYPES["bottleneck"].default_res2_out_channels == 256


def test_a_block_without_last_norm_says_so():
    class Incomplete(ResidualBlock):
        pass

    with pytest.raises(NotImplementedError, match="Incomplete does not declare last_norm"):
        Incomplete(4, 4, 1).last_norm
    with pytest.raises(NotImplementedError, match="Incomplete does not implement from_stage"):
        Incomplete.from_stage(4, 4, stride=1, **STAGE_OPTIONS)


class WideBasicBlock(ResidualBlock):
    """A new block type for the test: two 3x3 convs at ``bottleneck_channels`` width (a wide
    ResNet's basic block, Zagoruyko & Komodakis, 2016), written against the base class only."""

    default_res2_out_channels = 32

    def __init__(self, in_channels: int, out_channels: int, *, width: int, stride: int, norm: Norm):
        super().__init__(in_channels, out_channels, stride)
        self.shortcut = projection_shortcut(in_channels, out_channels, stride, norm)
        self.conv1 = conv_norm(in_channels, width, 3, stride=stride, norm=norm)
        self.conv2 = conv_norm(width, out_channels, 3, norm=norm)

    @classmethod
    def from_stage(cls, in_channels, out_channels, *, stride, bottleneck_channels, norm, **_):
        return cls(in_channels, out_channels, width=bottleneck_channels, stride=stride, norm=norm)

    @property
    def last_norm(self) -> nn.Module:
        return self.conv2.norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(F.relu_(self.conv1(x)))
        out += x if self.shortcut is None else self.shortcut(x)
        return F.relu_(out)


def test_a_new_block_type_is_one_class_and_one_entry(monkeypatch):
    # The extension point: one map entry (and a depth-table row naming it); no other code.
    monkeypatch.setitem(BLOCK_TYPES, "wide_basic", WideBasicBlock)
    monkeypatch.setitem(DEPTHS, 10, DepthSpec("wide_basic", (1, 1, 1, 1)))
    model = make_resnet(10, width_per_group=16, norm="BN", zero_init_residual=True, freeze_at=2)
    assert [type(b) for b in model.res3] == [WideBasicBlock]
    assert model.res2[0].conv1.out_channels == 16 and model.res5[0].conv1.out_channels == 128
    assert model.output_shape()["res5"].channels == 256  # 32 doubled three times
    assert not model.res4[0].last_norm.weight.detach().any()
    assert not any(p.requires_grad for p in model.res2.parameters())
    assert model(torch.randn(1, 3, 64, 64))["res5"].shape == (1, 256, 2, 2)
    # What it does not declare is refused, naming the option and the reason.
    with pytest.raises(BackboneOptionError, match=r"num_groups=2 .*wide_basic blocks"):
        make_resnet(10, num_groups=2)
    with pytest.raises(BackboneOptionError, match=r"res5_dilation=2 .*no dilation"):
        make_resnet(10, res5_dilation=2)


def test_stems_are_a_map():
    assert set(STEM_TYPES) == {"basic", "deep"}
    assert STEM_TYPES is blocks.STEM_TYPES
    for kind, cls in STEM_TYPES.items():
        stem = cls.from_options(3, 16, width=8, norm="BN")
        assert (stem.out_channels, stem.stride) == (16, 4), kind
        assert stem(torch.randn(1, 3, 32, 32)).shape == (1, 16, 8, 8), kind
