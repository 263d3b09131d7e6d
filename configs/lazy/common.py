"""Our ResNet-FPN in the place of ``model.backbone`` in Detectron2's LazyConfig recipes.

Imported by the configs next to it (``from .common import ...``, which ``LazyConfig.load``
resolves by file); functions only, so that no key of a config comes from here.
"""

from detectron2.config import LazyCall as L
from detectron2.model_zoo import get_config
from omegaconf import DictConfig

from backbones import make_resnet_fpn

# Detectron2's ImageNet constants (configs/common/data/constants.py of its model zoo).
_CONSTANTS = get_config("common/data/constants.py").constants


def zoo_recipe(name: str) -> tuple[DictConfig, ...]:
    """``dataloader, lr_multiplier, model, optimizer, train`` of the model-zoo LazyConfig
    ``name`` (e.g. ``"COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.py"``), as loaded by
    ``detectron2.model_zoo.get_config``."""
    cfg = get_config(name)
    return cfg.dataloader, cfg.lr_multiplier, cfg.model, cfg.optimizer, cfg.train


def resnet_fpn(depth: int, **options) -> DictConfig:
    """``L(make_resnet_fpn)`` as the backbone of Detectron2's
    ``common/models/mask_rcnn_fpn.py``: res2-res5 into a 256-channel FPN without norm, P6 by
    max pooling, FrozenBN, stride in the 1x1 (MSRA's weights), nothing frozen; ``options``
    (any ``make_resnet_fpn`` keyword) change it."""
    arguments = dict(
        depth=depth,
        norm="FrozenBN",
        stride_in_1x1=True,
        freeze_at=0,
        in_features=["res2", "res3", "res4", "res5"],
        out_channels=256,
        fpn_norm="",
        top_block="maxpool",
    )
    arguments.update(options)
    return L(make_resnet_fpn)(**arguments)


def rgb_imagenet_input(model: DictConfig, dataloader: DictConfig) -> None:
    """The input settings of torchvision's ImageNet weights: RGB, ImageNet mean and std (the
    test loader's format follows the training loader's). The stride in the 3x3 is the
    backbone's ``stride_in_1x1=False``."""
    model.pixel_mean = list(_CONSTANTS.imagenet_rgb256_mean)
    model.pixel_std = list(_CONSTANTS.imagenet_rgb256_std)
    model.input_format = dataloader.train.mapper.image_format = "RGB"


def without_masks(model: DictConfig, dataloader: DictConfig) -> None:
    """Faster R-CNN from a Mask R-CNN recipe: no mask branch in the RoI heads and no masks
    read from the data (as Detectron2's RetinaNet recipe reads none)."""
    for key in ("mask_in_features", "mask_pooler", "mask_head"):
        del model.roi_heads[key]  # StandardROIHeads: masks on iff mask_head is given
    dataloader.train.mapper.use_instance_mask = False
