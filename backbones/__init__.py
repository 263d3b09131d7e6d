"""ResNet / ResNeXt backbones with FPN for Detectron2 (He et al., 2015, "Deep Residual Learning").

Importing the package registers ``backbones_build_resnet_backbone``,
``backbones_build_resnet_fpn_backbone`` and ``backbones_build_retinanet_resnet_fpn_backbone`` in
Detectron2's ``BACKBONE_REGISTRY``, and the embedded datasets ``shapes_train`` / ``shapes_val``
(generated on first use) in its ``DatasetCatalog``.

Subpackages, each importing only those before it (docs/design.md): ``specs``/``errors`` (data)
-> ``weights`` -> ``modeling`` -> ``config`` -> ``checkpoint``, ``data``, ``evaluation`` ->
``engine``, ``inference``, ``export``; the paper study (pretraining, experiments, reports) is
``backbones.study``, which imports them and which none of them imports. The names below are the
public API; ``Trainer`` and ``load_cfg`` import the training engine when first used.
"""

import importlib
import warnings
from typing import Any

from .quiet import THIRD_PARTY_WARNINGS, quiet_third_party_warnings

# fvcore and Detectron2 script functions while they are imported (a torch.jit FutureWarning a
# user can do nothing about); hidden for these imports only, the filters are restored after.
with warnings.catch_warnings():
    for _message, _category in THIRD_PARTY_WARNINGS:
        warnings.filterwarnings("ignore", message=_message, category=_category)
    from .checkpoint import BackbonesCheckpointer
    from .config import add_backbones_config
    from .data import SHAPES_CLASSES, register_coco_dataset, register_shapes
    from .errors import BackboneOptionError
    from .modeling import (
        BLOCK_TYPES,
        FPN,
        NORMS,
        PLUGIN_TYPES,
        STEM_TYPES,
        BasicBlock,
        BasicStem,
        BottleneckBlock,
        DeepStem,
        LastLevelMaxPool,
        LastLevelP6P7,
        PluginSpec,
        ResidualBlock,
        ResNet,
        ResNetSpec,
        backbones_build_resnet_backbone,
        backbones_build_resnet_fpn_backbone,
        backbones_build_retinanet_resnet_fpn_backbone,
        make_resnet,
        make_resnet_fpn,
    )
    from .specs import DEPTHS, PRESETS
    from .weights import SOURCES, Weights, load_weights, read_weights

# The training engine is imported on first use of these names, so that a tool that only
# evaluates or converts (coco_eval.py, convert_weights.py) does not load it.
_FROM_ENGINE = ("Trainer", "load_cfg")


def __getattr__(name: str) -> Any:
    if name in _FROM_ENGINE:
        return getattr(importlib.import_module(".engine", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    # the family as data
    "DEPTHS",
    "PRESETS",
    "BLOCK_TYPES",
    "STEM_TYPES",
    "PLUGIN_TYPES",
    "NORMS",
    "SOURCES",
    # plain PyTorch: no config needed
    "ResNetSpec",
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
    "PluginSpec",
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
# Library use is quiet: the run-time notices of the pinned dependencies that a user can do
# nothing about (listed in backbones/quiet.py, each a specific message) are hidden from here on.
quiet_third_party_warnings()
