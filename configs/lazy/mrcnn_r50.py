"""Mask R-CNN, R-50-FPN, 1x: Detectron2's
COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.py with our R-50-FPN."""

from .common import resnet_fpn, zoo_recipe

dataloader, lr_multiplier, model, optimizer, train = zoo_recipe(
    "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.py"
)
model.backbone = resnet_fpn(50, freeze_at=2)  # the recipe's weights: MSRA's R-50
