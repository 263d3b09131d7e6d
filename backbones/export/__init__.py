"""Export: TorchScript and ONNX graphs of the backbones checked against eager PyTorch, and the
ResNet-FPN as the backbone of torchvision's Faster / Mask R-CNN."""

from .exporters import (
    INPUT_NAME,
    check_export,
    example_images,
    export_onnx,
    max_abs_diffs,
    run_onnx,
    script_backbone,
)
from .torchvision_detectors import (
    DETECTRON2_BGR_MEAN,
    DETECTRON2_BGR_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    TorchvisionBackbone,
    as_torchvision_backbone,
    torchvision_faster_rcnn,
    torchvision_mask_rcnn,
)

__all__ = [
    "DETECTRON2_BGR_MEAN",
    "DETECTRON2_BGR_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "INPUT_NAME",
    "TorchvisionBackbone",
    "as_torchvision_backbone",
    "check_export",
    "example_images",
    "export_onnx",
    "max_abs_diffs",
    "run_onnx",
    "script_backbone",
    "torchvision_faster_rcnn",
    "torchvision_mask_rcnn",
]
