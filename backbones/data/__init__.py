"""Data: the COCO 2017 layout and its check, custom COCO-format datasets, and the embedded
synthetic shapes datasets (``shapes_train`` / ``shapes_val``)."""

from .coco import (
    COCO_SPLITS,
    CocoLayoutReport,
    SplitReport,
    check_coco_dataset,
    check_coco_layout,
    coco_root,
    datasets_root,
    link_coco,
    register_coco_dataset,
    register_datasets_from_cfg,
)
from .shapes import (
    DEFAULT_NUM_TRAIN,
    DEFAULT_NUM_VAL,
    default_root,
    ensure_generated,
    generate_shapes,
    register_shapes,
)
from .shapes_render import DEFAULT_IMAGE_SIZE, SHAPES_CLASSES, render_shapes

__all__ = [
    "COCO_SPLITS",
    "DEFAULT_IMAGE_SIZE",
    "DEFAULT_NUM_TRAIN",
    "DEFAULT_NUM_VAL",
    "SHAPES_CLASSES",
    "CocoLayoutReport",
    "SplitReport",
    "check_coco_dataset",
    "check_coco_layout",
    "coco_root",
    "datasets_root",
    "default_root",
    "ensure_generated",
    "generate_shapes",
    "link_coco",
    "register_coco_dataset",
    "register_datasets_from_cfg",
    "register_shapes",
    "render_shapes",
]
