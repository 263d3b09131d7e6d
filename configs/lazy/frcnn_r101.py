"""Faster R-CNN, R-101-FPN, 1x: configs/lazy/mrcnn_r101.py without masks (Detectron2's
YAML zoo has the same Faster R-CNN recipe as Mask R-CNN, less the mask head)."""

from .common import without_masks

# The config's keys, as in Detectron2's LazyConfigs.
from .mrcnn_r101 import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

without_masks(model, dataloader)
