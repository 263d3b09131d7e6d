"""ResNet / ResNeXt backbones with FPN for Detectron2 (He et al., 2015, "Deep Residual Learning").

Importing the package registers ``backbones_build_resnet_backbone`` and
``backbones_build_resnet_fpn_backbone`` in Detectron2's ``BACKBONE_REGISTRY``, and the embedded
datasets ``shapes_train`` / ``shapes_val`` (generated on first use) in its ``DatasetCatalog``.
"""
from .blocks import NORMS, STEM_TYPES, BasicBlock, BasicStem, BottleneckBlock, DeepStem
from .config import add_backbones_config
from .errors import BackboneOptionError
from .fpn import FPN, LastLevelMaxPool, make_resnet_fpn
from .registry import backbones_build_resnet_backbone, backbones_build_resnet_fpn_backbone
from .resnet import ResNet, make_resnet
from .shapes import SHAPES_CLASSES, register_shapes
from .specs import DEPTHS, PRESETS

__all__ = [
    "NORMS",
    "DEPTHS",
    "PRESETS",
    "BackboneOptionError",
    "BasicBlock",
    "BasicStem",
    "DeepStem",
    "STEM_TYPES",
    "BottleneckBlock",
    "FPN",
    "LastLevelMaxPool",
    "ResNet",
    "add_backbones_config",
    "backbones_build_resnet_backbone",
    "backbones_build_resnet_fpn_backbone",
    "make_resnet",
    "make_resnet_fpn",
    "register_shapes",
    "SHAPES_CLASSES",
]

register_shapes()
