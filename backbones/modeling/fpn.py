"""Feature Pyramid Network over a bottom-up backbone (Lin et al., 2017, "Feature Pyramid Networks"),
with Detectron2's top blocks of Faster/Mask R-CNN (P6 by max-pool) and RetinaNet (P6, P7 by
strided convs; Lin et al., 2017, "Focal Loss for Dense Object Detection").

Module names match Detectron2's ``FPN`` (``fpn_lateral{s}``, ``fpn_output{s}``, ``bottom_up``,
``top_block``, ``top_block.p6``, ``top_block.p7``) so that its checkpoints load unchanged.
"""

from __future__ import annotations

import math
import os
from typing import Sequence

import torch
import torch.nn.functional as F
from detectron2.modeling.backbone import FPN as D2FPN
from detectron2.modeling.backbone import Backbone
from detectron2.modeling.backbone.fpn import LastLevelMaxPool as D2LastLevelMaxPool
from detectron2.modeling.backbone.fpn import LastLevelP6P7
from fvcore.nn import weight_init
from torch import nn

from ..errors import BackboneOptionError, check_choice
from ..weights import Weights, load_weights, read_weights
from .constructors import build_resnet, warn_untrained
from .layers import NORMS, ConvNorm, norm_layer
from .resnet import STAGE_NAMES, ResNet
from .spec import SPEC_FIELDS, ResNetSpec

FUSE_TYPES = ("sum", "avg")
# make_resnet_fpn(top_block=...): "maxpool" (Faster/Mask R-CNN: P6), "p6p7" (RetinaNet: P6, P7).
TOP_BLOCKS = ("maxpool", "p6p7", None)


class LastLevelMaxPool(D2LastLevelMaxPool):
    """P6 from the last output (e.g. P5) by stride-2 subsampling, as in the FPN paper:
    Detectron2's, which always pools ``p5``; this one takes the level it pools, so that an FPN
    without res5 (``in_features`` up to ``res4``) gets its next level from ``p4``."""

    def __init__(self, in_feature: str = "p5"):
        super().__init__()
        self.in_feature = in_feature


class FPN(D2FPN):
    """Top-down pathway with lateral 1x1 and output 3x3 convs, plus an optional top block.

    A Detectron2 ``FPN`` to every check Detectron2 code makes: ``isinstance``, ``bottom_up``,
    ``in_features``, ``lateral_convs`` / ``output_convs`` (coarsest level first, as Detectron2
    orders them), ``top_block``, ``_fuse_type``, ``size_divisibility``, ``padding_constraints``.
    Its convs fold a frozen norm (:class:`ConvNorm`), its inputs are checked with named errors,
    and its forward is unrolled so TorchScript compiles it without renaming keys.

    Args:
        bottom_up: a backbone whose outputs include ``in_features``.
        in_features: contiguous input features, high to low resolution (``res2``..``res5``).
        out_channels: channels of every output level.
        norm: ``""`` (convs with bias, the paper's FPN) or a norm name (bias-free convs).
        top_block: extra coarser levels computed from its ``in_feature`` (``LastLevelMaxPool``,
            ``LastLevelP6P7``), a bottom-up feature or an FPN output.
        fuse_type: ``"sum"`` or ``"avg"`` of lateral and upsampled top-down features.
        square_pad: if > 0, images are padded to this square size (Detectron2's ``square_pad``,
            read from ``padding_constraints`` by the meta-architecture).
    """

    # TorchScript: Detectron2's Python lists of the conv modules (registered as fpn_lateral{s},
    # fpn_output{s}); scripting them would add ``lateral_convs.N.*`` keys.
    __jit_ignored_attributes__ = ["lateral_convs", "output_convs"]

    def __init__(
        self,
        bottom_up: Backbone,
        in_features: Sequence[str],
        out_channels: int,
        *,
        norm: str = "",
        top_block: nn.Module | None = None,
        fuse_type: str = "sum",
        square_pad: int = 0,
    ):
        # Detectron2's FPN.__init__ is not run: it builds plain Conv2d and asserts on bad input.
        # The attributes it sets are set below, with the same names and meanings.
        Backbone.__init__(self)
        check_choice("fuse_type", fuse_type, FUSE_TYPES)
        if norm:
            check_choice("norm", norm, NORMS)
        shapes = bottom_up.output_shape()
        if not in_features:
            raise BackboneOptionError("in_features", list(in_features), "a non-empty list")
        for name in in_features:
            check_choice("in_features", name, shapes, "not an output of the bottom-up backbone")
        strides = [shapes[name].stride for name in in_features]
        for previous, stride in zip(strides, strides[1:]):
            if stride != 2 * previous:
                raise BackboneOptionError(
                    "in_features",
                    list(in_features),
                    "features whose strides double from one to the next",
                    f"strides {strides}",
                )
        levels = [int(math.log2(stride)) for stride in strides]
        if levels[0] < 2 or levels[-1] > 5:
            raise BackboneOptionError(
                "in_features",
                list(in_features),
                "features of strides 4 to 32 (P2-P5)",
                f"strides {strides}",
            )
        self.bottom_up = bottom_up
        self.in_features = tuple(in_features)
        lateral_convs, output_convs = [], []
        for name, level in zip(in_features, levels):
            lateral = ConvNorm(
                shapes[name].channels,
                out_channels,
                kernel_size=1,
                bias=not norm,
                norm=norm_layer(norm, out_channels),
            )
            output = ConvNorm(
                out_channels,
                out_channels,
                kernel_size=3,
                padding=1,
                bias=not norm,
                norm=norm_layer(norm, out_channels),
            )
            weight_init.c2_xavier_fill(lateral)
            weight_init.c2_xavier_fill(output)
            self.add_module(f"fpn_lateral{level}", lateral)
            self.add_module(f"fpn_output{level}", output)
            lateral_convs.append(lateral)
            output_convs.append(output)
        self.lateral_convs = lateral_convs[::-1]
        self.output_convs = output_convs[::-1]
        self.top_block = top_block
        self._out_feature_strides = {f"p{int(math.log2(s))}": s for s in strides}
        if top_block is not None:
            level = int(math.log2(strides[-1]))
            for extra in range(1, top_block.num_levels + 1):
                self._out_feature_strides[f"p{level + extra}"] = 2 ** (level + extra)
        self._out_features = list(self._out_feature_strides)
        self._out_feature_channels = {name: out_channels for name in self._out_features}
        self._size_divisibility = strides[-1]
        self._square_pad = square_pad
        self._fuse_type = fuse_type

    def __prepare_scriptable__(self) -> "FPN":
        """TorchScript takes this module as it is: its forward scripts without renaming keys.
        (Importing ``detectron2.export`` patches Detectron2's FPN to script a copy with the
        lateral and output convs in ``ModuleList``s, which renames the state-dict keys.)"""
        return self

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """
        Args:
            x: images ``(N, C, H, W)``, H and W multiples of ``size_divisibility``.

        Returns:
            ``p2``..``p5`` (strides 4..32, one per input feature), then the top block's levels
            (``p6``, stride 64; ``p6``, ``p7`` for ``LastLevelP6P7``), high to low resolution.
        """
        bottom_up = self.bottom_up(x)
        features = [bottom_up[name] for name in self.in_features]
        results: list[torch.Tensor] = []
        top_down: torch.Tensor | None = None
        # Coarse to fine, unrolled over P5..P2: TorchScript cannot look modules up by a computed
        # name, and it resolves hasattr() while scripting, so the levels not built drop out.
        if hasattr(self, "fpn_lateral5"):
            top_down = self._fuse(self.fpn_lateral5(features.pop()), top_down)
            results.insert(0, self.fpn_output5(top_down))
        if hasattr(self, "fpn_lateral4"):
            top_down = self._fuse(self.fpn_lateral4(features.pop()), top_down)
            results.insert(0, self.fpn_output4(top_down))
        if hasattr(self, "fpn_lateral3"):
            top_down = self._fuse(self.fpn_lateral3(features.pop()), top_down)
            results.insert(0, self.fpn_output3(top_down))
        if hasattr(self, "fpn_lateral2"):
            top_down = self._fuse(self.fpn_lateral2(features.pop()), top_down)
            results.insert(0, self.fpn_output2(top_down))
        if self.top_block is not None:
            source = self.top_block.in_feature
            if source in bottom_up:
                top_input = bottom_up[source]
            else:
                top_input = results[self._out_features.index(source)]
            results.extend(self.top_block(top_input))
        return {name: result for name, result in zip(self._out_features, results)}

    def _fuse(self, lateral: torch.Tensor, top_down: torch.Tensor | None) -> torch.Tensor:
        """The lateral feature plus (or averaged with) the 2x upsampled coarser level, if any."""
        if top_down is None:
            return lateral
        fused = lateral + F.interpolate(top_down, scale_factor=2.0, mode="nearest")
        return fused / 2 if self._fuse_type == "avg" else fused


def make_resnet_fpn(
    depth: int | None = None,
    *,
    in_features: Sequence[str] = STAGE_NAMES,
    out_channels: int = 256,
    fpn_norm: str = "",
    fuse_type: str = "sum",
    top_block: str | None = "maxpool",
    weights: str | os.PathLike | Weights | None = None,
    **resnet_options,
) -> FPN:
    """Build ``make_resnet(depth, **resnet_options)`` with an FPN on top, without any config.

    Args:
        depth: as in :func:`make_resnet`.
        in_features: the ResNet features the FPN takes, high to low resolution.
        out_channels: channels of every pyramid level.
        fpn_norm: norm of the FPN convs, ``""`` for none (with bias).
        fuse_type: ``"sum"`` or ``"avg"``.
        top_block: ``"maxpool"`` adds P6 by subsampling the last level (Faster/Mask R-CNN);
            ``"p6p7"`` adds P6 and P7 by strided 3x3 convs (RetinaNet), P6 from ``res5`` when it
            is an input, else from the last level; None adds nothing.
        weights: as in :func:`make_resnet` (it decides the architecture options left None); an
            ImageNet file fills the ResNet, a Detectron2 detector checkpoint the FPN too, with
            one report.
        **resnet_options: keyword arguments of :func:`make_resnet` (unknown names raise
            TypeError); ``out_features`` is set to ``in_features``.

    Returns:
        an :class:`FPN`, whose ``output_shape()`` is ``p2``..``p6`` with strides 4..64 (by
        default; ``p3``..``p7``, strides 8..128, for RetinaNet's ``in_features=("res3", "res4",
        "res5"), top_block="p6p7"``); its ResNet's architecture is ``fpn.bottom_up.spec``.
    """
    if weights is not None and not isinstance(weights, Weights):
        weights = read_weights(weights)
    architecture = {
        name: resnet_options.pop(name) for name in SPEC_FIELDS if name in resnet_options
    }
    res5_dilation = resnet_options.pop("res5_dilation", 1)
    width = resnet_options.pop("width", None)
    spec = ResNetSpec.from_weights(
        weights, res5_dilation=res5_dilation, width=width, depth=depth, **architecture
    )
    bottom_up = build_resnet(spec, out_features=tuple(in_features), **resnet_options)
    fpn = build_fpn(bottom_up, in_features, out_channels, fpn_norm, fuse_type, top_block)
    if weights is None:
        warn_untrained(resnet_options.get("norm", "FrozenBN"), 0, caller="make_resnet_fpn")
    else:  # an ImageNet file fills the ResNet, a detector checkpoint the FPN too
        load_weights(fpn, weights)
    return fpn


def build_fpn(
    bottom_up: ResNet,
    in_features: Sequence[str],
    out_channels: int,
    norm: str,
    fuse_type: str,
    top_block: str | None,
) -> FPN:
    """An :class:`FPN` over ``bottom_up`` with the top block ``top_block`` of :data:`TOP_BLOCKS`,
    in the ResNet's memory format (arguments as in :func:`make_resnet_fpn`)."""
    check_choice("top_block", top_block, TOP_BLOCKS)
    shapes = bottom_up.output_shape()
    last_level = f"p{int(math.log2(shapes[in_features[-1]].stride))}" if in_features else ""
    top: nn.Module | None = None
    if top_block == "maxpool":
        top = LastLevelMaxPool(last_level)
    elif top_block == "p6p7" and "res5" in in_features:
        # Detectron2's RetinaNet builder: P6 from res5 (in_channels_p6p7 = res5's channels).
        top = LastLevelP6P7(shapes["res5"].channels, out_channels, in_feature="res5")
    elif top_block == "p6p7":  # no C5 to start from: P6 from the last level, as the max-pool's
        top = LastLevelP6P7(out_channels, out_channels, in_feature=last_level)
    fpn = FPN(bottom_up, in_features, out_channels, norm=norm, top_block=top, fuse_type=fuse_type)
    if bottom_up.memory_format == "channels_last":  # the FPN's convs follow the ResNet's layout
        fpn.to(memory_format=torch.channels_last)
    return fpn
