"""Registry glue: the only code that reads a config. Registers the builders into Detectron2.

Registered names (``MODEL.BACKBONE.NAME``), prefixed so they never clash with Detectron2's own:
``backbones_build_resnet_backbone``, ``backbones_build_resnet_fpn_backbone`` and
``backbones_build_retinanet_resnet_fpn_backbone``.
"""

from __future__ import annotations

import warnings
from typing import Any

from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import BACKBONE_REGISTRY

from ..errors import BackboneOptionError
from ..specs import DEPTHS
from .blocks import BLOCK_TYPES
from .constructors import UNTRAINED_FROZEN_BN, make_resnet
from .fpn import FPN, make_resnet_fpn
from .resnet import ResNet

# Constructor argument -> the config key it comes from, to name the key in errors.
CFG_KEYS = {
    "depth": "MODEL.RESNETS.DEPTH",
    "num_groups": "MODEL.RESNETS.NUM_GROUPS",
    "width_per_group": "MODEL.RESNETS.WIDTH_PER_GROUP",
    "stem_out_channels": "MODEL.RESNETS.STEM_OUT_CHANNELS",
    "res2_out_channels": "MODEL.RESNETS.RES2_OUT_CHANNELS",
    "stride_in_1x1": "MODEL.RESNETS.STRIDE_IN_1X1",
    "res5_dilation": "MODEL.RESNETS.RES5_DILATION",
    "norm": "MODEL.RESNETS.NORM",
    "out_features": "MODEL.RESNETS.OUT_FEATURES",
    "freeze_at": "MODEL.BACKBONE.FREEZE_AT",
    "memory_format": "BACKBONES.MEMORY_FORMAT",
    "zero_init_residual": "BACKBONES.ZERO_INIT_RESIDUAL",
    "stem_type": "BACKBONES.STEM_TYPE",
    "stem_width": "BACKBONES.STEM_WIDTH",
    "avg_down": "BACKBONES.AVG_DOWN",
    "residual": "BACKBONES.RESIDUAL",
    "output_stride": "BACKBONES.OUTPUT_STRIDE",
    "drop_path_rate": "BACKBONES.DROP_PATH_RATE",
    "grad_checkpointing": "BACKBONES.GRAD_CHECKPOINTING",
    "stage_blocks": "BACKBONES.STAGE_BLOCKS",
    "block_type": "BACKBONES.BLOCK_TYPE",
    "deform_on_per_stage": "MODEL.RESNETS.DEFORM_ON_PER_STAGE",
    "deform_modulated": "MODEL.RESNETS.DEFORM_MODULATED",
    "deform_num_groups": "MODEL.RESNETS.DEFORM_NUM_GROUPS",
    "in_features": "MODEL.FPN.IN_FEATURES",
    "out_channels": "MODEL.FPN.OUT_CHANNELS",
    "fpn_norm": "MODEL.FPN.NORM",
    "fuse_type": "MODEL.FPN.FUSE_TYPE",
}


def resnet_options(cfg: CfgNode, input_shape: ShapeSpec) -> dict[str, Any]:
    """The :func:`make_resnet` arguments that ``cfg`` asks for, checked against Detectron2's
    rules."""
    if "BACKBONES" not in cfg:
        raise KeyError(
            "cfg has no BACKBONES node: call backbones.add_backbones_config(cfg) before "
            "merging a config that uses the backbones_* builders"
        )
    r, ours = cfg.MODEL.RESNETS, cfg.BACKBONES
    stage_blocks = tuple(ours.STAGE_BLOCKS) or None
    if stage_blocks is None and r.DEPTH in DEPTHS:
        kind, which = DEPTHS[r.DEPTH].block, f"depth {r.DEPTH}"
    else:
        kind, which = ours.BLOCK_TYPE, f"BACKBONES.BLOCK_TYPE {ours.BLOCK_TYPE!r}"
    required = BLOCK_TYPES[kind].config_res2_out_channels if kind in BLOCK_TYPES else None
    if required is not None and r.RES2_OUT_CHANNELS != required:
        # Detectron2's rule for R18/R34 configs: the default 256 is the bottleneck width.
        raise BackboneOptionError(
            CFG_KEYS["res2_out_channels"], r.RES2_OUT_CHANNELS, str(required), which
        )
    if r.NORM == "FrozenBN" and not cfg.MODEL.WEIGHTS:
        warnings.warn(
            "MODEL.RESNETS.NORM='FrozenBN' with no MODEL.WEIGHTS: frozen batch norm keeps its "
            "random initial statistics and training from scratch diverges; use NORM 'BN', "
            "'SyncBN' or 'GN' (and MODEL.BACKBONE.FREEZE_AT 0), or load pretrained weights",
            stacklevel=2,
        )
    elif cfg.MODEL.BACKBONE.FREEZE_AT > 0 and not cfg.MODEL.WEIGHTS:
        warnings.warn(
            f"MODEL.BACKBONE.FREEZE_AT={cfg.MODEL.BACKBONE.FREEZE_AT} with no MODEL.WEIGHTS "
            "freezes randomly initialised layers; set it to 0 to train from scratch",
            stacklevel=2,
        )
    return dict(
        depth=None if stage_blocks else r.DEPTH,
        stage_blocks=stage_blocks,
        block_type=ours.BLOCK_TYPE if stage_blocks else None,
        in_channels=input_shape.channels,
        num_groups=r.NUM_GROUPS,
        width_per_group=r.WIDTH_PER_GROUP,
        stem_out_channels=r.STEM_OUT_CHANNELS,
        res2_out_channels=r.RES2_OUT_CHANNELS,
        stride_in_1x1=r.STRIDE_IN_1X1,
        res5_dilation=r.RES5_DILATION,
        norm=r.NORM,
        out_features=tuple(r.OUT_FEATURES),
        freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT,
        memory_format=cfg.BACKBONES.MEMORY_FORMAT,
        zero_init_residual=cfg.BACKBONES.ZERO_INIT_RESIDUAL,
        stem_type=cfg.BACKBONES.STEM_TYPE,
        stem_width=cfg.BACKBONES.STEM_WIDTH,
        avg_down=cfg.BACKBONES.AVG_DOWN,
        residual=cfg.BACKBONES.RESIDUAL,
        output_stride=ours.OUTPUT_STRIDE or None,
        drop_path_rate=ours.DROP_PATH_RATE,
        grad_checkpointing=tuple(ours.GRAD_CHECKPOINTING),
        deform_on_per_stage=tuple(r.DEFORM_ON_PER_STAGE),
        deform_modulated=r.DEFORM_MODULATED,
        deform_num_groups=r.DEFORM_NUM_GROUPS,
    )


def _with_cfg_keys(build, **kwargs):
    try:
        with warnings.catch_warnings():
            # resnet_options warned with config keys; MODEL.WEIGHTS is loaded after building.
            warnings.filterwarnings("ignore", f".*{UNTRAINED_FROZEN_BN}")
            return build(**kwargs)
    except BackboneOptionError as error:
        raise error.renamed(CFG_KEYS.get(error.option, error.option)) from None


@BACKBONE_REGISTRY.register()
def backbones_build_resnet_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> ResNet:
    """ResNet from ``MODEL.RESNETS.*`` (Detectron2's meaning) and ``BACKBONES.*``."""
    return _with_cfg_keys(make_resnet, **resnet_options(cfg, input_shape))


@BACKBONE_REGISTRY.register()
def backbones_build_resnet_fpn_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> FPN:
    """ResNet + FPN (P2-P6, P6 by max-pool) from ``MODEL.RESNETS.*`` and ``MODEL.FPN.*``."""
    return _fpn_backbone(cfg, input_shape, top_block="maxpool")


@BACKBONE_REGISTRY.register()
def backbones_build_retinanet_resnet_fpn_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> FPN:
    """ResNet + FPN for RetinaNet (P3-P7 with the zoo's ``MODEL.FPN.IN_FEATURES``: P6 and P7 by
    strided 3x3 convs, P6 from res5): Detectron2's ``build_retinanet_resnet_fpn_backbone``, from
    ``MODEL.RESNETS.*`` and ``MODEL.FPN.*``."""
    return _fpn_backbone(cfg, input_shape, top_block="p6p7")


def _fpn_backbone(cfg: CfgNode, input_shape: ShapeSpec, *, top_block: str) -> FPN:
    """:func:`make_resnet_fpn` from ``MODEL.RESNETS.*`` and ``MODEL.FPN.*`` with ``top_block``."""
    options = resnet_options(cfg, input_shape)
    options.pop("out_features")  # the FPN's inputs decide what the ResNet returns
    return _with_cfg_keys(
        make_resnet_fpn,
        in_features=tuple(cfg.MODEL.FPN.IN_FEATURES),
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        fpn_norm=cfg.MODEL.FPN.NORM,
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
        top_block=top_block,
        **options,
    )
