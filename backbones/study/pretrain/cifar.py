"""The CIFAR-10 ResNets of He et al. (2015, Sec. 4.2): a 3x3 stem of 16 channels at stride 1,
three stages of ``n`` basic blocks with 16, 32 and 64 channels (strides 1, 2, 2), global average
pooling and a 10-way linear layer: ``6n + 2`` weighted layers (ResNet-20/32/44/56/110), with
identity shortcuts padded with zeros where the width doubles ("option A"), projections there
("option B"), or none (the plain nets).

Built from the family's own parts: :class:`~backbones.modeling.BasicBlock` stages in a
:class:`~backbones.ResNet` (stages ``res2``..``res4``, stride 4 at ``res4``) under the
pretraining's :class:`~.classifier.Classifier`, so the same trainer, checkpoints and tools take
them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from detectron2.layers import CNNBlockBase
from torch import nn

from ...errors import BackboneOptionError, check_choice
from ...modeling import BasicBlock, ResNet
from ...modeling.layers import conv_norm
from .classifier import PIXEL_MEAN, PIXEL_STD, Classifier, build_classifier, resnet_option_names

# Depth -> n, the basic blocks of each stage (Table 6: 6n + 2 layers).
CIFAR_DEPTHS = {20: 3, 32: 5, 44: 7, 56: 9, 110: 18}
# The paper's Table 6: parameters of the residual nets with option A, in millions as printed.
PAPER_PARAMS_M = {20: 0.27, 32: 0.46, 44: 0.66, 56: 0.85, 110: 1.7}
STAGE_WIDTHS = (16, 32, 64)
SHORTCUTS = ("A", "B")
# The options of a CIFAR net a pretraining's KEY VALUE pairs may set (make_cifar_resnet's).
CIFAR_OPTIONS = ("residual", "shortcut", "norm", "zero_init_residual")
# CIFAR-10's training-set statistics on 0-255 pixels, in the BGR order of the data.
CIFAR_PIXEL_MEAN = (113.87, 122.96, 125.31)
CIFAR_PIXEL_STD = (66.70, 62.09, 62.99)


class CifarStem(CNNBlockBase):
    """One 3x3 conv at stride 1 with norm and ReLU, no pooling: stride 1."""

    def __init__(self, in_channels: int = 3, out_channels: int = 16, norm: str = "BN"):
        super().__init__(in_channels, out_channels, 1)
        self.conv1 = conv_norm(in_channels, out_channels, 3, norm=norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu_(self.conv1(x))


class ZeroPadShortcut(nn.Module):
    """Option A: the identity, subsampled by ``stride`` and padded with zero channels up to
    ``out_channels``; no parameters."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        if out_channels < in_channels:
            raise ValueError(f"zero padding cannot narrow {in_channels} to {out_channels}")
        self.extra, self.stride = out_channels - in_channels, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra))  # new channels after the old ones


def cifar_stages(
    depth: int, *, residual: bool = True, shortcut: str = "A", norm: str = "BN"
) -> list[list[BasicBlock]]:
    """The three stages of ResNet-``depth`` (or its plain twin), each ``n`` basic blocks."""
    n = CIFAR_DEPTHS[depth]
    stages, in_channels = [], STAGE_WIDTHS[0]
    for index, width in enumerate(STAGE_WIDTHS):
        blocks = []
        for i in range(n):
            stride = 2 if index > 0 and i == 0 else 1
            block = BasicBlock(in_channels, width, stride=stride, norm=norm, residual=residual)
            if residual and shortcut == "A" and block.shortcut is not None:
                block.shortcut = ZeroPadShortcut(in_channels, width, stride)
            blocks.append(block)
            in_channels = width
        stages.append(blocks)
    return stages


def make_cifar_resnet(
    depth: int,
    *,
    residual: bool = True,
    shortcut: str = "A",
    num_classes: int = 10,
    norm: str = "BN",
    zero_init_residual: bool = False,
    pixel_mean: Sequence[float] = CIFAR_PIXEL_MEAN,
    pixel_std: Sequence[float] = CIFAR_PIXEL_STD,
    label_smoothing: float = 0.0,
) -> Classifier:
    """The paper's CIFAR-10 ResNet-``depth`` (or, with ``residual=False``, the plain net of
    the same layers) as a :class:`~.classifier.Classifier` on BGR 0-255 images.

    Args:
        depth: 20, 32, 44, 56 or 110 (``6n + 2``).
        residual: False for the plain net (no shortcuts; ``shortcut`` is then unused).
        shortcut: ``"A"`` (zero-padded identity where the width doubles, no extra parameters)
            or ``"B"`` (1x1 projections there).
        num_classes: the linear layer's outputs.
        norm: of every conv (``"BN"``, or ``"GN"``, ...).
        zero_init_residual: start each block as the identity (its last norm's scale zeroed;
            Goyal et al., 2017); residual nets only.

    Raises:
        BackboneOptionError: a depth, shortcut or residual value not allowed, or
            ``zero_init_residual`` for a plain net (its blocks would output zeros).
    """
    check_choice("depth", depth, CIFAR_DEPTHS, "the paper's CIFAR-10 depths, 6n + 2")
    check_choice("shortcut", shortcut, SHORTCUTS, "A: zero padding, B: projections")
    check_choice("residual", residual, (False, True))
    if not isinstance(num_classes, int) or num_classes < 1:
        raise BackboneOptionError("num_classes", num_classes, "a positive integer")
    stem = CifarStem(3, STAGE_WIDTHS[0], norm=norm)
    if zero_init_residual and not residual:
        raise BackboneOptionError(
            "zero_init_residual", True, "False", "a plain net has no residual branch to zero"
        )
    stages = cifar_stages(depth, residual=residual, shortcut=shortcut, norm=norm)
    if zero_init_residual:
        for block in (block for stage in stages for block in stage):
            nn.init.zeros_(block.last_norm.weight)
    backbone = ResNet(stem, stages, out_features=("res4",), memory_format="contiguous")
    return Classifier(
        backbone,
        num_classes,
        pixel_mean=pixel_mean,
        pixel_std=pixel_std,
        label_smoothing=label_smoothing,
        architecture={"cifar_depth": depth, "residual": residual, "shortcut": shortcut},
    )


def build_cifar_classifier(
    depth: int,
    num_classes: int,
    options: dict[str, Any] | None = None,
    *,
    label_smoothing: float = 0.0,
    pixel_mean: Sequence[float] = PIXEL_MEAN,
    pixel_std: Sequence[float] = PIXEL_STD,
) -> tuple[Classifier, dict[str, Any]]:
    """:func:`make_cifar_resnet` called as :func:`~.classifier.build_classifier` is (the
    pretraining's family ``"cifar"``): ``options`` from :data:`CIFAR_OPTIONS`.

    Returns:
        ``(classifier, architecture)``.

    Raises:
        BackboneOptionError: an option that is not one of :data:`CIFAR_OPTIONS` (named, with
            those allowed), or a value :func:`make_cifar_resnet` refuses.
    """
    options = dict(options or {})
    for key, value in options.items():
        if key not in CIFAR_OPTIONS:
            raise BackboneOptionError(
                key, value, ", ".join(CIFAR_OPTIONS), "not an option of the CIFAR ResNets"
            )
    classifier = make_cifar_resnet(
        depth,
        num_classes=num_classes,
        pixel_mean=pixel_mean,
        pixel_std=pixel_std,
        label_smoothing=label_smoothing,
        **options,
    )
    return classifier, classifier.architecture


# A pretraining's family (``PretrainRun.family``, ``CLASSIFIER.FAMILY``) -> its builder: the
# ImageNet ResNets of make_resnet, or the paper's CIFAR-10 nets.
CLASSIFIER_BUILDERS = {"imagenet": build_classifier, "cifar": build_cifar_classifier}


def family_option_names(family: str) -> tuple[str, ...]:
    """The options a pretraining's KEY VALUE pairs may set for nets of ``family``."""
    return resnet_option_names() if family == "imagenet" else CIFAR_OPTIONS
