"""Residual blocks and the stem of "Deep Residual Learning for Image Recognition" (He et al., 2015).

Module and parameter names match Detectron2's ``detectron2.modeling.backbone.resnet`` (``conv1``,
``conv1.norm``, ``shortcut``, ...), so its checkpoints and the MSRA/Caffe2 conversions load
unchanged.
"""

from __future__ import annotations

from typing import Callable, Union

import torch
import torch.nn.functional as F
from detectron2.layers import CNNBlockBase, Conv2d, FrozenBatchNorm2d, get_norm
from fvcore.nn import weight_init
from torch import nn

# Norm layers accepted by name (Detectron2's `get_norm` spellings); a callable
# `channels -> nn.Module` is accepted as well.
NORMS = ("FrozenBN", "BN", "SyncBN", "naiveSyncBN", "GN")
# "basic": one 7x7 conv (He et al., 2015); "deep": three 3x3 convs (ResNet-C/D of "Bag of Tricks
# for Image Classification", He et al., 2019; timm's stem_type="deep").
STEM_TYPES = ("basic", "deep")
Norm = Union[str, Callable[[int], nn.Module]]


class ConvNorm(Conv2d):
    """Detectron2's ``Conv2d`` (same attributes: ``weight``, ``bias``, ``norm``, ``activation``)
    that folds a ``FrozenBatchNorm2d`` into the convolution.

    Frozen BN is the per-channel affine map ``y = x * s + t`` with constant ``s`` and ``t``, so
    ``conv(x, w) * s + t == conv(x, w * s) + t``: one pass over the activations instead of two.
    The fold is recomputed from the parameters at every call, so gradients for ``w`` are exact and
    checkpoints keep Detectron2's keys. Other norms run after the conv, as in Detectron2.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_norm_act(x)

    def _conv_norm_act(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            if isinstance(self.norm, FrozenBatchNorm2d):
                x = self._conv_frozen_bn(x)
            else:
                x = self._conv_then_norm(x)
        elif self.norm is None:
            x = self._conv_then_norm(x)
        # TorchScript cannot test module classes but resolves hasattr() while scripting:
        # Detectron2's FrozenBatchNorm2d is the norm with running statistics and no momentum.
        elif hasattr(self.norm, "running_var") and not hasattr(self.norm, "momentum"):
            x = self._conv_frozen_bn(x)
        else:
            x = self._conv_then_norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x

    # The folded weights of the last call without autograd, with the tensors' versions.
    __jit_ignored_attributes__ = ["_fold_cache"]
    _fold_cache: tuple | None = None

    def _conv_frozen_bn(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            weight, shift = self._fold()
        elif self._fold_needs_grad():
            weight, shift = self._fold()
        else:
            weight, shift = self._cached_fold()
        return F.conv2d(x, weight, shift, self.stride, self.padding, self.dilation, self.groups)

    def _fold_needs_grad(self) -> bool:
        if not torch.is_grad_enabled():
            return False
        return self.weight.requires_grad or (self.bias is not None and self.bias.requires_grad)

    def _fold(self) -> tuple[torch.Tensor, torch.Tensor]:
        norm, bias = self.norm, self.bias
        scale = norm.weight * (norm.running_var + norm.eps).rsqrt()
        shift = norm.bias - norm.running_mean * scale
        if bias is not None:
            shift = shift + bias * scale
        return self.weight * scale.reshape(-1, 1, 1, 1), shift

    def _cached_fold(self) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`_fold`, computed again only when a tensor it reads has changed (in-place
        updates bump a tensor's version; ``.to()`` and loading give new storage). Without it,
        folding costs ~5 small kernels per conv at every call, which on a GPU made inference
        slower than Detectron2's separate FrozenBN (measured on an H100: 0.71x)."""
        norm = self.norm
        tensors = (self.weight, self.bias, norm.weight, norm.bias, norm.running_mean)
        key = tuple(
            (t._version, t.data_ptr(), t.dtype) if t is not None else None
            for t in tensors + (norm.running_var,)
        )
        if self._fold_cache is None or self._fold_cache[0] != key:
            with torch.no_grad():
                self._fold_cache = (key, *self._fold())
        return self._fold_cache[1], self._fold_cache[2]

    def _conv_then_norm(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(
            x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups
        )
        if self.norm is not None:
            x = self.norm(x)
        return x


class AvgDownConvNorm(ConvNorm):
    """A parameter-free 2x2 average pool, then a stride-1 :class:`ConvNorm`: the avg-down
    projection shortcut of ResNet-D ("Bag of Tricks for Image Classification", He et al., 2019,
    Fig. 2b), so that the shortcut sees every input pixel. Same keys as a plain ``ConvNorm``.

    Pooling as in timm's ``downsample_avg``: stride 2 pools with ``ceil_mode=True`` and
    ``count_include_pad=False``; in a dilated stage (stride 1) a 2x2 stride-1 pool over the input
    zero-padded by one row and column at the bottom and right (timm's ``AvgPool2dSame``).
    """

    def __init__(self, in_channels: int, out_channels: int, *, pool_stride: int, norm: Norm):
        super().__init__(
            in_channels, out_channels, kernel_size=1, bias=False, norm=get_norm(norm, out_channels)
        )
        weight_init.c2_msra_fill(self)
        self.pool_stride = pool_stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool_stride == 1:
            x = F.avg_pool2d(F.pad(x, (0, 1, 0, 1)), kernel_size=2, stride=1)
        else:
            x = F.avg_pool2d(x, 2, self.pool_stride, ceil_mode=True, count_include_pad=False)
        return self._conv_norm_act(x)


def projection_shortcut(
    in_channels: int,
    out_channels: int,
    stride: int,
    norm: Norm,
    *,
    avg_down: bool = False,
    dilation: int = 1,
) -> ConvNorm | None:
    """The 1x1 projection of a residual block whose shape changes; None for the identity.

    ``avg_down`` replaces a strided (or dilated) 1x1 conv by an average pool and a stride-1 conv
    (:class:`AvgDownConvNorm`); where neither applies it is the plain 1x1 conv, as in timm.
    """
    if in_channels == out_channels and stride == 1:
        return None
    if avg_down and (stride > 1 or dilation > 1):
        return AvgDownConvNorm(in_channels, out_channels, pool_stride=stride, norm=norm)
    return conv_norm(in_channels, out_channels, 1, stride=stride, norm=norm)


def conv_norm(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    *,
    norm: Norm,
    stride: int = 1,
    dilation: int = 1,
    groups: int = 1,
) -> Conv2d:
    """A bias-free conv with its norm layer as ``.norm``, MSRA-initialised ("same" padding)."""
    conv = ConvNorm(
        in_channels,
        out_channels,
        kernel_size=kernel_size,
        stride=stride,
        padding=dilation * (kernel_size - 1) // 2,
        dilation=dilation,
        groups=groups,
        bias=False,
        norm=get_norm(norm, out_channels),
    )
    weight_init.c2_msra_fill(conv)
    return conv


class BasicBlock(CNNBlockBase):
    """Two 3x3 convs and a shortcut (projection when the shape changes): ResNet-18/34."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        stride: int = 1,
        norm: Norm = "BN",
        avg_down: bool = False,
    ):
        super().__init__(in_channels, out_channels, stride)
        self.shortcut = projection_shortcut(
            in_channels, out_channels, stride, norm, avg_down=avg_down
        )
        self.conv1 = conv_norm(in_channels, out_channels, 3, stride=stride, norm=norm)
        self.conv2 = conv_norm(out_channels, out_channels, 3, norm=norm)

    __jit_unused_properties__ = ["last_norm"]  # TorchScript: a build-time helper only

    @property
    def last_norm(self) -> nn.Module:
        return self.conv2.norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(F.relu_(self.conv1(x)))
        out += x if self.shortcut is None else self.shortcut(x)
        return F.relu_(out)


class BottleneckBlock(CNNBlockBase):
    """1x1 reduce, 3x3 (grouped for ResNeXt, dilated in res5 on request), 1x1 expand."""

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
    ):
        super().__init__(in_channels, out_channels, stride)
        self.shortcut = projection_shortcut(
            in_channels, out_channels, stride, norm, avg_down=avg_down, dilation=dilation
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

    __jit_unused_properties__ = ["last_norm"]  # TorchScript: a build-time helper only

    @property
    def last_norm(self) -> nn.Module:
        return self.conv3.norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu_(self.conv1(x))
        out = F.relu_(self.conv2(out))
        out = self.conv3(out)
        out += x if self.shortcut is None else self.shortcut(x)
        return F.relu_(out)


class BasicStem(CNNBlockBase):
    """7x7 stride-2 conv, ReLU, 3x3 stride-2 max-pool: stride 4."""

    def __init__(self, in_channels: int = 3, out_channels: int = 64, norm: Norm = "BN"):
        super().__init__(in_channels, out_channels, 4)
        self.in_channels = in_channels
        self.conv1 = conv_norm(in_channels, out_channels, 7, stride=2, norm=norm)

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu_(self.conv1(x))
        x = F.relu_(self.conv2(x))
        x = F.relu_(self.conv3(x))
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
