"""The model code: conv-norm layers, residual blocks and stems, the architecture record
(:class:`ResNetSpec`), the ResNet, the FPN, the builders registered in Detectron2's
``BACKBONE_REGISTRY`` and the RoI head registered in its ``ROI_HEADS_REGISTRY`` (the only model
code that reads a cfg).

Extension points: a block type is a :class:`ResidualBlock` subclass (its ``__init__`` and flags)
plus one entry in :data:`BLOCK_TYPES` (a row of ``specs.DEPTHS`` names it); a stem is one entry
in ``STEM_TYPES``; a context block (placed by stage and position) is a :class:`Plugin` subclass
plus one entry in :data:`PLUGIN_TYPES`.
"""

from .blocks import (
    BLOCK_TYPES,
    DEFORM_BLOCK_TYPES,
    STEM_TYPES,
    BasicBlock,
    BasicStem,
    BottleneckBlock,
    DeepStem,
    DeformBottleneckBlock,
    ResidualBlock,
)
from .build import (
    backbones_build_resnet_backbone,
    backbones_build_resnet_fpn_backbone,
    backbones_build_retinanet_resnet_fpn_backbone,
)
from .constructors import build_resnet, make_resnet, make_stages
from .fpn import FPN, TOP_BLOCKS, LastLevelMaxPool, LastLevelP6P7, build_fpn, make_resnet_fpn
from .layers import NORMS, ConvNorm, DeformConvNorm
from .plugins import PLUGIN_TYPES, GlobalContext, NonLocal, Plugin, PluginSpec, SqueezeExcitation
from .resnet import MEMORY_FORMATS, ResNet
from .roi_heads import backbones_Res5ROIHeadsExtraNorm
from .spec import ARCHITECTURE_DEFAULTS, OUTPUT_STRIDES, ResNetSpec

__all__ = [
    "ARCHITECTURE_DEFAULTS",
    "BLOCK_TYPES",
    "DEFORM_BLOCK_TYPES",
    "MEMORY_FORMATS",
    "OUTPUT_STRIDES",
    "NORMS",
    "PLUGIN_TYPES",
    "STEM_TYPES",
    "TOP_BLOCKS",
    "BasicBlock",
    "BasicStem",
    "BottleneckBlock",
    "ConvNorm",
    "DeepStem",
    "DeformBottleneckBlock",
    "DeformConvNorm",
    "FPN",
    "GlobalContext",
    "LastLevelMaxPool",
    "LastLevelP6P7",
    "NonLocal",
    "Plugin",
    "PluginSpec",
    "ResNet",
    "ResNetSpec",
    "ResidualBlock",
    "SqueezeExcitation",
    "backbones_build_resnet_backbone",
    "backbones_build_resnet_fpn_backbone",
    "backbones_build_retinanet_resnet_fpn_backbone",
    "backbones_Res5ROIHeadsExtraNorm",
    "build_fpn",
    "build_resnet",
    "make_resnet",
    "make_resnet_fpn",
    "make_stages",
]
