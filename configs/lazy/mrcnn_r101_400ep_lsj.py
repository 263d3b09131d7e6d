"""Mask R-CNN, R-101-FPN, 400 epochs of large-scale jitter from scratch: Detectron2's
new_baselines/mask_rcnn_R_101_FPN_400ep_LSJ.py with our R-101-FPN."""

from .common import resnet_fpn, zoo_recipe

dataloader, lr_multiplier, model, optimizer, train = zoo_recipe(
    "new_baselines/mask_rcnn_R_101_FPN_400ep_LSJ.py"
)
# From scratch: SyncBN in the ResNet and the FPN, nothing frozen.
model.backbone = resnet_fpn(101, norm="SyncBN", fpn_norm="SyncBN")
