"""Mask R-CNN, R-152-FPN, 1x: Detectron2's
COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.py (no R-152 in its zoo) with our
R-152-FPN and torchvision's ImageNet resnet152."""

from .common import resnet_fpn, rgb_imagenet_input, zoo_recipe

dataloader, lr_multiplier, model, optimizer, train = zoo_recipe(
    "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.py"
)
# torchvision's resnet152 (Detectron2's store has no R-152), read by our checkpointer as it is:
# RGB, ImageNet mean and std, stride in the 3x3.
model.backbone = resnet_fpn(152, freeze_at=2, stride_in_1x1=False)
train.init_checkpoint = "https://download.pytorch.org/models/resnet152-394f9c45.pth"
rgb_imagenet_input(model, dataloader)
