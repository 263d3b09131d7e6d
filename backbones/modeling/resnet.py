"""The ResNet / ResNeXt backbone (He et al., 2015; Xie et al., 2017), a Detectron2 ``ResNet``."""

from __future__ import annotations

import os
from typing import Any, Sequence

import torch
from detectron2.layers import CNNBlockBase
from detectron2.modeling.backbone import ResNet as D2ResNet
from torch import nn

from ..errors import BackboneOptionError, check_choice
from ..specs import DEPTHS
from ..weights import Weights, architecture_options, load_weights, read_weights
from .blocks import BLOCK_TYPES, STEM_TYPES, ResidualBlock
from .layers import NORMS, Norm

STAGE_NAMES = ("res2", "res3", "res4", "res5")
# BACKBONES.MEMORY_FORMAT: NHWC (faster convolutions on CPU and tensor cores) or NCHW.
MEMORY_FORMATS = ("channels_last", "contiguous")
FEATURE_NAMES = ("stem",) + STAGE_NAMES

# make_resnet's architecture options that a weights file decides when the caller passes None,
# and their values without weights (Detectron2's defaults; stride in the 1x1 as for MSRA weights).
ARCHITECTURE_DEFAULTS: dict[str, Any] = dict(
    depth=50,
    in_channels=3,
    num_groups=1,
    width_per_group=64,
    stem_type="basic",
    stem_width=32,
    stem_out_channels=64,
    res2_out_channels=None,  # 64 for basic blocks, 256 for bottlenecks
    stride_in_1x1=True,
    avg_down=False,
    residual=True,
)


class ResNet(D2ResNet):
    """A stem and residual stages ``res2``..``res5``, returning the features in ``out_features``.

    A Detectron2 ``ResNet`` to every check Detectron2 code makes: ``isinstance``, ``stem``,
    ``stages`` / ``stage_names``, ``num_classes`` (None: no classifier), ``freeze()``,
    ``make_stage``; built by Detectron2's constructor, with checked options, a memory format and a
    forward that TorchScript compiles without renaming keys.

    Args:
        stem: the stem block (its ``stride`` and ``out_channels`` are read).
        stages: the blocks of each stage, res2 first; stages after the last one in
            ``out_features`` are not built into the module (they would get no gradient).
        out_features: names among ``stem``, ``res2``..``res5``.
        freeze_at: freeze the stem (1), and res2 (2), ..., res5 (5); 0 freezes nothing. Frozen
            blocks get ``requires_grad=False`` and their BatchNorms become FrozenBatchNorm2d.
        memory_format: ``"channels_last"`` or ``"contiguous"``, for weights and activations.
    """

    # TorchScript: ``stages`` is Detectron2's Python list of the stage modules (already
    # registered as res2..res5); scripting it would add ``stages.N.*`` keys.
    __jit_ignored_attributes__ = ["stages"]

    def __init__(
        self,
        stem: CNNBlockBase,
        stages: Sequence[Sequence[CNNBlockBase]],
        *,
        out_features: Sequence[str] = STAGE_NAMES,
        freeze_at: int = 0,
        memory_format: str = "channels_last",
    ):
        if not out_features:
            raise ValueError("out_features is empty; choose among " + ", ".join(FEATURE_NAMES))
        for name in out_features:
            check_choice("out_features", name, FEATURE_NAMES[: len(stages) + 1])
        check_choice("freeze_at", freeze_at, range(len(stages) + 2))
        check_choice("memory_format", memory_format, MEMORY_FORMATS)
        # Registers stem, res2.. (only up to the last stage in out_features), in that order: the
        # state-dict prefixes, and the order forward() runs the children in; then freezes.
        super().__init__(
            stem,
            [list(blocks) for blocks in stages],
            out_features=list(out_features),
            freeze_at=freeze_at,
        )
        self.memory_format = memory_format
        if memory_format == "channels_last":
            self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """
        Args:
            x: images ``(N, C, H, W)``.

        Returns:
            the features named in ``out_features``: ``stem`` (stride 4), ``res2`` (4), ``res3``
            (8), ``res4`` (16), ``res5`` (32; 16 with res5 dilation).
        """
        if x.dim() != 4:
            raise ValueError(f"ResNet takes images of shape (N, C, H, W), got {x.dim()} dims")
        if self.memory_format == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        outputs: dict[str, torch.Tensor] = {}
        # stem, res2, ...: a loop TorchScript unrolls (it cannot iterate Detectron2's list).
        for name, module in self.named_children():
            x = module(x)
            if name in self._out_features:
                outputs[name] = x
        return outputs


def make_stages(
    block_class: type[ResidualBlock],
    blocks_per_stage: Sequence[int],
    *,
    stem_out_channels: int,
    res2_out_channels: int,
    num_groups: int,
    width_per_group: int,
    stride_in_1x1: bool,
    res5_dilation: int,
    norm: Norm,
    avg_down: bool = False,
    residual: bool = True,
) -> list[list[ResidualBlock]]:
    """The blocks of res2..res5 (widths double at every stage), each from
    ``block_class.from_stage`` (Detectron2's ``ResNet.make_stage`` takes a block class too)."""
    in_channels, out_channels = stem_out_channels, res2_out_channels
    bottleneck_channels = num_groups * width_per_group
    stages = []
    for index, num_blocks in enumerate(blocks_per_stage):
        # res5 dilation replaces res5's stride (R-FCN / Deformable ConvNets convention).
        dilation = res5_dilation if index == 3 else 1
        first_stride = 1 if index == 0 or dilation > 1 else 2
        blocks: list[ResidualBlock] = []
        for block_index in range(num_blocks):
            blocks.append(
                block_class.from_stage(
                    in_channels,
                    out_channels,
                    stride=first_stride if block_index == 0 else 1,
                    dilation=dilation,
                    bottleneck_channels=bottleneck_channels,
                    num_groups=num_groups,
                    stride_in_1x1=stride_in_1x1,
                    norm=norm,
                    avg_down=avg_down,
                    residual=residual,
                )
            )
            in_channels = out_channels
        stages.append(blocks)
        out_channels *= 2
        bottleneck_channels *= 2
    return stages


def make_resnet(
    depth: int | None = None,
    *,
    in_channels: int | None = None,
    num_groups: int | None = None,
    width_per_group: int | None = None,
    stem_type: str | None = None,
    stem_width: int | None = None,
    stem_out_channels: int | None = None,
    res2_out_channels: int | None = None,
    stride_in_1x1: bool | None = None,
    res5_dilation: int = 1,
    norm: Norm = "FrozenBN",
    out_features: Sequence[str] = STAGE_NAMES,
    freeze_at: int = 0,
    memory_format: str = "channels_last",
    zero_init_residual: bool = False,
    avg_down: bool | None = None,
    residual: bool | None = None,
    weights: str | os.PathLike | Weights | None = None,
) -> ResNet:
    """Build a ResNet / ResNeXt of the given depth without any config, optionally with weights.

    The architecture options left at None take the values that ``weights`` shows (depth,
    widths, groups, deep stem, avg-down; the stride placement of its source: in the 3x3 for
    torchvision and timm, in the 1x1 for MSRA), and otherwise the defaults in
    :data:`ARCHITECTURE_DEFAULTS` (Detectron2's).

    Args:
        depth: one of ``specs.DEPTHS`` (18, 34: basic blocks; 26, 50, 101, 152, 200: bottleneck).
        in_channels: input image channels.
        num_groups, width_per_group: ResNeXt's cardinality and the 3x3 width per group in res2
            (32 and 4 for X-50-32x4d); 1 and 64 is the plain ResNet. Bottleneck depths only.
        stem_type: ``"basic"`` (one 7x7 conv, Detectron2 / torchvision) or ``"deep"`` (three
            3x3 convs ``stem.conv1..3``, ResNet-C/D, timm's ``stem_type="deep"``).
        stem_width: channels of the deep stem's first two convs (32 in timm's ResNet-D).
        stem_out_channels: channels of the stem.
        res2_out_channels: output channels of res2 (doubled at each stage); default 64 for basic
            blocks, 256 for bottlenecks.
        stride_in_1x1: put the stage stride in the first 1x1 conv (MSRA/Caffe2 weights) rather
            than in the 3x3 (torchvision weights). Bottleneck depths only.
        res5_dilation: 1, or 2 for a stride-16 res5 with dilated 3x3 convs (bottleneck only).
        norm: one of ``blocks.NORMS`` or a callable ``channels -> nn.Module``.
        out_features: features to return, among ``stem``, ``res2``..``res5``.
        freeze_at: number of leading stages to freeze (stem = 1).
        memory_format: ``"channels_last"`` (faster) or ``"contiguous"``.
        zero_init_residual: start each block as identity by zeroing its last norm's scale.
        avg_down: ResNet-D's projection shortcuts: a 2x2 average pool, then a stride-1 1x1 conv
            (timm's ``avg_down=True``); the keys stay ``resN.0.shortcut.*``.
        residual: False builds the paper's plain network (Sec. 4.1, "Plain Networks"): the same
            convs and norms, with no shortcut at all (no ``shortcut`` parameters exist).
        weights: a weights file of any source in :mod:`backbones.weights` (torchvision, timm,
            Detectron2, MSRA/FAIR Caffe2), or a :class:`~backbones.weights.Weights` already read
            (``read_weights(path, trusted=True)`` for a pickle that needs more than arrays).
            Loaded with a report in the log; a shape mismatch raises.

    Returns:
        a :class:`ResNet`; its ``output_shape()`` gives channels and strides per feature.
    """
    if weights is not None and not isinstance(weights, Weights):
        weights = read_weights(weights)
    given = dict(
        depth=depth,
        in_channels=in_channels,
        num_groups=num_groups,
        width_per_group=width_per_group,
        stem_type=stem_type,
        stem_width=stem_width,
        stem_out_channels=stem_out_channels,
        res2_out_channels=res2_out_channels,
        stride_in_1x1=stride_in_1x1,
        avg_down=avg_down,
        residual=residual,
    )
    arch = architecture_options(given, ARCHITECTURE_DEFAULTS, weights)
    depth, in_channels, num_groups = arch["depth"], arch["in_channels"], arch["num_groups"]
    width_per_group, stem_type, stem_width = (
        arch["width_per_group"],
        arch["stem_type"],
        arch["stem_width"],
    )
    stem_out_channels, res2_out_channels = arch["stem_out_channels"], arch["res2_out_channels"]
    stride_in_1x1, avg_down = arch["stride_in_1x1"], arch["avg_down"]
    residual = arch["residual"]
    check_choice("depth", depth, DEPTHS)
    if isinstance(norm, str):
        check_choice("norm", norm, NORMS)
    check_choice("res5_dilation", res5_dilation, (1, 2))
    check_choice("stem_type", stem_type, STEM_TYPES)
    check_choice("avg_down", avg_down, (False, True))
    check_choice("residual", residual, (True, False))
    if zero_init_residual and not residual:
        raise BackboneOptionError(
            "zero_init_residual",
            zero_init_residual,
            "False",
            "a plain net (residual=False) has no shortcut: zeroing a block's last scale would "
            "cut the signal",
        )
    kind = DEPTHS[depth].block
    block_class = BLOCK_TYPES[kind]
    why = f"depth {depth} uses {kind} blocks"
    if not block_class.grouped:
        check_choice("num_groups", num_groups, (1,), f"{why}, which have no grouped conv")
    if not block_class.dilatable:
        check_choice("res5_dilation", res5_dilation, (1,), f"{why}, which have no dilation")
    if res2_out_channels is None:
        res2_out_channels = block_class.default_res2_out_channels
    for option, value in (
        ("num_groups", num_groups),
        ("width_per_group", width_per_group),
        ("stem_width", stem_width),
        ("stem_out_channels", stem_out_channels),
        ("res2_out_channels", res2_out_channels),
    ):
        if not isinstance(value, int) or value < 1:
            raise BackboneOptionError(option, value, "a positive integer")
    stem = STEM_TYPES[stem_type].from_options(
        in_channels, stem_out_channels, width=stem_width, norm=norm
    )
    stages = make_stages(
        block_class,
        DEPTHS[depth].blocks_per_stage,
        stem_out_channels=stem_out_channels,
        res2_out_channels=res2_out_channels,
        num_groups=num_groups,
        width_per_group=width_per_group,
        stride_in_1x1=stride_in_1x1,
        res5_dilation=res5_dilation,
        norm=norm,
        avg_down=avg_down,
        residual=residual,
    )
    if zero_init_residual:
        for block in (block for stage in stages for block in stage):
            if isinstance(getattr(block.last_norm, "weight", None), nn.Parameter):
                nn.init.zeros_(block.last_norm.weight)
    model = ResNet(
        stem, stages, out_features=out_features, freeze_at=freeze_at, memory_format=memory_format
    )
    if weights is not None:
        load_weights(model, weights)
    return model
