"""ResNet / ResNeXt backbones with FPN for Detectron2 (He et al., 2015, "Deep Residual Learning").

Importing the package registers ``backbones_build_resnet_backbone``,
``backbones_build_resnet_fpn_backbone`` and ``backbones_build_retinanet_resnet_fpn_backbone`` in
Detectron2's ``BACKBONE_REGISTRY``, and the embedded datasets ``shapes_train`` / ``shapes_val``
(generated on first use) in its ``DatasetCatalog``.

Subpackages, each importing only those before it (docs/design.md): ``specs``/``errors`` (data)
-> ``weights`` -> ``modeling`` -> ``config`` -> ``checkpoint``, ``data``, ``evaluation`` ->
``engine``, ``inference``, ``export``. The names below are the public API.
"""

from .checkpoint import BackbonesCheckpointer
from .config import add_backbones_config
from .data import SHAPES_CLASSES, register_coco_dataset, register_shapes
from .engine import Trainer, load_cfg
from .errors import BackboneOptionError
from .modeling import (
    BLOCK_TYPES,
    FPN,
    NORMS,
    STEM_TYPES,
    BasicBlock,
    BasicStem,
    BottleneckBlock,
    DeepStem,
    LastLevelMaxPool,
    LastLevelP6P7,
    ResidualBlock,
    ResNet,
    backbones_build_resnet_backbone,
    backbones_build_resnet_fpn_backbone,
    backbones_build_retinanet_resnet_fpn_backbone,
    make_resnet,
    make_resnet_fpn,
)
from .specs import DEPTHS, PRESETS
from .weights import SOURCES, Weights, load_weights, read_weights

__all__ = [
    # the family as data
    "DEPTHS",
    "PRESETS",
    "BLOCK_TYPES",
    "STEM_TYPES",
    "NORMS",
    "SOURCES",
    # plain PyTorch: no config needed
    "make_resnet",
    "make_resnet_fpn",
    "ResNet",
    "FPN",
    "LastLevelMaxPool",
    "LastLevelP6P7",
    "ResidualBlock",
    "BasicBlock",
    "BottleneckBlock",
    "BasicStem",
    "DeepStem",
    # weights
    "Weights",
    "read_weights",
    "load_weights",
    "BackbonesCheckpointer",
    # Detectron2 configs and training
    "add_backbones_config",
    "load_cfg",
    "backbones_build_resnet_backbone",
    "backbones_build_resnet_fpn_backbone",
    "backbones_build_retinanet_resnet_fpn_backbone",
    "Trainer",
    # data
    "register_coco_dataset",
    "register_shapes",
    "SHAPES_CLASSES",
    # errors
    "BackboneOptionError",
]

register_shapes()
