"""Conv + norm layers of the ResNet family: Detectron2's ``Conv2d`` with frozen batch norm folded
into the convolution, its deformable counterpart, the ResNet-D avg-down shortcut, and the
projection shortcut.

Module and parameter names match Detectron2's (``weight``, ``norm``), so its checkpoints load.
"""

from __future__ import annotations

import logging
from typing import Callable, Union

import torch
import torch.distributed as dist
import torch.nn.functional as F
from detectron2.layers import Conv2d, FrozenBatchNorm2d, get_norm
from fvcore.nn import weight_init
from torch import nn
from torchvision.ops import deform_conv2d

# Norm layers accepted by name (Detectron2's `get_norm` spellings); a callable
# `channels -> nn.Module` is accepted as well.
NORMS = ("FrozenBN", "BN", "SyncBN", "naiveSyncBN", "GN")
Norm = Union[str, Callable[[int], nn.Module]]
logger = logging.getLogger(__name__)
_LOGGED_CPU_SYNC = False


class _AllReduceSum(torch.autograd.Function):
    """``dist.all_reduce`` (sum) over ``group`` whose gradient is the all-reduced gradient: every
    rank's loss depends on every rank's input through the shared statistics."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
        ctx.group = group
        x = x.clone()
        dist.all_reduce(x, group=group)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        grad = grad.clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class SyncBatchNorm(nn.SyncBatchNorm):
    """torch's ``SyncBatchNorm`` (``norm="SyncBN"``) that also synchronises CPU processes.

    torch's refuses CPU tensors in distributed training ("SyncBatchNorm expected input tensor to
    be on GPU"), so a SyncBN model could not train with ``--num-gpus N`` on CPU (gloo). On CPU
    this computes what torch's CUDA kernels do: the mean and variance over the inputs of all
    ranks (count-weighted, so unequal batch sizes are exact), the unbiased variance in the running
    statistics, and gradients through both. On GPUs, in eval mode and in one process it is
    torch's own forward. Same parameters and buffers, so checkpoints are unchanged.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if (
            input.device.type != "cpu"
            or not self.training
            or not (dist.is_available() and dist.is_initialized())
        ):
            return super().forward(input)
        group = self.process_group or dist.group.WORLD
        if dist.get_world_size(group) == 1:
            return super().forward(input)
        global _LOGGED_CPU_SYNC
        if not _LOGGED_CPU_SYNC:
            _LOGGED_CPU_SYNC = True
            logger.info(
                "SyncBN on CPU processes: statistics all-reduced over %d ranks by "
                "backbones.modeling.layers.SyncBatchNorm (torch's kernel needs GPUs)",
                dist.get_world_size(group),
            )
        return self._cpu_sync_forward(input, group)

    def _cpu_sync_forward(self, x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
        dims = [0] + list(range(2, x.dim()))
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = torch.tensor([x.numel() // max(1, x.shape[1])], dtype=x.dtype)
        # Two passes (the mean, then the centred squares): exact where E[x^2] - E[x]^2 cancels.
        totals = _AllReduceSum.apply(torch.cat([x.sum(dims), count]), group)
        total_count = totals[-1]
        mean = totals[:-1] / total_count
        centred = x - mean.reshape(shape)
        var = _AllReduceSum.apply((centred * centred).sum(dims), group) / total_count
        out = centred * torch.rsqrt(var + self.eps).reshape(shape)
        if self.weight is not None:
            out = out * self.weight.reshape(shape) + self.bias.reshape(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                if self.momentum is None:  # cumulative moving average, as torch's
                    factor = 1.0 / self.num_batches_tracked.item()
                else:
                    factor = self.momentum
                unbiased = var * total_count / (total_count - 1).clamp(min=1)
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)
        return out


def norm_layer(norm: Norm, channels: int) -> nn.Module | None:
    """Detectron2's ``get_norm(norm, channels)``, but ``"SyncBN"`` is :class:`SyncBatchNorm`,
    which also synchronises CPU processes."""
    if norm == "SyncBN":
        return SyncBatchNorm(channels)
    return get_norm(norm, channels)


class ConvNorm(Conv2d):
    """Detectron2's ``Conv2d`` (same attributes: ``weight``, ``bias``, ``norm``, ``activation``)
    that folds a ``FrozenBatchNorm2d`` into the convolution.

    Frozen BN is the per-channel affine map ``y = x * s + t`` with constant ``s`` and ``t``, so
    ``conv(x, w) * s + t == conv(x, w * s) + t``: one pass over the activations instead of two.
    With autograd on, and whenever the call is traced, scripted, compiled or exported, the fold is
    computed from the parameters in the call, so gradients for ``w`` are exact and recorded graphs
    read the current parameters; eager inference reuses the fold until a parameter changes.
    Checkpoints keep Detectron2's keys. Other norms run after the conv, as in Detectron2.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_norm_act(x, None, None)

    def _conv_norm_act(
        self, x: torch.Tensor, offset: torch.Tensor | None, mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Conv (deformable where ``offset`` is given), norm and activation."""
        if not torch.jit.is_scripting():
            if isinstance(self.norm, FrozenBatchNorm2d):
                x = self._conv_frozen_bn(x, offset, mask)
            else:
                x = self._conv_then_norm(x, offset, mask)
        elif self.norm is None:
            x = self._conv_then_norm(x, offset, mask)
        # TorchScript cannot test module classes but resolves hasattr() while scripting:
        # Detectron2's FrozenBatchNorm2d is the norm with running statistics and no momentum.
        elif hasattr(self.norm, "running_var") and not hasattr(self.norm, "momentum"):
            x = self._conv_frozen_bn(x, offset, mask)
        else:
            x = self._conv_then_norm(x, offset, mask)
        if self.activation is not None:
            x = self.activation(x)
        return x

    # The folded weights of the last call without autograd, with the tensors' versions.
    __jit_ignored_attributes__ = ["_fold_cache"]
    _fold_cache: tuple | None = None

    def _conv_frozen_bn(
        self, x: torch.Tensor, offset: torch.Tensor | None, mask: torch.Tensor | None
    ) -> torch.Tensor:
        if torch.jit.is_scripting():
            weight, shift = self._fold()
        elif self._fold_in_graph(x):
            weight, shift = self._fold()
        else:
            weight, shift = self._cached_fold()
        return self._convolve(x, weight, shift, offset, mask)

    def _convolve(
        self,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        offset: torch.Tensor | None,
        mask: torch.Tensor | None,
    ) -> torch.Tensor:
        if offset is None:
            return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)
        return deform_conv2d(
            x, offset, weight, bias, self.stride, self.padding, self.dilation, mask
        )

    def _fold_in_graph(self, x: torch.Tensor) -> bool:
        """Whether the fold must be computed from the parameters in this call: when autograd
        needs it, and whenever the call is recorded rather than run (``torch.jit.trace``, ONNX
        export, ``torch.compile`` / ``torch.export``, ``torch.fx``), so that the recorded graph
        reads the module's current parameters, never a cached tensor baked in as a constant."""
        if torch.jit.is_tracing() or torch.compiler.is_compiling() or isinstance(x, torch.fx.Proxy):
            return True
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
        updates bump a tensor's version; ``.to()`` and loading give new storage); for eager
        calls only (:meth:`_fold_in_graph` says when not). Without it,
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

    def _conv_then_norm(
        self, x: torch.Tensor, offset: torch.Tensor | None, mask: torch.Tensor | None
    ) -> torch.Tensor:
        x = self._convolve(x, self.weight, self.bias, offset, mask)
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
            in_channels,
            out_channels,
            kernel_size=1,
            bias=False,
            norm=norm_layer(norm, out_channels),
        )
        weight_init.c2_msra_fill(self)
        self.pool_stride = pool_stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool_stride == 1:
            x = F.avg_pool2d(F.pad(x, (0, 1, 0, 1)), kernel_size=2, stride=1)
        else:
            x = F.avg_pool2d(x, 2, self.pool_stride, ceil_mode=True, count_include_pad=False)
        return self._conv_norm_act(x, None, None)


class DeformConvNorm(ConvNorm):
    """A deformable convolution (Dai et al., 2017; modulated: Zhu et al., 2019, DCNv2) with its
    norm, on ``torchvision.ops.deform_conv2d`` (no compiled Detectron2 needed). Parameters as
    Detectron2's ``DeformConv`` / ``ModulatedDeformConv``: ``weight``, ``norm.*``, no bias; a
    frozen norm folds into it as into :class:`ConvNorm`.

    Called with the offsets, ``(N, 2 * groups * kh * kw, H, W)`` as ``(dy, dx)`` pairs per kernel
    tap (the layout of Detectron2's and torchvision's kernels), and for DCNv2 the modulation mask
    ``(N, groups * kh * kw, H, W)`` in [0, 1]. Its deformable groups are read from the offsets.
    """

    def forward(  # type: ignore[override]
        self, x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self._conv_norm_act(x, offset, mask)


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
        norm=norm_layer(norm, out_channels),
    )
    weight_init.c2_msra_fill(conv)
    return conv
