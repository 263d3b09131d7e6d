"""Mask R-CNN, R-18-FPN, 1x: Detectron2's
COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.py (no R-18 in its zoo) with our
R-18-FPN and torchvision's ImageNet resnet18."""

from .common import resnet_fpn, rgb_imagenet_input, zoo_recipe

dataloader, lr_multiplier, model, optimizer, train = zoo_recipe(
    "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.py"
)
# torchvision's resnet18 (MSRA released no ), read by our checkpointer as it is:
# RGB, ImageNet mean and std, stride in the 3x3 (R-18/34 have no 1x1).
model.backbone = resnet_fpn(18, freeze_at=2, stride_in_1x1=False)
train.init_checkpoint = "https://download.pytorch.org/models/resnet18-f37072fd.pth"
rgb_imagenet_input(model, dataloader)
