"""Mask R-CNN, R-101-FPN, 1x: Detectron2's
COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.py (no R-101 1x LazyConfig in its zoo)
with our R-101-FPN and MSRA's R-101."""

from .common import resnet_fpn, zoo_recipe

dataloader, lr_multiplier, model, optimizer, train = zoo_recipe(
    "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.py"
)
model.backbone = resnet_fpn(101, freeze_at=2)
# MSRA's R-101, converted to Caffe2 for Detectron: BGR, std 1, stride in the 1x1 (as R-50).
train.init_checkpoint = "detectron2://ImageNetPretrained/MSRA/R-101.pkl"
