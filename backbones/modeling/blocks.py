"""Residual blocks and stems of "Deep Residual Learning for Image Recognition" (He et al., 2015).

Module and parameter names match Detectron2's ``detectron2.modeling.backbone.resnet`` (``conv1``,
``conv1.norm``, ``shortcut``, ...), so its checkpoints and the MSRA/Caffe2 conversions load
unchanged.

A block type is one :class:`ResidualBlock` subclass plus one entry in :data:`BLOCK_TYPES`; a row of
``specs.DEPTHS`` names the entry. A stem is one entry in :data:`STEM_TYPES`. Context blocks
(:mod:`.plugins`) go in at the positions a block type lists in ``plugin_positions``.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from detectron2.layers import CNNBlockBase
from torch import nn
from torchvision.ops import stochastic_depth

from ..errors import BackboneOptionError
from .layers import DeformConvNorm, Norm, conv_norm, projection_shortcut
from .plugins import PluginSpec

# The flags of a block type and the keyword of its ``__init__`` each adds to those a stage passes
# (``stride`` and ``norm`` always). An option whose flag is not set is refused unless neutral
# (``ResNetSpec.validate``), but for ``stride_in_1x1`` and the width, which a block without a 1x1
# or an inner width ignores, as Detectron2's basic blocks do.
FLAG_KEYWORDS = {
    "grouped": "num_groups",  # a grouped 3x3 (ResNeXt)
    "dilatable": "dilation",  # its 3x3 convs dilate (output stride 16 or 8)
    "strided_1x1": "stride_in_1x1",  # a 1x1 before the 3x3 can take the stride (MSRA weights)
    "bottleneck": "bottleneck_channels",  # an inner width: groups x width_per_group in res2
    "avg_down_shortcut": "avg_down",  # ResNet-D's average-pool projection shortcut
    "optional_shortcut": "residual",  # residual=False: no shortcut (the paper's plain net)
}


class ResidualBlock(CNNBlockBase):
    """What a residual block offers the :class:`~backbones.modeling.resnet.ResNet` that stacks it.

    From Detectron2's ``CNNBlockBase``: ``in_channels``, ``out_channels``, ``stride``, and
    ``freeze()`` (no gradients; BatchNorm becomes FrozenBatchNorm2d), which ``freeze_at`` uses.

    A block type is its ``__init__(in_channels, out_channels, *, stride, norm, ...)``, the
    :attr:`last_norm` property (the norm of the last conv before the sum, whose scale
    ``zero_init_residual`` zeroes) and class attributes read by ``make_stages``,
    ``ResNetSpec.validate`` and the config glue: the flags of :data:`FLAG_KEYWORDS` (all False
    here), each one keyword its ``__init__`` takes, and

    * ``default_res2_out_channels``: res2's output channels when none is given (Detectron2: 64
      for basic blocks, 256 for bottlenecks);
    * ``config_res2_out_channels``: the only ``MODEL.RESNETS.RES2_OUT_CHANNELS`` a config may
      give, or None for any (Detectron2 asserts 64 for R18/R34: the default 256 is a
      bottleneck's);
    * ``plugin_positions``: the plugin positions (``specs.PLUGIN_POSITIONS``) its forward runs,
      each with the conv whose output the plugins there take; its forward applies
      ``self.after_conv1`` .. ``after_conv3`` there when they are not None (:meth:`add_plugins`
      sets them).
    """

    default_res2_out_channels = 64
    config_res2_out_channels: int | None = None
    grouped = dilatable = strided_1x1 = bottleneck = avg_down_shortcut = optional_shortcut = False
    plugin_positions: dict[str, str] = {}

    # TorchScript: build-time helpers only.
    __jit_unused_properties__ = ["last_norm"]
    __jit_ignored_attributes__ = [
        "default_res2_out_channels",
        "config_res2_out_channels",
        "plugin_positions",
        *FLAG_KEYWORDS,
    ]

    def __init__(self, in_channels: int, out_channels: int, stride: int, *, residual: bool = True):
        super().__init__(in_channels, out_channels, stride)
        self.residual = residual
        # Stochastic depth rate of the residual branch (make_stages sets it; 0: none).
        self.drop_path = 0.0
        # The plugins at each position (add_plugins): None, or a Sequential named by type.
        self.after_conv1: nn.Module | None = None
        self.after_conv2: nn.Module | None = None
        self.after_conv3: nn.Module | None = None

    @classmethod
    def stage_keywords(cls, **options: Any) -> dict[str, Any]:
        """Of a stage's ``options`` (one per keyword of :data:`FLAG_KEYWORDS`), those this
        block type's ``__init__`` takes: the keywords of the flags it sets."""
        return {key: options[key] for flag, key in FLAG_KEYWORDS.items() if getattr(cls, flag)}

    @property
    def last_norm(self) -> nn.Module:
        raise NotImplementedError(f"{type(self).__name__} does not declare last_norm")

    def add_plugins(self, specs: Sequence[PluginSpec]) -> None:
        """Build the plugins of ``specs`` at their positions, in the order given, each
        ``after_convN.<type>`` (its channels: those of the conv it follows).

        Raises:
            BackboneOptionError: a position this block type does not run.
        """
        for spec in specs:
            conv = self.plugin_positions.get(spec.position)
            if conv is None:
                raise BackboneOptionError(
                    "plugins position",
                    spec.position,
                    ", ".join(repr(p) for p in self.plugin_positions) or "none",
                    f"{type(self).__name__} has no such position (a {spec.type!r} plugin)",
                )
            if getattr(self, spec.position) is None:
                setattr(self, spec.position, nn.Sequential())
            channels = getattr(self, conv).out_channels
            getattr(self, spec.position).add_module(spec.type, spec.build(channels))

    def _add_shortcut(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``out`` plus the identity or the projection of ``x``; ``out`` alone in a plain net
        (``residual=False``: no shortcut exists). In training, stochastic depth drops ``out``
        per sample at rate ``drop_path``."""
        if not self.residual:
            return out
        out = stochastic_depth(out, self.drop_path, "row", self.training)
        out += x if self.shortcut is None else self.shortcut(x)
        return out


class BasicBlock(ResidualBlock):
    """Two 3x3 convs and a shortcut (projection when the shape changes): ResNet-18/34.

    In a dilated stage (output stride 16 or 8) both 3x3 convs dilate, as MMDetection's."""

    config_res2_out_channels = 64
    dilatable = avg_down_shortcut = optional_shortcut = True
    plugin_positions = {"after_conv1": "conv1", "after_conv2": "conv2"}

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        stride: int = 1,
        norm: Norm = "BN",
        dilation: int = 1,
        avg_down: bool = False,
        residual: bool = True,
    ):
        super().__init__(in_channels, out_channels, stride, residual=residual)
        self.shortcut = (
            projection_shortcut(
                in_channels, out_channels, stride, norm, avg_down=avg_down, dilation=dilation
            )
            if residual
            else None
        )
        self.conv1 = conv_norm(
            in_channels, out_channels, 3, stride=stride, dilation=dilation, norm=norm
        )
        self.conv2 = conv_norm(out_channels, out_channels, 3, dilation=dilation, norm=norm)

    @property
    def last_norm(self) -> nn.Module:
        return self.conv2.norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu_(self.conv1(x))
        if self.after_conv1 is not None:
            out = self.after_conv1(out)
        out = self.conv2(out)
        if self.after_conv2 is not None:
            out = self.after_conv2(out)
        return F.relu_(self._add_shortcut(out, x))


class BottleneckBlock(ResidualBlock):
    """1x1 reduce, 3x3 (grouped for ResNeXt, dilated in res5 on request), 1x1 expand."""

    default_res2_out_channels = 256
    grouped = dilatable = strided_1x1 = bottleneck = avg_down_shortcut = optional_shortcut = True
    plugin_positions = {"after_conv1": "conv1", "after_conv2": "conv2", "after_conv3": "conv3"}

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        bottleneck_channels: int,
        stride: int = 1,
        num_groups: int = 1,
        norm: Norm = "BN",
        stride_in_1x1: bool = False,
        dilation: int = 1,
        avg_down: bool = False,
        residual: bool = True,
    ):
        super().__init__(in_channels, out_channels, stride, residual=residual)
        self.shortcut = (
            projection_shortcut(
                in_channels, out_channels, stride, norm, avg_down=avg_down, dilation=dilation
            )
            if residual
            else None
        )
        # MSRA's original models stride in the first 1x1 conv; torchvision ("ResNet v1.5") and
        # FAIR's later models stride in the 3x3.
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = conv_norm(in_channels, bottleneck_channels, 1, stride=stride_1x1, norm=norm)
        self.conv2 = conv_norm(
            bottleneck_channels,
            bottleneck_channels,
            3,
            stride=stride_3x3,
            dilation=dilation,
            groups=num_groups,
            norm=norm,
        )
        self.conv3 = conv_norm(bottleneck_channels, out_channels, 1, norm=norm)

    @property
    def last_norm(self) -> nn.Module:
        return self.conv3.norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu_(self.conv1(x))
        if self.after_conv1 is not None:
            out = self.after_conv1(out)
        out = F.relu_(self.conv2(out))
        if self.after_conv2 is not None:
            out = self.after_conv2(out)
        out = self.conv3(out)
        if self.after_conv3 is not None:
            out = self.after_conv3(out)
        return F.relu_(self._add_shortcut(out, x))


class DeformBottleneckBlock(BottleneckBlock):
    """A bottleneck whose 3x3 is deformable (DCNv1, Dai et al., 2017) or modulated deformable
    (DCNv2, Zhu et al., 2019): Detectron2's ``DeformBottleneckBlock`` on torchvision's kernel.

    Names as Detectron2's, so its DCN checkpoints load: ``conv2`` (a :class:`DeformConvNorm`)
    and ``conv2_offset`` (a plain 3x3 conv with bias predicting ``2 * 9`` offsets per deformable
    group, plus 9 mask logits for DCNv2), zero-initialised as in Detectron2, so the block starts
    as the plain bottleneck. Detectron2's keys ``MODEL.RESNETS.DEFORM_ON_PER_STAGE``,
    ``DEFORM_MODULATED`` and ``DEFORM_NUM_GROUPS`` choose it.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        bottleneck_channels: int,
        stride: int = 1,
        num_groups: int = 1,
        norm: Norm = "BN",
        stride_in_1x1: bool = False,
        dilation: int = 1,
        avg_down: bool = False,
        residual: bool = True,
        modulated: bool = False,
        deform_num_groups: int = 1,
    ):
        super().__init__(
            in_channels,
            out_channels,
            bottleneck_channels=bottleneck_channels,
            stride=stride,
            num_groups=num_groups,
            norm=norm,
            stride_in_1x1=stride_in_1x1,
            dilation=dilation,
            avg_down=avg_down,
            residual=residual,
        )
        stride_3x3 = 1 if stride_in_1x1 else stride
        self.modulated = modulated
        # Offsets (dy, dx) for each of the 9 taps per deformable group, then the mask logits.
        self.num_offsets = 2 * 9 * deform_num_groups
        self.conv2_offset = nn.Conv2d(
            bottleneck_channels,
            (27 if modulated else 18) * deform_num_groups,
            kernel_size=3,
            stride=stride_3x3,
            padding=dilation,
            dilation=dilation,
        )
        nn.init.zeros_(self.conv2_offset.weight)
        nn.init.zeros_(self.conv2_offset.bias)
        conv2 = DeformConvNorm(
            bottleneck_channels,
            bottleneck_channels,
            kernel_size=3,
            stride=stride_3x3,
            padding=dilation,
            dilation=dilation,
            groups=num_groups,
            bias=False,
            norm=self.conv2.norm,
        )
        conv2.weight = self.conv2.weight  # the MSRA-initialised 3x3 of the plain bottleneck
        self.conv2 = conv2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu_(self.conv1(x))
        if self.after_conv1 is not None:
            out = self.after_conv1(out)
        offset = self.conv2_offset(out)
        if self.modulated:
            mask = offset[:, self.num_offsets :].sigmoid()
            out = self.conv2(out, offset[:, : self.num_offsets], mask)
        else:
            out = self.conv2(out, offset, None)
        out = F.relu_(out)
        if self.after_conv2 is not None:
            out = self.after_conv2(out)
        out = self.conv3(out)
        if self.after_conv3 is not None:
            out = self.after_conv3(out)
        return F.relu_(self._add_shortcut(out, x))


# Block types by the name a row of specs.DEPTHS gives.
BLOCK_TYPES: dict[str, type[ResidualBlock]] = {
    "basic": BasicBlock,
    "bottleneck": BottleneckBlock,
}
# The deformable variant of a block type, for the stages in MODEL.RESNETS.DEFORM_ON_PER_STAGE
# (Detectron2 has none for basic blocks): the same flags, and the keywords ``modulated`` and
# ``deform_num_groups`` besides.
DEFORM_BLOCK_TYPES: dict[str, type[ResidualBlock]] = {"bottleneck": DeformBottleneckBlock}


class BasicStem(CNNBlockBase):
    """7x7 stride-2 conv, ReLU, 3x3 stride-2 max-pool: stride 4."""

    def __init__(self, in_channels: int = 3, out_channels: int = 64, norm: Norm = "BN"):
        super().__init__(in_channels, out_channels, 4)
        self.in_channels = in_channels
        self.conv1 = conv_norm(in_channels, out_channels, 7, stride=2, norm=norm)

    @classmethod
    def from_options(cls, in_channels: int, out_channels: int, *, width: int, norm: Norm):
        """The stem for ``make_resnet`` (``width`` is the deep stem's: unused here)."""
        return cls(in_channels, out_channels, norm=norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu_(self.conv1(x))
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


class DeepStem(CNNBlockBase):
    """Three 3x3 convs (the first with stride 2, widths ``width``, ``width``, ``out_channels``),
    each with norm and ReLU, then a 3x3 stride-2 max-pool: stride 4. The ResNet-C/D stem of "Bag
    of Tricks for Image Classification" (He et al., 2019), as timm's ``stem_type="deep"``.
    """

    def __init__(
        self, in_channels: int = 3, out_channels: int = 64, *, width: int = 32, norm: Norm = "BN"
    ):
        super().__init__(in_channels, out_channels, 4)
        self.conv1 = conv_norm(in_channels, width, 3, stride=2, norm=norm)
        self.conv2 = conv_norm(width, width, 3, norm=norm)
        self.conv3 = conv_norm(width, out_channels, 3, norm=norm)

    @classmethod
    def from_options(cls, in_channels: int, out_channels: int, *, width: int, norm: Norm):
        """The stem for ``make_resnet``."""
        return cls(in_channels, out_channels, width=width, norm=norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu_(self.conv1(x))
        x = F.relu_(self.conv2(x))
        x = F.relu_(self.conv3(x))
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


# Stems by name (BACKBONES.STEM_TYPE): "basic": one 7x7 conv (He et al., 2015); "deep": three
# 3x3 convs (ResNet-C/D of "Bag of Tricks for Image Classification", He et al., 2019; timm's
# stem_type="deep").
STEM_TYPES: dict[str, type[CNNBlockBase]] = {"basic": BasicStem, "deep": DeepStem}
