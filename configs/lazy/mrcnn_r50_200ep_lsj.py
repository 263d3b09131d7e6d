"""Mask R-CNN, R-50-FPN, 200 epochs of large-scale jitter from scratch: Detectron2's
new_baselines/mask_rcnn_R_50_FPN_200ep_LSJ.py with our R-50-FPN."""

from .common import resnet_fpn, zoo_recipe

dataloader, lr_multiplier, model, optimizer, train = zoo_recipe(
    "new_baselines/mask_rcnn_R_50_FPN_200ep_LSJ.py"
)
# From scratch: SyncBN in the ResNet and the FPN, nothing frozen.
model.backbone = resnet_fpn(50, norm="SyncBN", fpn_norm="SyncBN")
