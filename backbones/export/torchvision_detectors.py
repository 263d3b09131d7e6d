"""The ResNet-FPN as the backbone of torchvision's Faster / Mask R-CNN (Ren et al., 2015; He et
al., 2017), with anchors and RoI pooling keyed on our feature names ``p2``..``p6``."""

from __future__ import annotations

import inspect
from collections import OrderedDict
from typing import Any, Mapping, Sequence

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import MultiScaleRoIAlign

from ..modeling.fpn import FPN, make_resnet_fpn

# torchvision's detection transform normalises RGB images in [0, 1] with these (ImageNet; the
# statistics of torchvision's and timm's weights).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The same transform for Detectron2 / MSRA (Caffe2) weights, which expect BGR in [0, 255] minus
# (103.53, 116.28, 123.675) with std 1: feed BGR images in [0, 1] and use these.
DETECTRON2_BGR_MEAN = (103.53 / 255, 116.28 / 255, 123.675 / 255)
DETECTRON2_BGR_STD = (1 / 255, 1 / 255, 1 / 255)

# Arguments torchvision's detectors take besides those named in their signatures (passed on to
# GeneralizedRCNNTransform, which silently ignores any other name).
_TRANSFORM_OPTIONS = ("size_divisible", "fixed_size")


class TorchvisionBackbone(nn.Module):
    """Our :class:`FPN` in torchvision's backbone contract.

    torchvision's detectors read ``backbone.out_channels`` and take the ordered feature dict
    from ``forward``; they name no features themselves, so anchors and RoI pooling are keyed on
    ours (see :func:`torchvision_faster_rcnn`).

    Args:
        fpn: e.g. ``make_resnet_fpn(50)``; its weights are ``self.fpn`` (keys ``fpn.bottom_up.*``,
            ``fpn.fpn_lateral2.*``, ...), so Detectron2's ``backbone.*`` tensors load into it.

    Attributes:
        out_channels: channels of every level.
        feature_names: the outputs, high to low resolution (``p2``..``p6``).
        roi_feature_names: the levels built from bottom-up features (``p2``..``p5``), those
            Detectron2 pools RoIs from; the top block's extra levels (``p6``) feed the RPN only.
    """

    def __init__(self, fpn: FPN):
        super().__init__()
        shapes = fpn.output_shape()
        channels = {spec.channels for spec in shapes.values()}
        if len(channels) != 1:
            raise ValueError(f"torchvision needs one channel count for all levels, got {shapes}")
        self.fpn = fpn
        self.out_channels = channels.pop()
        self.feature_names = list(shapes)
        self.strides = [spec.stride for spec in shapes.values()]
        extra = fpn.top_block.num_levels if fpn.top_block is not None else 0
        self.roi_feature_names = self.feature_names[: len(self.feature_names) - extra]

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        """
        Args:
            x: the padded image batch ``(N, C, H, W)`` of torchvision's transform.

        Returns:
            ``p2``..``p6`` (strides 4..64) in that order.
        """
        return OrderedDict(self.fpn(x))


def as_torchvision_backbone(
    backbone: nn.Module | Mapping[str, Any] | None = None,
) -> TorchvisionBackbone:
    """``backbone`` as a :class:`TorchvisionBackbone`.

    Args:
        backbone: an :class:`FPN` (e.g. from :func:`make_resnet_fpn`), one already wrapped,
            :func:`make_resnet_fpn` arguments (``{"depth": 101, "norm": "BN"}``), or None for
            ``make_resnet_fpn()`` (R-50-FPN, FrozenBN: for loaded weights).
    """
    if isinstance(backbone, TorchvisionBackbone):
        return backbone
    if backbone is None or isinstance(backbone, Mapping):
        backbone = make_resnet_fpn(**(backbone or {}))
    if not isinstance(backbone, FPN):
        raise TypeError(
            f"backbone must be an FPN, make_resnet_fpn options or None, got {backbone!r}"
        )
    return TorchvisionBackbone(backbone)


def _detector_parts(
    backbone: nn.Module | Mapping[str, Any] | None,
    anchor_sizes: Sequence[int] | None,
    aspect_ratios: Sequence[float],
) -> tuple[TorchvisionBackbone, AnchorGenerator, MultiScaleRoIAlign]:
    body = as_torchvision_backbone(backbone)
    if anchor_sizes is None:
        # One size per level, 8x its stride: 32..512 for p2..p6 (Detectron2's FPN defaults).
        anchor_sizes = [8 * stride for stride in body.strides]
    if len(anchor_sizes) != len(body.feature_names):
        raise ValueError(
            f"anchor_sizes has {len(anchor_sizes)} sizes for {len(body.feature_names)} levels "
            f"({', '.join(body.feature_names)}): give one per level"
        )
    anchors = AnchorGenerator(
        sizes=tuple((size,) for size in anchor_sizes),
        aspect_ratios=(tuple(aspect_ratios),) * len(anchor_sizes),
    )
    box_pool = MultiScaleRoIAlign(body.roi_feature_names, output_size=7, sampling_ratio=2)
    return body, anchors, box_pool


def _check_options(detector: type, options: Mapping[str, Any]) -> None:
    allowed = set(inspect.signature(detector.__init__).parameters) | set(_TRANSFORM_OPTIONS)
    unknown = sorted(set(options) - allowed - {"self", "kwargs"})
    if unknown:
        raise TypeError(f"{detector.__name__} has no option(s) {', '.join(unknown)}")


def _build(
    detector: type,
    num_classes: int,
    backbone: nn.Module | Mapping[str, Any] | None,
    anchor_sizes: Sequence[int] | None,
    aspect_ratios: Sequence[float],
    image_mean: Sequence[float],
    image_std: Sequence[float],
    options: dict[str, Any],
    masks: bool = False,
) -> nn.Module:
    _check_options(detector, options)
    body, anchors, box_pool = _detector_parts(backbone, anchor_sizes, aspect_ratios)
    options.setdefault("size_divisible", body.fpn.size_divisibility)
    if masks:  # 14x14 mask RoIs from the same levels as the boxes
        options["mask_roi_pool"] = MultiScaleRoIAlign(
            body.roi_feature_names, output_size=14, sampling_ratio=2
        )
    return detector(
        body,
        num_classes,
        image_mean=list(image_mean),
        image_std=list(image_std),
        rpn_anchor_generator=anchors,
        box_roi_pool=box_pool,
        **options,
    )


def torchvision_faster_rcnn(
    num_classes: int,
    *,
    backbone: nn.Module | Mapping[str, Any] | None = None,
    anchor_sizes: Sequence[int] | None = None,
    aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
    image_mean: Sequence[float] = IMAGENET_MEAN,
    image_std: Sequence[float] = IMAGENET_STD,
    **detector_options: Any,
) -> FasterRCNN:
    """torchvision's ``FasterRCNN`` over our ResNet-FPN.

    Args:
        num_classes: object classes plus one for the background (torchvision's convention).
        backbone: see :func:`as_torchvision_backbone`.
        anchor_sizes: one anchor size per level; default 8x each level's stride (32..512).
        aspect_ratios: height/width ratios of the anchors at every level.
        image_mean, image_std: normalisation of torchvision's transform, which takes RGB images
            in [0, 1]. Use the statistics of the weights' source: ImageNet (default) for
            torchvision / timm weights; :data:`DETECTRON2_BGR_MEAN` / ``_STD`` with BGR images
            for Detectron2 / MSRA weights (FrozenBN layers keep their source's statistics).
        **detector_options: other ``FasterRCNN`` arguments (``min_size``, ``max_size``,
            ``box_batch_size_per_image``, ...); unknown names raise TypeError.

    Returns:
        the detector; ``model.backbone.fpn`` is the :class:`FPN`.
    """
    return _build(
        FasterRCNN,
        num_classes,
        backbone,
        anchor_sizes,
        aspect_ratios,
        image_mean,
        image_std,
        detector_options,
    )


def torchvision_mask_rcnn(
    num_classes: int,
    *,
    backbone: nn.Module | Mapping[str, Any] | None = None,
    anchor_sizes: Sequence[int] | None = None,
    aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
    image_mean: Sequence[float] = IMAGENET_MEAN,
    image_std: Sequence[float] = IMAGENET_STD,
    **detector_options: Any,
) -> MaskRCNN:
    """torchvision's ``MaskRCNN`` over our ResNet-FPN; arguments as in
    :func:`torchvision_faster_rcnn`, masks pooled (14x14) from the same levels as boxes.

    Returns:
        the detector; ``model.backbone.fpn`` is the :class:`FPN`.
    """
    return _build(
        MaskRCNN,
        num_classes,
        backbone,
        anchor_sizes,
        aspect_ratios,
        image_mean,
        image_std,
        detector_options,
        masks=True,
    )
