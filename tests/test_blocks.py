"""``backbones.modeling.blocks``: what every block type offers (its flags are the options it
takes), and a new block type as one class plus one map entry."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from detectron2.layers import FrozenBatchNorm2d
from torch import nn

from backbones import BLOCK_TYPES, DEPTHS, STEM_TYPES, BackboneOptionError, make_resnet
from backbones.modeling import DEFORM_BLOCK_TYPES, ResidualBlock, blocks
from backbones.modeling.layers import AvgDownConvNorm, Norm, conv_norm, projection_shortcut
from backbones.specs import DepthSpec

# One value for every option a stage may pass (blocks.FLAG_KEYWORDS), each non-neutral.
STAGE_OPTIONS = dict(
    num_groups=2,
    dilation=2,
    stride_in_1x1=True,
    bottleneck_channels=4,
    avg_down=True,
    residual=True,
)
ALL_TYPES = {**BLOCK_TYPES, **{f"deform {k}": v for k, v in DEFORM_BLOCK_TYPES.items()}}


def build(cls: type[ResidualBlock], stride: int, **options) -> ResidualBlock:
    """A block as make_stages builds one: the stage options its flags declare."""
    keywords = cls.stage_keywords(**{**STAGE_OPTIONS, "dilation": 1, **options})
    return cls(8, 16, stride=stride, norm="BN", **keywords)


@pytest.mark.parametrize("kind", sorted(ALL_TYPES))
@pytest.mark.parametrize("stride", [1, 2])
def test_every_block_type_offers_the_contract(kind, stride):
    block = build(ALL_TYPES[kind], stride, num_groups=1).train()
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


@pytest.mark.parametrize("kind", sorted(ALL_TYPES))
def test_each_flag_is_the_option_the_module_takes(kind):
    """A flag set: the option reaches the module. A flag not set: its keyword is not passed
    (the block's __init__ need not know it) and ResNetSpec refuses a non-neutral value."""
    cls = ALL_TYPES[kind]
    block = build(cls, 2, dilation=2)
    convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
    assert cls.grouped == any(m.groups == 2 for m in convs)
    assert cls.dilatable == any(m.dilation == (2, 2) for m in convs)
    assert cls.strided_1x1 == (block.conv1.kernel_size == (1, 1) and block.conv1.stride == (2, 2))
    assert cls.bottleneck == any(m.out_channels == 4 for m in convs)
    assert cls.avg_down_shortcut == isinstance(block.shortcut, AvgDownConvNorm)
    if cls.optional_shortcut:
        plain = build(cls, 2, residual=False)
        assert plain.shortcut is None and not any("shortcut" in k for k in plain.state_dict())
    assert set(cls.stage_keywords(**STAGE_OPTIONS)) == {
        key for flag, key in blocks.FLAG_KEYWORDS.items() if getattr(cls, flag)
    }


def test_declared_res2_widths():
    assert BLOCK_TYPES["basic"].config_res2_out_channels == 64  # Detectron2's R18/R34 rule
    assert BLOCK_TYPES["bottleneck"].default_res2_out_channels == 256


def test_a_block_without_last_norm_says_so():
    class Incomplete(ResidualBlock):
        pass

    with pytest.raises(NotImplementedError, match="Incomplete does not declare last_norm"):
        Incomplete(4, 4, 1).last_norm


class WideBasicBlock(ResidualBlock):
    """A new block type for the test: two 3x3 convs at ``bottleneck_channels`` width (a wide
    ResNet's basic block, Zagoruyko & Komodakis, 2016), written against the base class only."""

    default_res2_out_channels = 32
    bottleneck = True  # takes bottleneck_channels

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        stride: int,
        norm: Norm,
        bottleneck_channels: int,
    ):
        super().__init__(in_channels, out_channels, stride)
        self.shortcut = projection_shortcut(in_channels, out_channels, stride, norm)
        self.conv1 = conv_norm(in_channels, bottleneck_channels, 3, stride=stride, norm=norm)
        self.conv2 = conv_norm(bottleneck_channels, out_channels, 3, norm=norm)

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
    with pytest.raises(BackboneOptionError, match=r"output_stride=8 .*no dilation.*allowed: 32"):
        make_resnet(10, output_stride=8)
    with pytest.raises(BackboneOptionError, match=r"avg_down=True .*no avg-down shortcut"):
        make_resnet(10, avg_down=True)
    with pytest.raises(BackboneOptionError, match=r"residual=False .*keep their shortcut"):
        make_resnet(10, residual=False)


def test_stems_are_a_map():
    assert set(STEM_TYPES) == {"basic", "deep"}
    assert STEM_TYPES is blocks.STEM_TYPES
    for kind, cls in STEM_TYPES.items():
        stem = cls.from_options(3, 16, width=8, norm="BN")
        assert (stem.out_channels, stem.stride) == (16, 4), kind
        assert stem(torch.randn(1, 3, 32, 32)).shape == (1, 16, 8, 8), kind
