"""The ResNet family as data: the one depth table and the named presets (He et al., 2015)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class DepthSpec:
    """Block type (a key of ``backbones.modeling.BLOCK_TYPES``) and number of blocks in
    res2..res5 for one depth."""

    block: str
    blocks_per_stage: tuple[int, int, int, int]


# The only depth table. 18-152: Table 1 of "Deep Residual Learning for Image Recognition";
# 26: the shallow bottleneck ResNet used by timm (resnet26); 200: "Identity Mappings in Deep
# Residual Networks" (He et al., 2016).
DEPTHS: dict[int, DepthSpec] = {
    18: DepthSpec("basic", (2, 2, 2, 2)),
    26: DepthSpec("bottleneck", (2, 2, 2, 2)),
    34: DepthSpec("basic", (3, 4, 6, 3)),
    50: DepthSpec("bottleneck", (3, 4, 6, 3)),
    101: DepthSpec("bottleneck", (3, 4, 23, 3)),
    152: DepthSpec("bottleneck", (3, 8, 36, 3)),
    200: DepthSpec("bottleneck", (3, 24, 36, 3)),
}

# ResNet-D of "Bag of Tricks for Image Classification" (He et al., 2019), as timm's resnet{N}d:
# deep stem of width 32, avg-down shortcuts, stride in the 3x3.
RESNET_D: dict[str, Any] = dict(stem_type="deep", stem_width=32, avg_down=True, stride_in_1x1=False)

# Named variants as arguments of `make_resnet`; ResNeXt is "groups x width per group" (Xie et al.,
# 2017), wide ResNets double the bottleneck width (Zagoruyko & Komodakis, 2016; torchvision's
# wide_resnet50_2 / wide_resnet101_2).
PRESETS: dict[str, dict[str, Any]] = {
    "R-18": dict(depth=18),
    "R-34": dict(depth=34),
    "R-26": dict(depth=26),
    "R-50": dict(depth=50),
    "R-101": dict(depth=101),
    "R-152": dict(depth=152),
    "R-200": dict(depth=200),
    "X-50-32x4d": dict(depth=50, num_groups=32, width_per_group=4),
    "X-101-32x8d": dict(depth=101, num_groups=32, width_per_group=8),
    "X-101-64x4d": dict(depth=101, num_groups=64, width_per_group=4),
    "X-152-32x8d": dict(depth=152, num_groups=32, width_per_group=8),
    "W-50-2": dict(depth=50, width_per_group=128),
    "W-101-2": dict(depth=101, width_per_group=128),
    "R-18-D": dict(depth=18, **RESNET_D),
    "R-26-D": dict(depth=26, **RESNET_D),
    "R-34-D": dict(depth=34, **RESNET_D),
    "R-50-D": dict(depth=50, **RESNET_D),
    "R-101-D": dict(depth=101, **RESNET_D),
    "R-152-D": dict(depth=152, **RESNET_D),
    "R-200-D": dict(depth=200, **RESNET_D),
}

# The residual stages by name (Detectron2's), res2 first: strides 4, 8, 16, 32.
STAGE_NAMES = ("res2", "res3", "res4", "res5")

# Where a context block (backbones.modeling.plugins) sits in a residual block, MMDetection's
# plugin positions: after conv N and its norm and ReLU, or, for the block's last conv (a
# bottleneck's conv3, a basic block's conv2), after its norm, before the shortcut is added. They
# are the module names too (``res4.0.after_conv3.gc.*``), by which the weights loader tells
# plugin tensors apart.
PLUGIN_POSITIONS = ("after_conv1", "after_conv2", "after_conv3")
